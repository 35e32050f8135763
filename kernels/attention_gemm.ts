// Attention through two GEMMs, for CPU adapters (`gpu.tuning === 'cpu'`: lavapipe) and long query runs:
// S = q·kᵀ per head, S ← softmax(scale·S) row by row (`softmaxRows`, this file's kernel), o = S·v. On lavapipe
// the register-blocked GEMM (matmul.ts) runs at ≈ 18–20 GFLOP/s on these shapes, while the flash kernel
// (attention.ts: one invocation per query, scalar work per key) runs at ≈ 4–5: bench/attention.ts measures
// both. Materialising S costs memory, so queries go in chunks that keep H × chunk × kvLen f32 scores within
// 32 MiB (and the binding limit); the cost of each chunk's transposes is O((chunk + kvLen)·C), small against
// the O(chunk·kvLen·C) of the products.
//
// Layouts: the GEMM takes whole matrices, but a head of q [L, H·D] is a strided slice. One transpose of the
// rows turns [L, H·D] into [H·D, L] = [H, D, L]: every head's qᵀ, kᵀ and vᵀ as a contiguous [D, L] block. Then
//   S[h]  = (qᵀ[h])ᵀ · kᵀ[h]        matmul(qᵀ, kᵀ, transA)  → [H, Lq, Lk]
//   oᵀ[h] = vᵀ[h] · S[h]ᵀ           matmul(vᵀ, S, transB)   → [H, D, Lq] = [H·D, Lq]
// and one transpose writes oᵀ back as rows of the output. q is f32 (f16 q, the f16 activation path, takes the
// flash kernel); an f16/bf16 cache is widened to f32 before its transpose (transpose2d moves 32-bit elements).

import type { Gpu } from '../engine/device.js';
import { ShapeError, shapeStr } from '../engine/errors.js';
import { Params } from '../engine/params.js';
import type { KernelSpec } from '../engine/pipelines.js';
import type { Tensor } from '../engine/tensor.js';
import { cast } from './elementwise.js';
import { transpose2d } from './layout.js';
import { matmul } from './matmul.js';
import { LINEAR_MAIN_ARGS, LINEAR_WORKGROUP, treeReduce } from './wgsl.js';

/** Scores materialised at once, at most (bytes). */
const SCORE_BYTES = 32 * 2 ** 20;
const WG = 64;

const SOFTMAX: KernelSpec = {
  name: 'softmax_rows',
  bindings: ['write'],
  code: /* wgsl */ `
struct P { rows: u32, n: u32, scale: f32 }
@group(0) @binding(0) var<storage, read_write> x: array<f32>;
@group(0) @binding(1) var<uniform> p: P;
${treeReduce(WG, 'f32', (a, b) => `max(${a}, ${b})`, { name: 'max_wg' })}
${treeReduce(WG, 'f32', (a, b) => `${a} + ${b}`, { name: 'sum_wg', declared: true })}
${LINEAR_WORKGROUP}
@compute @workgroup_size(${WG})
fn main(${LINEAR_MAIN_ARGS}) {
  let r = linear_workgroup(wid, nwg);
  if (r >= p.rows) { return; } // uniform per workgroup: the barriers below stay uniform
  let b = r * p.n;
  // Row max of scale·x, starting from an element every lane may read (WGSL has no -inf literal).
  var m = p.scale * x[b + min(li, p.n - 1u)];
  for (var c = li; c < p.n; c += ${WG}u) { m = max(m, p.scale * x[b + c]); }
  m = max_wg(li, m);
  var s = 0.0;
  for (var c = li; c < p.n; c += ${WG}u) { s += exp(p.scale * x[b + c] - m); }
  let inv = 1.0 / sum_wg(li, s); // ≥ 1/n: the max element contributes exp(0)
  for (var c = li; c < p.n; c += ${WG}u) { x[b + c] = exp(p.scale * x[b + c] - m) * inv; }
}`,
};

/** In place: each row of x [..., n] (f32) becomes softmax(scale · row). One workgroup per row. */
export function softmaxRows(gpu: Gpu, x: Tensor, opts: { scale?: number } = {}): Tensor {
  const name = 'softmaxRows';
  if (x.dtype !== 'f32' || x.rank < 1) throw new ShapeError(name, `x ${shapeStr(x.shape)} ${x.dtype} must be f32 [..., n]`);
  const scale = opts.scale ?? 1;
  if (!Number.isFinite(scale)) throw new ShapeError(name, `scale ${scale} is not finite`);
  const n = x.shape[x.rank - 1];
  const rows = n === 0 ? 0 : x.numel / n;
  if (rows === 0) return x;
  gpu.run(SOFTMAX, [x], new Params().u32(rows, n).f32(scale), rows);
  return x;
}

/** Float64 reference of softmaxRows. */
export function softmaxRowsRef(x: ArrayLike<number>, n: number, scale = 1): Float64Array {
  const y = new Float64Array(x.length);
  for (let b = 0; b < x.length; b += n) {
    let m = -Infinity;
    for (let c = 0; c < n; c++) m = Math.max(m, scale * x[b + c]);
    let s = 0;
    for (let c = 0; c < n; c++) s += y[b + c] = Math.exp(scale * x[b + c] - m);
    for (let c = 0; c < n; c++) y[b + c] /= s;
  }
  return y;
}

/** rows [L, C] (f32, or an f16/bf16 cache, widened first) → a new f32 [C, L]. */
function transposedF32(gpu: Gpu, rows: Tensor): Tensor {
  if (rows.dtype === 'f32') return transpose2d(gpu, rows);
  const wide = cast(gpu, rows, 'f32');
  try {
    return transpose2d(gpu, wide);
  } finally {
    wide.dispose();
  }
}

export interface GemmAttentionArgs {
  heads: number;
  scale: number;
  kvLen: number;
  /** The binding limit to respect (the launcher's, lowered in tests). */
  maxBindingBytes: number;
}

/**
 * `attention`'s semantics (q [B, Lq, H·D] f32, k/v caches [B, Lmax, H·D] f32/f16/bf16 with kvLen valid rows) through the
 * two GEMMs, writing into `out` [B, Lq, H·D]. The launcher in attention.ts has checked the shapes.
 */
export function attentionByGemm(gpu: Gpu, q: Tensor, k: Tensor, v: Tensor, out: Tensor, a: GemmAttentionArgs): void {
  const [B, Lq, C] = q.shape;
  const lmax = k.shape[1];
  const H = a.heads;
  const D = C / H;
  const qRows = q.reshape([B * Lq, C]);
  const oRows = out.reshape([B * Lq, C]);
  const kRows = k.reshape([B * lmax, C]);
  const vRows = v.reshape([B * lmax, C]);
  const budget = Math.min(SCORE_BYTES, a.maxBindingBytes - gpu.limits.minStorageBufferOffsetAlignment);
  const chunk = Math.max(1, Math.min(Lq, Math.floor(budget / (H * a.kvLen * 4))));
  for (let b = 0; b < B; b++) {
    const kT = transposedF32(gpu, kRows.rows(b * lmax, a.kvLen)).as([H, D, a.kvLen]);
    let vT: Tensor | null = null;
    try {
      vT = transposedF32(gpu, vRows.rows(b * lmax, a.kvLen)).as([H, D, a.kvLen]);
      for (let q0 = 0; q0 < Lq; q0 += chunk) {
        const n = Math.min(chunk, Lq - q0);
        const qT = transpose2d(gpu, qRows.rows(b * Lq + q0, n)).as([H, D, n]);
        let s: Tensor;
        try {
          s = matmul(gpu, qT, kT, { transA: true, maxBindingBytes: a.maxBindingBytes });
        } finally {
          qT.dispose();
        }
        let oT: Tensor;
        try {
          softmaxRows(gpu, s, { scale: a.scale });
          oT = matmul(gpu, vT, s, { transB: true, maxBindingBytes: a.maxBindingBytes });
        } finally {
          s.dispose();
        }
        try {
          transpose2d(gpu, oT.reshape([C, n]), { out: oRows.rows(b * Lq + q0, n) });
        } finally {
          oT.dispose();
        }
      }
    } finally {
      kT.dispose();
      vT?.dispose();
    }
  }
}
