// A whole Infinity pipeline from random weights for the Engine: the transformer at any size (the real names
// and shapes of 2B or 8B, through the model's normal loader), the BSQ-VAE decoder of the real recipe, and
// random text features of a realistic length (T5-XL rows). The policies bench hands these parts to
// `Engine.loadParts`, so what it times is the product's generate(), not a bench-only loop.

import type { Gpu } from '../engine/device.js';
import { InfinityModel } from '../model/infinity/model.js';
import type { GpuFloat } from '../model/weights/gpu_load.js';
import type { InfinityParts } from '../sampler/engine.js';
import type { TextFeatures } from '../sampler/text.js';
import { SyntheticTensors, syntheticConfig, type SyntheticShape } from './synthetic_infinity.js';
import { randomF32 } from './types.js';
import { randomDecoder } from './vae_decoder.js';

export interface SyntheticPipelineOptions extends SyntheticShape {
  /** GPU dtype of the transformer's linear weights (f16: what a real run would use). */
  linearDtype: GpuFloat;
  /** Text tokens of the one prompt (T5 rows incl. EOS; a typical short prompt is ~30). */
  textTokens: number;
  /** Decoder base channels (128 upstream) and ResBlocks per up level (3 upstream). */
  vaeCh: number;
  vaeBlocks: number;
  /** The model's generation precision (InfinityModel's load options; default f32 and f32, the reference path). */
  activations?: 'f32' | 'f16';
  cacheDtype?: 'f32' | 'f16';
}

export interface SyntheticPipeline {
  parts: InfinityParts;
  /** The prompt's features: [textTokens, textWidth], values of the scale of T5's outputs. */
  text: TextFeatures;
  /** e.g. "synthetic 2b C2048 L32 H16, f16 linears, f32 activations, f32 KV, VAE ch128×3". */
  label: string;
  /** Transformer parameters, and the wall time of loading everything (host generation + upload). */
  parameters: number;
  loadMs: number;
}

export async function loadSyntheticPipeline(gpu: Gpu, o: SyntheticPipelineOptions): Promise<SyntheticPipeline> {
  const config = syntheticConfig(o);
  const source = SyntheticTensors.infinity(o);
  const t0 = performance.now();
  const model = await InfinityModel.load(gpu, source, {
    linearDtype: o.linearDtype,
    vaeChannels: config.vaeChannels,
    ...(o.activations ? { activations: o.activations } : {}),
    ...(o.cacheDtype ? { cacheDtype: o.cacheDtype } : {}),
  });
  try {
    const decoder = await randomDecoder(gpu, o.family, o.vaeCh, o.vaeBlocks);
    await gpu.sync();
    const precision = `${o.linearDtype} linears, ${o.activations ?? 'f32'} activations, ${o.cacheDtype ?? 'f32'} KV`;
    const label = `synthetic ${o.family} C${o.width} L${o.depth} H${o.heads}, ${precision}, VAE ch${o.vaeCh}×${o.vaeBlocks}`;
    return {
      parts: { model, decoder, name: label },
      text: { features: randomF32(o.textTokens * config.textWidth, 3), lens: [o.textTokens], width: config.textWidth },
      label,
      parameters: source.parameters(),
      loadMs: performance.now() - t0,
    };
  } catch (err) {
    model.dispose();
    throw err;
  }
}
