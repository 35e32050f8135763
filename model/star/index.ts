// STAR (Scale-wise Text-conditioned AutoRegressive generation): the transformer as per-scale building
// blocks, VAR's multi-scale VQ-VAE, and teacher-forced parity against fixtures of the official code.

export { StarModel, type StarBeginOptions, type ForwardHooks, type StarLoadFrom, type StarModelOptions } from './model.js';
export { StarGeneration, type StarStep, type StarTextInput, type RowRange, type CrossText } from './generation.js';
export { KvCache, type KvDType } from '../kv_cache.js';
export { VarVqvae, phiIndex, type VarVqvaeConfig, type VarVqvaeLoadOptions } from './vqvae.js';
export { VarDecoder, type VarDecoderConfig } from './var_decoder.js';
export { STAR_PATCH_NUMS, cfgRamp, checkPatchNums, defaultPatchNums, scaleStarts, starConfig, type StarConfig } from './config.js';
export { ropeTable, scalePositions, scaleRopeTable } from './rope.js';
export { runStarParity, type ParityEntry, type StarParityOptions } from './parity.js';
export type { StarLoadOptions, StarWeightSource } from './weights.js';
