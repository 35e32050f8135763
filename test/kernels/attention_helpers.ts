// Inputs and checks shared by the attention kernel tests.

import type { Gpu } from '../../engine/device.js';
import { f32ToBf16Array, f32ToF16Array, roundThrough } from '../../engine/dtype.js';
import { attention, attentionRef, attentionVarlen } from '../../kernels/attention.js';
import { expectClose, poisoned, randn } from '../helpers.js';

/** Rows of [rows, H·D] normalised per head and multiplied by `mul` (cosine attention inputs). */
export function unitHeads(x: Float32Array, c: number, heads: number, mul = 1): Float32Array {
  const d = c / heads;
  const y = new Float32Array(x.length);
  for (let o = 0; o < x.length; o += d) {
    let ss = 0;
    for (let i = 0; i < d; i++) ss += x[o + i] ** 2;
    const inv = mul / Math.sqrt(ss);
    for (let i = 0; i < d; i++) y[o + i] = x[o + i] * inv;
  }
  return y;
}

/** Offsets [0, l0, l0 + l1, …] of packed sequences of the given lengths (attentionVarlen's qStarts/kStarts). */
export function starts(lens: readonly number[]): number[] {
  return lens.reduce((a, n) => [...a, a[a.length - 1] + n], [0]);
}

/**
 * attentionVarlen on random f32 q/k/v packed from the given sequence lengths, against the float64 reference
 * within 1e-5 relative and absolute (the f32 bound of attention.test.ts).
 */
export async function checkVarlen(gpu: Gpu, heads: number, d: number, qLens: number[], kLens: number[], rand: () => number, what: string): Promise<void> {
  const c = heads * d;
  const qStarts = starts(qLens);
  const kStarts = starts(kLens);
  const nq = qStarts[qStarts.length - 1];
  const nk = kStarts[kStarts.length - 1];
  const q = randn(nq * c, rand);
  const k = randn(nk * c, rand);
  const v = randn(nk * c, rand);
  const scale = 1 / Math.sqrt(d);
  const out = poisoned(gpu, [nq, c]);
  attentionVarlen(gpu, gpu.upload(q, [nq, c], 'f32'), gpu.upload(k, [nk, c], 'f32'), gpu.upload(v, [nk, c], 'f32'), { heads, scale, qStarts, kStarts, out });
  const seqs = qLens.map((n, i) => ({ q0: qStarts[i], nq: n, k0: kStarts[i], nk: kLens[i] }));
  expectClose(await out.read(), attentionRef(q, k, v, c, { heads, scale, seqs }), { rtol: 1e-5, atol: 1e-5, what });
}

/**
 * attention on random f32 q and k/v caches [b, lmax, h·d] stored as `kv`, whose rows past kvLen hold 1e6 (a kernel
 * that read them would be far off), scale 1/√d, into a poisoned output, against the float64 reference within 1e-5
 * relative and absolute (the reference sees the k/v values rounded to `kv`).
 */
export async function checkDense(
  gpu: Gpu,
  s: { b: number; h: number; d: number; lq: number; lmax: number; kvLen: number; kv?: 'f32' | 'f16' | 'bf16' },
  rand: () => number,
  what: string,
): Promise<void> {
  const { b, h, d, lq, lmax, kvLen } = s;
  const kv = s.kv ?? 'f32';
  const c = h * d;
  const q = randn(b * lq * c, rand);
  const k = roundThrough(kv, randn(b * lmax * c, rand));
  const v = roundThrough(kv, randn(b * lmax * c, rand));
  for (let bi = 0; bi < b; bi++) {
    k.fill(1e6, (bi * lmax + kvLen) * c, (bi + 1) * lmax * c);
    v.fill(1e6, (bi * lmax + kvLen) * c, (bi + 1) * lmax * c);
  }
  const up = (x: Float32Array) =>
    kv === 'f32' ? gpu.upload(x, [b, lmax, c], 'f32') : gpu.upload(kv === 'f16' ? f32ToF16Array(x) : f32ToBf16Array(x), [b, lmax, c], kv);
  const scale = 1 / Math.sqrt(d);
  const out = poisoned(gpu, [b, lq, c]);
  attention(gpu, gpu.upload(q, [b, lq, c], 'f32'), up(k), up(v), { heads: h, scale, kvLen, out });
  const seqs = Array.from({ length: b }, (_, i) => ({ q0: i * lq, nq: lq, k0: i * lmax, nk: kvLen }));
  expectClose(await out.read(), attentionRef(q, k, v, c, { heads: h, scale, seqs }), { rtol: 1e-5, atol: 1e-5, what });
}
