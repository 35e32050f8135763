// Infinity (2B / 8B) transformer: architecture from weights, per-generation conditioning, building
// blocks for a scale-by-scale sampler, and the teacher-forced parity runner.

export { inferInfinityConfig, expectedShapes, type InfinityConfig, type ConfigOptions } from './config.js';
export { loadInfinityWeights, type InfinityWeights, type LayerWeights, type LoadOptions } from './weights.js';
export { InfinityModel, type BeginOptions, type InfinityModelOptions, type Precision } from './model.js';
export { Generation, ropeTensor, type ActivationDType, type ScaleStep, type RowRange } from './generation.js';
export { KvCache, type KvDType } from '../kv_cache.js';
export { encodeText, type Conditioning, type LayerModulation, type TextInput } from './text.js';
export { BitLatent, type LatentGeometry } from './latent.js';
export { bitsToCodes, gridToTokens, codeMagnitude, type PatchGeometry } from './patchify.js';
export { axisPositions, ropePositions, ropeTable, roundHalfEven } from './rope.js';
export { runTeacherForced, type TeacherForcedOptions, type TeacherForcedResult } from './teacher_forced.js';
