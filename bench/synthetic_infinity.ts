// Infinity weights with random values at any size, served by name like a checkpoint: the architecture's
// real tensor names and shapes (2B: 32 bits per token; 8B: 14-bit VAE × 2×2 patchify = 56 bits), values
// made chunk by chunk on request, so that even the full 8B (8.4 G parameters) never exists whole on the
// host. The model loader (InfinityModel.load) takes this source as it takes a Checkpoint; load8b writes
// it to safetensors shards.

import { expectedShapes, type InfinityConfig } from '../model/infinity/config.js';
import { convertFloatBytes, dtypeItemSize, type FloatDtype } from '../model/weights/dtype_convert.js';
import type { TensorSource } from '../model/weights/gpu_load.js';
import type { ChunkOptions, TensorChunk, TensorInfo } from '../model/weights/safetensors.js';

export type Family = '2b' | '8b';

/** The released models (spec §2.1, §3.2): width, depth, heads, layers per block chunk, bits per token. */
export const FULL_SIZE: Readonly<Record<Family, { width: number; depth: number; heads: number; layersPerChunk: number; bits: number; vaeChannels: number; patch: number }>> = {
  '2b': { width: 2048, depth: 32, heads: 16, layersPerChunk: 4, bits: 32, vaeChannels: 32, patch: 1 },
  '8b': { width: 3584, depth: 40, heads: 28, layersPerChunk: 5, bits: 56, vaeChannels: 14, patch: 2 },
};

export interface SyntheticShape {
  family: Family;
  width: number;
  depth: number;
  heads: number;
  /** Default: the family's (4 for 2B, 5 for 8B); must divide depth. */
  layersPerChunk?: number;
  /** T5-XL width (2048) unless told. */
  textWidth?: number;
}

/** Python's round() (half to even), as upstream's FFN width round(4C/256)·256 uses. */
function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

export function syntheticConfig(s: SyntheticShape): InfinityConfig {
  const full = FULL_SIZE[s.family];
  const perChunk = s.layersPerChunk ?? full.layersPerChunk;
  if (s.width % s.heads !== 0) throw new Error(`--width ${s.width} is not divisible by --heads ${s.heads}`);
  // The text pooling has 16 heads in both released models (mat_q (1, 16, C/16)).
  if (s.width % 16 !== 0) throw new Error(`--width ${s.width} must be a multiple of 16 (the 16 text-pooling heads)`);
  if (s.depth % perChunk !== 0) throw new Error(`--depth ${s.depth} must be a multiple of the ${perChunk} layers per block chunk of ${s.family}`);
  return {
    width: s.width,
    depth: s.depth,
    heads: s.heads,
    headDim: s.width / s.heads,
    ffnHidden: roundHalfEven((4 * s.width) / 256) * 256,
    chunks: s.depth / perChunk,
    layersPerChunk: perChunk,
    textWidth: s.textWidth ?? 2048,
    textMaxLen: 512,
    poolHeads: 16,
    poolHeadDim: s.width / 16,
    bitsPerToken: full.bits,
    vaeChannels: full.vaeChannels,
    patch: full.patch,
    levels: 15,
    eps: 1e-6,
    layerPrefix: (l) => `block_chunks.${Math.floor(l / perChunk)}.module.${l % perChunk}.`,
  };
}

/** Mean and std of a tensor's values by the role its name says: keeps activations in a sane range. */
function initOf(name: string, shape: readonly number[]): { mean: number; std: number } {
  if (shape.length === 2 && !name.startsWith('cfg_uncond') && !name.startsWith('lvl_embed')) return { mean: 0, std: 1 / Math.sqrt(shape[1]) };
  if (name.endsWith('scale_mul_1H11')) return { mean: Math.log(8), std: 0.1 };
  if (name.endsWith('ada_gss')) return { mean: 0, std: 0.1 };
  if (name.endsWith('norm.weight')) return { mean: 1, std: 0.05 };
  if (name === 'cfg_uncond' || name === 'pos_start' || name === 'lvl_embed.weight' || name.endsWith('mat_q')) return { mean: 0, std: 0.5 };
  return { mean: 0, std: 0.02 };
}

/** Unit-variance uniform values, shared by every tensor at a per-tensor offset (benchmarks need data, not statistics). */
const POOL = 1 << 20;
let pool: Float32Array | null = null;
function unitPool(): Float32Array {
  if (pool) return pool;
  pool = new Float32Array(POOL);
  let s = 0x9e3779b9;
  for (let i = 0; i < POOL; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    pool[i] = (s / 2 ** 32 - 0.5) * 2 * Math.sqrt(3);
  }
  return pool;
}

function hashName(name: string): number {
  let h = 2166136261;
  for (let i = 0; i < name.length; i++) h = Math.imul(h ^ name.charCodeAt(i), 16777619);
  return (h >>> 0) % POOL;
}

/** Random tensors by name and shape, stored as `dtype`, produced in bounded chunks. */
export class SyntheticTensors implements TensorSource {
  private readonly shapes: Map<string, number[]>;

  constructor(
    shapes: ReadonlyMap<string, readonly number[]>,
    readonly dtype: FloatDtype = 'F32',
  ) {
    this.shapes = new Map([...shapes].map(([n, s]) => [n, [...s]]));
  }

  /** Every tensor of an Infinity of this shape (no zero_k_bias buffers: the 8B index has none, spec §3.2). */
  static infinity(s: SyntheticShape, dtype: FloatDtype = 'F32'): SyntheticTensors {
    return new SyntheticTensors(expectedShapes(syntheticConfig(s)), dtype);
  }

  names(): string[] {
    return [...this.shapes.keys()];
  }

  has(name: string): boolean {
    return this.shapes.has(name);
  }

  info(name: string): TensorInfo {
    const shape = this.shapes.get(name);
    if (!shape) throw new Error(`synthetic weights: no tensor "${name}"`);
    return { name, dtype: this.dtype, shape, byteLength: shape.reduce((a, b) => a * b, 1) * dtypeItemSize(this.dtype) };
  }

  /** Total bytes of every tensor as stored. */
  totalBytes(): number {
    return this.names().reduce((sum, n) => sum + this.info(n).byteLength, 0);
  }

  /** Parameters (elements) of every tensor. */
  parameters(): number {
    return [...this.shapes.values()].reduce((sum, s) => sum + s.reduce((a, b) => a * b, 1), 0);
  }

  /** Chunks of at most `chunkBytes` (default 16 MiB); one reused buffer, valid until the next chunk is asked for. */
  async *tensorChunks(name: string, options: ChunkOptions = {}): AsyncGenerator<TensorChunk> {
    const info = this.info(name);
    const item = dtypeItemSize(this.dtype);
    const total = info.byteLength / item;
    const per = Math.max(1, Math.floor((options.chunkBytes ?? 16 * 2 ** 20) / item));
    const { mean, std } = initOf(name, info.shape);
    const unit = unitPool();
    const start = hashName(name);
    const values = new Float32Array(Math.min(per, total));
    for (let e = 0; e < total; e += per) {
      const n = Math.min(per, total - e);
      const out = values.subarray(0, n);
      for (let i = 0, p = (start + e) % POOL; i < n; ) {
        const run = Math.min(n - i, POOL - p);
        for (let j = 0; j < run; j++) out[i + j] = mean + std * unit[p + j];
        i += run;
        p = 0;
      }
      const f32 = new Uint8Array(out.buffer, 0, n * 4);
      yield { bytes: this.dtype === 'F32' ? f32 : convertFloatBytes('F32', this.dtype, f32), offset: e * item };
    }
  }
}
