// Storage dtypes of a generation, shared by Infinity and STAR: the activations that feed and leave the
// layers' linears ('f16' needs the shader-f16 feature; the residual stream, statistics, RoPE and the head stay
// f32 either way) and the KV cache (model/kv_cache.ts; f16 needs no feature).

import type { Gpu } from '../engine/device.js';
import type { KvDType } from './kv_cache.js';

export type ActivationDType = 'f32' | 'f16';

export interface Precision {
  activations: ActivationDType;
  cacheDtype: KvDType;
}

export const F32_PRECISION: Precision = { activations: 'f32', cacheDtype: 'f32' };

/** `over` on top of `base`, validated against the device; errors start with the model's name. */
export function resolvePrecision(gpu: Gpu, model: string, over: Partial<Precision>, base: Precision = F32_PRECISION): Precision {
  const activations = over.activations ?? base.activations;
  const cacheDtype = over.cacheDtype ?? base.cacheDtype;
  if (activations !== 'f32' && activations !== 'f16') throw new Error(`${model}: activations must be 'f32' or 'f16', got ${String(activations)}`);
  if (cacheDtype !== 'f32' && cacheDtype !== 'f16') throw new Error(`${model}: cacheDtype must be 'f32' or 'f16', got ${String(cacheDtype)}`);
  if (activations === 'f16' && !gpu.hasF16) {
    throw new Error(
      `${model}: activations 'f16' need the WebGPU feature shader-f16, which this device (${gpu.adapter.description || gpu.adapter.device || 'adapter'}) lacks; ` +
        `use activations 'f32' (cacheDtype 'f16' works without the feature)`,
    );
  }
  return { activations, cacheDtype };
}
