// stagevar as a library: the WebGPU engine (Gpu, Tensor), the kernel launchers the sampler uses, the
// model loaders, and the Engine API that turns prompts into images.
//
//   import { Engine } from 'stagevar';
//   const engine = await Engine.create();
//   await engine.load({ model: 'infinity_2b.safetensors', vae: 'vae_d32.safetensors', textEncoder: 'flan-t5-xl/' });  // or STAR + CLIP
//   const { images } = await engine.generate({ prompt: 'a cat', seed: 1, size: 1024 });

export * from './engine/index.js';

// Kernels used by the sampler: CFG + top-k/top-p sampling, and the Philox streams behind it.
export {
  sampleBits,
  sampleTokens,
  cfgWeights,
  sampleBitRef,
  sampleBitsRef,
  sampleTokenRef,
  bitProbabilityRef,
  tokenDistributionRef,
  type LogitMix,
  type DrawOptions,
  type SampleBitsOptions,
  type SampleTokensOptions,
} from './kernels/sample.js';
export { philox4x32, randomU32, randomUniform, randomNormal, randomU32Cpu, randomUniformCpu, randomNormalCpu, type RngKey, type RandomOptions } from './kernels/rng.js';

// Model loaders and recognition of weight files.
export { InfinityModel, BitLatent, runTeacherForced, inferInfinityConfig, type InfinityConfig, type Generation, type ScaleStep, type TextInput } from './model/infinity/index.js';
export { StarModel, VarVqvae, type StarConfig } from './model/star/index.js';
export { ClipTextEncoder, type ClipConfig } from './model/text/clip_encoder.js';
export { loadBsqDecoder } from './model/vae/load.js';
export { BsqDecoder, type BsqDecoderConfig } from './model/vae/bsq_decoder.js';
export { T5Encoder, type T5Config } from './model/text/t5_encoder.js';
export { loadTokenizer, T5Tokenizer, ClipTokenizer, type TextTokenizer, type Encoded } from './model/text/tokenizer.js';
export { Checkpoint } from './model/weights/checkpoint.js';
export { WeightsError } from './model/weights/errors.js';
export { detectArchitecture, expectArchitecture, inspectWeights, type Architecture, type ArchKind } from './model/arch.js';

// The sampler and the Engine API.
export * from './sampler/index.js';
