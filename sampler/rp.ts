// StageVAR's random projection (RP) and representative-token restoration (RTR) for one block chunk
// (spec stagevar.md §2.3–2.7), as GPU steps:
//   draw      I ~ length-squared sampling without replacement (rp_kernels.ts), Q ~ N(0, 1/r) [M, r]
//   project   X̂ = QᵀX                                 [n, r, C]   (kernels/matmul `matmul` with transA)
//   (the chunk's layers run on the r rows; the caller does that)
//   restore   Y = area_resize(Y_prev, h×w) in NHWC;  Y[I[k]] = out[k]   (kernels/resize, kernels/layout)
// Unlike the official code (unseeded global RNG, §2.9), the draws are Philox streams under each image's
// seed: image b's I and Q at (scale, chunk) depend only on its seed, so a seed gives one image whatever the
// batch. Both CFG rows of an image (when RP runs with guidance) share Q and the uniforms; their I still
// differ because their X differ.

import type { Gpu } from '../engine/device.js';
import type { Tensor } from '../engine/tensor.js';
import { gatherRows, scatterRows } from '../kernels/layout.js';
import { matmul } from '../kernels/matmul.js';
import { rowReduce } from '../kernels/norms.js';
import { resize } from '../kernels/resize.js';
import { randomNormal, randomUniform } from '../kernels/rng.js';
import type { Grid } from './schedule.js';
import { arrivalTimes, rankSelect } from './rp_kernels.js';

/** First Philox stream word of StageVAR's draws (the bit sampler uses streams 0…scales − 1, loop.ts). */
export const RP_STREAM_BASE = 0x10000;

/** The stream of one draw: I's uniforms or Q's normals of (scale, chunk). */
export function rpStream(scale: number, chunk: number, draw: 'index' | 'q'): number {
  if (!Number.isInteger(scale) || scale < 0 || scale > 0xff || !Number.isInteger(chunk) || chunk < 0 || chunk > 0xff) {
    throw new RangeError(`RP stream: scale ${scale} and chunk ${chunk} must be integers in 0…255`);
  }
  return RP_STREAM_BASE + ((scale << 8) | chunk) * 2 + (draw === 'q' ? 1 : 0);
}

/** I and Q of one chunk for n sequence rows. */
export interface RpDraw {
  /** I: i32 [n, r], token slots within each row's M tokens, in draw order. */
  index: Tensor;
  /** i32 [n·r]: row b's slot I[k] as a row of the flattened [n·M, C] map (b·M + I[k]), for the scatter. */
  slots: Tensor;
  /** Q: f32 [n, M, r], entries N(0, 1/r). */
  q: Tensor;
}

export function disposeDraw(d: RpDraw): void {
  d.index.dispose();
  d.slots.dispose();
  d.q.dispose();
}

export interface DrawOptions {
  /** Tokens per row M and rank r. */
  tokens: number;
  rank: number;
  /** Philox key of each of the n rows (the row's image seed). */
  keys: readonly number[];
  scale: number;
  chunk: number;
}

/** Draws I (from x's squared row norms) and Q for the n rows of x [n·M, C]. Recorded, not awaited. */
export function drawRp(gpu: Gpu, x: Tensor, o: DrawOptions): RpDraw {
  const { tokens: M, rank: r } = o;
  const n = o.keys.length;
  const C = x.shape[x.rank - 1];
  if (x.numel !== n * M * C) throw new Error(`RP draw: x ${x} does not hold ${n} rows × ${M} tokens`);
  if (!Number.isInteger(r) || r < 1 || r > M) throw new RangeError(`RP draw: rank ${r} must be in 1…${M} (the scale's tokens)`);
  const w = rowReduce(gpu, x.reshape([n * M, C]), 'sumsq');
  const u = gpu.empty([n * M], 'f32', 'rp-uniforms');
  const q = gpu.empty([n, M, r], 'f32', 'rp-q');
  o.keys.forEach((key, b) => {
    randomUniform(gpu, M, { key, stream: rpStream(o.scale, o.chunk, 'index'), out: u.rows(b * M, M) });
    randomNormal(gpu, M * r, { key, stream: rpStream(o.scale, o.chunk, 'q'), std: 1 / Math.sqrt(r), out: q.rows(b, 1).reshape([M * r]) });
  });
  const t = arrivalTimes(gpu, w, u);
  w.dispose();
  u.dispose();
  const { index, slots } = rankSelect(gpu, t.reshape([n, M]), r);
  t.dispose();
  return { index, slots, q };
}

/** A draw from given I [n, r] and Q [n, M, r] (the recorded draws of a fixture). */
export function uploadDraw(gpu: Gpu, index: Int32Array, q: Float32Array, n: number, M: number, r: number): RpDraw {
  if (index.length !== n * r || q.length !== n * M * r) throw new Error(`RP draw: I has ${index.length} values and Q ${q.length}, expected ${n}×${r} and ${n}×${M}×${r}`);
  const slots = Int32Array.from(index, (i, k) => Math.floor(k / r) * M + i);
  for (const i of index) if (i < 0 || i >= M) throw new RangeError(`RP draw: slot ${i} outside the scale's ${M} tokens`);
  return {
    index: gpu.upload(index, [n, r], 'i32', 'rp-index'),
    slots: gpu.upload(slots, [n * r], 'i32', 'rp-slots'),
    q: gpu.upload(q, [n, M, r], 'f32', 'rp-q'),
  };
}

/** X̂ = QᵀX per row: q [n, M, r], x [n·M, C] → [n, r, C]. */
export function project(gpu: Gpu, q: Tensor, x: Tensor): Tensor {
  const [n, M] = q.shape;
  return matmul(gpu, q, x.reshape([n, M, -1]), { transA: true });
}

/**
 * RTR: prev [n·h'·w', C] (the chunk's output at the previous scale that ran, raster order) area-resized to
 * `grid`, then row k of out [n·r, C] written to slot I[k] of its row. → [n·h·w, C].
 */
export function restore(gpu: Gpu, prev: Tensor, prevGrid: Grid, grid: Grid, out: Tensor, slots: Tensor): Tensor {
  const C = out.shape[out.rank - 1];
  const n = prev.numel / (prevGrid[0] * prevGrid[1] * C);
  if (!Number.isInteger(n) || prev.shape[prev.rank - 1] !== C) throw new Error(`RTR: previous map ${prev} is not [n·${prevGrid[0]}·${prevGrid[1]}, ${C}]`);
  const y = resize(gpu, prev.reshape([n, prevGrid[0], prevGrid[1], C]), grid[0], grid[1], 'area', { layout: 'nhwc' });
  const flat = y.as([n * grid[0] * grid[1], C]);
  try {
    scatterRows(gpu, out.reshape([-1, C]), slots, flat);
  } catch (err) {
    flat.dispose();
    throw err;
  }
  return flat;
}

/**
 * The RoPE table of the sampled slots of one row: rows `start + I[k]` of the schedule's table
 * rope [T, D/2, 2] → [r, D/2, 2] (the "sampled positions" variant of §2.6).
 */
export function slotRopeTable(gpu: Gpu, rope: Tensor, start: number, tokens: number, index: Tensor): Tensor {
  const half = rope.shape[1];
  const table = rope.reshape([rope.shape[0], half * 2]).rows(start, tokens); // gatherRows binds windows: any offset
  return gatherRows(gpu, table, index.reshape([index.numel])).as([index.numel, half, 2]);
}
