// Two small kernels for StageVAR's representative-token draw (spec stagevar.md §2.5):
//   I = r draws without replacement with p_i ∝ ‖x_i‖²   (torch.multinomial(p, r, replacement=False)).
// On the GPU as an exponential race (the Gumbel-top-k trick in another coordinate): token i "arrives" at
// t_i = E_i / w_i with E_i = −ln(1 − u_i) ~ Exp(1) and w_i = ‖x_i‖²; the first arrival is i with probability
// w_i / Σw, and by memorylessness the later arrivals are successive draws from the rest. So the r earliest
// arrivals, in arrival order, have exactly the distribution of sequential sampling without replacement.
//   arrivalTimes: t_i per token (w ≤ 0 or NaN → a sentinel later than any real arrival: never drawn while
//                 others remain, like a zero probability).
//   rankSelect:   per batch row, the r smallest t in ascending order, ties by index, by counting each
//                 element's rank (O(M²) comparisons through workgroup tiles: 2.6 M at M = 1600, no sort, no
//                 atomics, deterministic). Writes the local slot I and the global row b·M + I (for scatters).
// Float64 references at the bottom.

import type { Gpu } from '../engine/device.js';
import { ShapeError, shapeStr } from '../engine/errors.js';
import { Params } from '../engine/params.js';
import type { KernelSpec } from '../engine/pipelines.js';
import type { Tensor } from '../engine/tensor.js';
import { elementWindow } from '../kernels/layout.js';
import { LINEAR_WORKGROUP, ceilDiv } from '../kernels/wgsl.js';

const WG = 256;
/** Arrival time of a token with no weight (finite: WGSL may not honour infinities). */
export const NEVER = 3.0e38;
/** Weights below this are raised to it, so E / w stays finite (≤ 17 / 1e-30). */
const MIN_WEIGHT = 1e-30;

const ARRIVAL: KernelSpec = {
  name: 'rp_arrival_times',
  bindings: ['read', 'read', 'write'],
  code: /* wgsl */ `
struct P { n: u32, wFirst: u32, uFirst: u32, tFirst: u32 }
@group(0) @binding(0) var<storage, read> w: array<f32>;
@group(0) @binding(1) var<storage, read> u: array<f32>;
@group(0) @binding(2) var<storage, read_write> t: array<f32>;
@group(0) @binding(3) var<uniform> p: P;
${LINEAR_WORKGROUP}
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let i = linear_workgroup(wid, nwg) * ${WG}u + li;
  if (i >= p.n) { return; }
  let wi = w[p.wFirst + i];
  // u ∈ [0, 1) in steps of 2⁻²⁴, so 1 − u ∈ (0, 1] exactly and E = −ln(1 − u) ≥ 0 is finite.
  let e = -log(1.0 - u[p.uFirst + i]);
  t[p.tFirst + i] = select(${NEVER}, e / max(wi, ${MIN_WEIGHT}), wi > 0.0);
}`,
};

/** t_i = −ln(1 − u_i) / w_i (w_i > 0), else NEVER. w, u f32 [n] → f32 [n]. */
export function arrivalTimes(gpu: Gpu, w: Tensor, u: Tensor): Tensor {
  const name = ARRIVAL.name;
  if (w.dtype !== 'f32' || u.dtype !== 'f32' || w.numel !== u.numel) throw new ShapeError(name, `w ${w} and u ${u} must be f32 with equal element counts`);
  const n = w.numel;
  const t = gpu.empty([n], 'f32', name);
  if (n === 0) return t;
  const ww = elementWindow(gpu, w, 0, n);
  const uw = elementWindow(gpu, u, 0, n);
  const tw = elementWindow(gpu, t, 0, n);
  gpu.run(ARRIVAL, [ww.range, uw.range, tw.range], new Params().u32(n, ww.first, uw.first, tw.first), ceilDiv(n, WG));
  return t;
}

const RANK_SELECT: KernelSpec = {
  name: 'rp_rank_select',
  bindings: ['read', 'write', 'write'],
  code: /* wgsl */ `
struct P { M: u32, r: u32, tilesPerRow: u32, rows: u32, tFirst: u32 }
@group(0) @binding(0) var<storage, read> t: array<f32>;
@group(0) @binding(1) var<storage, read_write> index: array<i32>;
@group(0) @binding(2) var<storage, read_write> slots: array<i32>;
@group(0) @binding(3) var<uniform> p: P;
var<workgroup> tile: array<f32, ${WG}>;
${LINEAR_WORKGROUP}
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let g = linear_workgroup(wid, nwg);
  let b = g / p.tilesPerRow;            // uniform per workgroup: barriers below stay in uniform control flow
  if (b >= p.rows) { return; }
  let i = (g % p.tilesPerRow) * ${WG}u + li;
  let base = p.tFirst + b * p.M;
  let mine = i < p.M;
  var ti = 0.0;
  if (mine) { ti = t[base + i]; }
  var rank = 0u;
  for (var j0 = 0u; j0 < p.M; j0 += ${WG}u) {
    let j = j0 + li;
    if (j < p.M) { tile[li] = t[base + j]; }
    workgroupBarrier();
    let n = min(${WG}u, p.M - j0);
    for (var k = 0u; k < n; k++) {
      let tj = tile[k];
      // Strict total order: earlier arrival first, equal times by index.
      rank += select(0u, 1u, tj < ti || (tj == ti && j0 + k < i));
    }
    workgroupBarrier();
  }
  if (mine && rank < p.r) {
    index[b * p.r + rank] = i32(i);
    slots[b * p.r + rank] = i32(b * p.M + i);
  }
}`,
};

/**
 * Per batch row of t [rows, M]: the r smallest values in ascending order (ties by index).
 * → index i32 [rows, r] (slot within the row) and slots i32 [rows·r] (global row b·M + slot).
 */
export function rankSelect(gpu: Gpu, t: Tensor, r: number): { index: Tensor; slots: Tensor } {
  const name = RANK_SELECT.name;
  if (t.dtype !== 'f32' || t.rank !== 2) throw new ShapeError(name, `t ${t} must be f32 [rows, M]`);
  const [rows, M] = t.shape;
  if (!Number.isInteger(r) || r < 1 || r > M) throw new ShapeError(name, `r ${r} must be in 1…${M} (t ${shapeStr(t.shape)})`);
  const index = gpu.empty([rows, r], 'i32', 'rp-index');
  const slots = gpu.empty([rows * r], 'i32', 'rp-slots');
  if (rows === 0) return { index, slots };
  const tw = elementWindow(gpu, t, 0, rows * M);
  const tilesPerRow = ceilDiv(M, WG);
  gpu.run(RANK_SELECT, [tw.range, index, slots], new Params().u32(M, r, tilesPerRow, rows, tw.first), rows * tilesPerRow);
  return { index, slots };
}

// ---- float64 references --------------------------------------------------------------------------

export function arrivalTimesRef(w: ArrayLike<number>, u: ArrayLike<number>): Float64Array {
  return Float64Array.from(w, (wi, i) => (wi > 0 ? -Math.log(1 - u[i]) / Math.max(wi, MIN_WEIGHT) : NEVER));
}

/** The r smallest of each row of t [rows, M] in ascending order, ties by index: local slots [rows·r]. */
export function rankSelectRef(t: ArrayLike<number>, rows: number, M: number, r: number): Int32Array {
  const out = new Int32Array(rows * r);
  for (let b = 0; b < rows; b++) {
    const order = Array.from({ length: M }, (_, i) => i).sort((i, j) => t[b * M + i] - t[b * M + j] || i - j);
    out.set(order.slice(0, r), b * r);
  }
  return out;
}

/** Probability of drawing the ordered sequence `seq` without replacement with p ∝ w. */
export function sequenceProbabilityRef(w: ArrayLike<number>, seq: readonly number[]): number {
  let left = 0;
  for (let i = 0; i < w.length; i++) left += w[i];
  let p = 1;
  for (const i of seq) {
    p *= w[i] / left;
    left -= w[i];
  }
  return p;
}
