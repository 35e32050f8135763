// Inputs and checks shared by the attention kernel tests.

import type { Gpu } from '../../engine/device.js';
import { attentionRef, attentionVarlen } from '../../kernels/attention.js';
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
