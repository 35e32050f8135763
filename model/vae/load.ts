// Loads an Infinity BSQ-VAE decoder from a checkpoint file (safetensors, sharded, or .pth).
// Only `decoder.*` tensors are uploaded (the encoder and quantizer are not needed to decode bit labels),
// all as f32: the decoder is small next to the transformer (65 M parameters for 2B) and its 1×1/3×3
// convolutions then read one weight type.

import type { Gpu } from '../../engine/device.js';
import type { Tensor } from '../../engine/tensor.js';
import { Checkpoint } from '../weights/checkpoint.js';
import { WeightsError } from '../weights/errors.js';
import { loadTensorToGpu } from '../weights/gpu_load.js';
import { BsqDecoder } from './bsq_decoder.js';

export interface LoadDecoderOptions {
  /** Largest feature-map chunk in bytes (default: the device's binding limit). Tests lower it. */
  maxChunkBytes?: number;
}

export async function loadBsqDecoder(gpu: Gpu, path: string, opts: LoadDecoderOptions = {}): Promise<BsqDecoder> {
  const ckpt = await Checkpoint.open(path);
  const weights = new Map<string, Tensor>();
  try {
    const names = ckpt.names().filter((n) => n.startsWith('decoder.'));
    if (names.length === 0) {
      throw new WeightsError('no "decoder.*" tensors: this is not a VAE decoder checkpoint', { code: 'missing-tensor', file: path });
    }
    for (const name of names) weights.set(name, await loadTensorToGpu(gpu, ckpt, name, { dtype: 'f32' }));
    return BsqDecoder.fromWeights(gpu, weights, path, opts);
  } catch (err) {
    for (const t of weights.values()) t.dispose();
    throw err;
  } finally {
    await ckpt.close();
  }
}
