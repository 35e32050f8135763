// The sampler: per-scale plans, the next-scale loop, the bit sampler's random streams, PNG output, text
// sources, the demo model, and the library's Engine. Schedules (schedule.ts) are re-exported from here too.

export {
  Engine,
  GenerationProgressEvent,
  WarningEvent,
  type EngineOptions,
  type LoadInfinityOptions,
  type ModelInfo,
  type GenerateOptions,
  type GenerateResult,
  type GenerationStats,
  type ProgressInfo,
} from './engine.js';
export { runNextScaleLoop, bitStream, type LoopOptions, type LoopResult, type ScaleStats } from './loop.js';
export {
  vanillaPlan,
  validatePlans,
  needsGuidance,
  perScale,
  checkCfg,
  checkTau,
  checkTopP,
  checkTopK,
  LIMITS,
  type ScalePlan,
  type Branches,
  type TokenPolicy,
  type ProjectedTokens,
  type PerScale,
  type VanillaPlanOptions,
} from './plan.js';
export { SIZES, SIZE_HELP, resolutionForSize, resolveShape, templateNote, parseNumberList, resolveBatch, checkFeatures, checkLevels, type ResolvedShape } from './options.js';
export { encodePng, rgbFromPlanar, toByte, indexedPath, writeFilesAtomically, type RgbImage } from './png.js';
export { T5PromptEncoder, readFeaturesFile, selectPrompts, promptOf, type PromptEncoder, type TextFeatures, type FeaturesFile } from './text.js';
export { DEMO, DemoPromptEncoder, MemoryTensors, demoDecoder, demoDecoderTensors, demoInfinityTensors, loadDemoInfinity } from './demo_model.js';
export * from './schedule.js';
