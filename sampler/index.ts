// The sampler: per-scale plans, the next-scale loop, the bit sampler's random streams, PNG output, text
// sources, the demo model, and the library's Engine. Schedules (schedule.ts) are re-exported from here too.

export {
  Engine,
  GenerationProgressEvent,
  WarningEvent,
  detectFamily,
  type EngineOptions,
  type LoadInfinityOptions,
  type InfinityParts,
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

// Acceleration policies as data (StageVAR, FastVAR, files) and the rank tables.
export { PRESETS, PRESET_NAMES, starPresets, presetsFor, loadPolicy, parsePolicy, type Policy, type PolicyFamily, type ScaleRule, type TokenRule, type RpRule, type FastVarRule } from './policy.js';
export { applyPolicy, checkPolicyPlans, policyPlanHook, stageOf, type PolicyContext, type PolicyPlan, type AppliedPolicy } from './policy_plan.js';
export { INFINITY_RANKS, STAR_RANKS, ALPHAS, STAR_ALPHAS, DEFAULT_ALPHA, alphaKey, type RankTable } from './rank_table.js';
export { loadRankFile, parseRankTable } from './rank_file.js';

// STAR: the next-scale loop on the same plans, its text rows (CLIP), and the Engine's STAR pipeline.
export { runStarLoop, starVanillaPlan, starGrids, checkStarPlans, tokenStream, type StarLoopOptions, type StarLoopResult } from './star_loop.js';
export { ClipPromptEncoder, starTextInput, pooledFromFeatures, type StarTextFeatures } from './star_text.js';
export { STAR_DEFAULTS, inspectStarFiles, starPatchNums, type LoadStarOptions } from './star_generate.js';
