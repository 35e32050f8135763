// The two-GEMM attention path of CPU adapters (kernels/attention_gemm.ts) and its row softmax. lavapipe takes it
// by itself for ≥ 128 queries and keys; `attentionTesting.kernel = 'gemm'` forces it for the small shapes here.
// Tolerances: as attention.test.ts (1e-5 relative and absolute: f32 dot products of D terms, f32 exp and sums);
// the softmax alone is a few f32 roundings per element (exp ≤ 2 ulp, the sum of n terms ≤ n·2⁻²⁴ relative):
// 1e-6 relative at n ≤ 5000 plus 1e-9 absolute for entries that underflow towards 0.

import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { f32ToBf16Array, f32ToF16Array, roundThrough } from '../../engine/dtype.js';
import { ShapeError } from '../../engine/errors.js';
import { attention, attentionRef, attentionTesting } from '../../kernels/attention.js';
import { softmaxRows, softmaxRowsRef } from '../../kernels/attention_gemm.js';
import { checkDense, unitHeads } from './attention_helpers.js';
import { expectClose, poisoned, randn, releaseTestGpu, rng, runSeed, testGpu } from '../helpers.js';

afterAll(releaseTestGpu);
afterEach(() => {
  attentionTesting.kernel = 'auto';
});

const TOL = { rtol: 1e-5, atol: 1e-5 };

describe(`softmaxRows (seed ${runSeed})`, () => {
  it.each([
    [1, 1, 1],
    [3, 7, 0.5],
    [5, 1000, 8],
    [2, 4099, 1],
  ])('%i rows of %i, scale %f', async (rows, n, scale) => {
    const gpu = await testGpu();
    const rand = rng(runSeed + rows * 31 + n);
    const x = randn(rows * n, rand, 3);
    const t = gpu.upload(x, [rows, n], 'f32');
    softmaxRows(gpu, t, { scale });
    expectClose(await t.read(), softmaxRowsRef(x, n, scale), { rtol: 1e-6, atol: 1e-9, what: 'softmax' });
  });

  it('rejects non-f32 input and a non-finite scale', async () => {
    const gpu = await testGpu();
    expect(() => softmaxRows(gpu, gpu.empty([2, 3], 'i32'))).toThrow(ShapeError);
    expect(() => softmaxRows(gpu, gpu.empty([2, 3], 'f32'), { scale: Number.NaN })).toThrow(/scale NaN is not finite/);
  });
});

describe(`attention through two GEMMs (seed ${runSeed})`, () => {
  // [B, H, D, Lq, Lmax, kvLen]: one query, one key, kvLen < Lmax (rows past it poisoned), D not a power of 2.
  const cases: [number, number, number, number, number, number][] = [
    [1, 1, 64, 1, 1, 1],
    [2, 3, 64, 17, 40, 33],
    [1, 2, 128, 70, 100, 65],
    [2, 2, 48, 5, 31, 1],
  ];
  it.each(cases)('B %i, H %i, D %i, Lq %i, Lmax %i, kvLen %i', async (b, h, d, lq, lmax, kvLen) => {
    const gpu = await testGpu();
    attentionTesting.kernel = 'gemm';
    await checkDense(gpu, { b, h, d, lq, lmax, kvLen }, rng(runSeed + b * 1000 + lq * 7 + kvLen + 3), 'gemm attention');
    expect(gpu.compiledKernels).toContain('softmax_rows');
  });

  it.each(['f16', 'bf16'] as const)('%s caches are widened before their transpose', async (dtype) => {
    const gpu = await testGpu();
    attentionTesting.kernel = 'gemm';
    const rand = rng(runSeed + dtype.length + 90);
    const [b, h, d, lq, lmax, kvLen] = [2, 2, 64, 9, 30, 21];
    const c = h * d;
    const q = randn(b * lq * c, rand);
    const k = roundThrough(dtype, randn(b * lmax * c, rand));
    const v = roundThrough(dtype, randn(b * lmax * c, rand));
    const half = (x: Float32Array) => (dtype === 'f16' ? f32ToF16Array(x) : f32ToBf16Array(x));
    const out = poisoned(gpu, [b, lq, c]);
    attention(gpu, gpu.upload(q, [b, lq, c], 'f32'), gpu.upload(half(k), [b, lmax, c], dtype), gpu.upload(half(v), [b, lmax, c], dtype), { heads: h, scale: 0.125, kvLen, out });
    // The reference sees the same rounded k/v, so the f32 tolerance holds.
    const seqs = Array.from({ length: b }, (_, i) => ({ q0: i * lq, nq: lq, k0: i * lmax, nk: kvLen }));
    expectClose(await out.read(), attentionRef(q, k, v, c, { heads: h, scale: 0.125, seqs }), { ...TOL, what: `${dtype} cache` });
  });

  it('cosine attention (logits up to ±100) in query chunks (binding limit lowered), unasked on a CPU adapter', async () => {
    const gpu = await testGpu();
    const rand = rng(runSeed + 77);
    const [b, h, d, lq, kvLen] = [2, 2, 64, 150, 300];
    const c = h * d;
    const q = unitHeads(randn(b * lq * c, rand), c, h, 100);
    const k = unitHeads(randn(b * kvLen * c, rand), c, h);
    const v = randn(b * kvLen * c, rand);
    const up = (x: Float32Array, l: number) => gpu.upload(x, [b, l, c], 'f32');
    const seqs = Array.from({ length: b }, (_, i) => ({ q0: i * lq, nq: lq, k0: i * kvLen, nk: kvLen }));
    const want = attentionRef(q, k, v, c, { heads: h, scale: 1, seqs });
    // 160 KiB bindings: scores of 2 heads × 300 keys take 2400 B per query, so 68 queries per chunk (3 chunks).
    attentionTesting.kernel = 'gemm';
    const before = gpu.dispatchCount;
    const out = poisoned(gpu, [b, lq, c]);
    attention(gpu, up(q, lq), up(k, kvLen), up(v, kvLen), { heads: h, scale: 1, out, maxBindingBytes: 160 * 1024 });
    expectClose(await out.read(), want, { rtol: 1e-5, atol: 5e-5, what: 'chunked gemm attention' });
    // Per batch element: 2 cache transposes, then per chunk a transpose, 2 GEMMs, a softmax, a transpose.
    expect(gpu.dispatchCount - before).toBe(b * (2 + 3 * 5));
    attentionTesting.kernel = 'auto';
    if (gpu.tuning === 'cpu') {
      const auto = poisoned(gpu, [b, lq, c]);
      const n0 = gpu.dispatchCount;
      attention(gpu, up(q, lq), up(k, kvLen), up(v, kvLen), { heads: h, scale: 1, out: auto });
      expect(gpu.dispatchCount - n0).toBe(b * (2 + 5)); // one chunk per batch element
      expectClose(await auto.read(), want, { rtol: 1e-5, atol: 5e-5, what: 'auto gemm attention' });
    }
  });
});
