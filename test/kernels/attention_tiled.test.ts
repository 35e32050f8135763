// The GPU attention kernel (kernels/attention_tiled.ts): lanes sharing a query, keys staged in workgroup memory,
// partial dots summed with subgroup shuffles. lavapipe's own tuning runs the portable kernel, so these tests
// force the tiled one (`attentionTesting.kernel = 'tiled'`) and check the kernel names compiled. Shapes: every
// supported head dim, one query, queries past one workgroup (64 at D = 128), key counts off the block size
// (BKV = 32/32/16/8 for D = 32/64/128/256) and 1, cache rows past kvLen poisoned with 1e6.
// Tolerances as in attention.test.ts (the same f32 arithmetic in another order): 1e-5 relative and absolute;
// 5e-5 absolute for cosine attention with logits up to ±100; f16 output adds ≤ 2⁻¹¹ relative.

import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { f32ToF16Array, roundThrough } from '../../engine/dtype.js';
import { attention, attentionMasked, attentionRef, attentionTesting } from '../../kernels/attention.js';
import { tiledAttentionShape } from '../../kernels/attention_tiled.js';
import { checkDense, checkVarlen, unitHeads } from './attention_helpers.js';
import { expectClose, poisoned, randn, releaseTestGpu, rng, runSeed, testGpu, withGpuTuning } from '../helpers.js';

afterAll(releaseTestGpu);
afterEach(() => {
  attentionTesting.kernel = 'auto';
});

const TOL = { rtol: 1e-5, atol: 1e-5 };

describe(`tiled attention (seed ${runSeed})`, () => {
  // [B, H, D, Lq, Lmax, kvLen, cache dtype]
  const cases: [number, number, number, number, number, number, 'f32' | 'f16' | 'bf16'][] = [
    [1, 1, 128, 1, 1, 1, 'f32'],
    [2, 3, 64, 17, 40, 33, 'f32'],
    [1, 2, 128, 70, 100, 65, 'f32'],
    [2, 1, 32, 300, 20, 20, 'f16'],
    [1, 2, 256, 9, 30, 21, 'bf16'],
    [2, 2, 128, 5, 31, 1, 'f16'],
  ];
  it.each(cases)('B %i, H %i, D %i, Lq %i, Lmax %i, kvLen %i, %s cache', async (b, h, d, lq, lmax, kvLen, kv) => {
    const gpu = await testGpu();
    attentionTesting.kernel = 'tiled';
    await checkDense(gpu, { b, h, d, lq, lmax, kvLen, kv }, rng(runSeed + b * 1000 + lq * 7 + kvLen + d), `tiled attention D ${d}`);
    expect(gpu.compiledKernels).toContain(`attention_tiled_${kv}_d${d}`);
  });

  it('cosine attention with f16 q and output over an f16 cache of 1000 keys (the f16 activation path)', async () => {
    const gpu = await testGpu();
    if (!gpu.hasF16) throw new Error('this test needs shader-f16 (lavapipe has it)');
    attentionTesting.kernel = 'tiled';
    const rand = rng(runSeed + 1000);
    const [b, h, d, lq, kvLen] = [2, 2, 128, 67, 1000];
    const c = h * d;
    const q = roundThrough('f16', unitHeads(randn(b * lq * c, rand), c, h, 100));
    const k = roundThrough('f16', unitHeads(randn(b * kvLen * c, rand), c, h));
    const v = roundThrough('f16', randn(b * kvLen * c, rand));
    const out = poisoned(gpu, [b, lq, c], 'f16');
    const up = (x: Float32Array, l: number) => gpu.upload(f32ToF16Array(x), [b, l, c], 'f16');
    attention(gpu, up(q, lq), up(k, kvLen), up(v, kvLen), { heads: h, scale: 1, out });
    const seqs = Array.from({ length: b }, (_, i) => ({ q0: i * lq, nq: lq, k0: i * kvLen, nk: kvLen }));
    expectClose(await out.read(), attentionRef(q, k, v, c, { heads: h, scale: 1, seqs }), { rtol: 1e-3, atol: 5e-5, what: 'tiled f16' });
    expect(gpu.compiledKernels).toContain('attention_tiled_f16_d128_f16io');
  });

  it.each([
    [2, 128, [1, 0, 70], [5, 3, 40]],
    [3, 64, [130, 2], [77, 1]],
  ] as [number, number, number[], number[]][])('attentionVarlen H %i, D %i, queries %j, keys %j', async (h, d, qLens, kLens) => {
    const gpu = await testGpu();
    attentionTesting.kernel = 'tiled';
    await checkVarlen(gpu, h, d, qLens, kLens, rng(runSeed + qLens[0] + kLens[0]), 'tiled varlen');
  });

  it('falls back to the portable kernel for other head dims and for masks', async () => {
    const gpu = await testGpu();
    attentionTesting.kernel = 'tiled';
    const rand = rng(runSeed + 48);
    const [h, d, l] = [2, 48, 9];
    const c = h * d;
    const q = randn(l * c, rand);
    const k = randn(l * c, rand);
    const v = randn(l * c, rand);
    const ref = (causal: boolean) => attentionRef(q, k, v, c, { heads: h, scale: 0.2, causal, seqs: [{ q0: 0, nq: l, k0: 0, nk: l }] });
    const up = (x: Float32Array) => gpu.upload(x, [1, l, c], 'f32');
    expectClose(await attention(gpu, up(q), up(k), up(v), { heads: h, scale: 0.2 }).read(), ref(false), { ...TOL, what: 'D 48' });
    expectClose(await attentionMasked(gpu, up(q), up(k), up(v), { heads: h, scale: 0.2, causal: true }).read(), ref(true), { ...TOL, what: 'causal' });
    expect(gpu.compiledKernels.filter((n) => n.startsWith('attention_tiled_') && n.includes('_d48'))).toEqual([]);
  });

  it('the geometry keeps a block of keys and values within 16 KiB of workgroup memory', () => {
    for (const d of [32, 64, 128, 256]) {
      const { tpq, bq, bkv } = tiledAttentionShape(d);
      expect(tpq * bq).toBe(256);
      expect(2 * 4 * bkv * d).toBeLessThanOrEqual(16384);
    }
  });

  it('a device tuned for GPUs runs it unasked', async () => {
    await withGpuTuning(async (tuned) => {
      const rand = rng(runSeed + 64);
      const [h, d, lq, lk] = [1, 64, 3, 50];
      const q = randn(lq * h * d, rand);
      const k = randn(lk * h * d, rand);
      const v = randn(lk * h * d, rand);
      const out = attention(tuned, tuned.upload(q, [1, lq, d], 'f32'), tuned.upload(k, [1, lk, d], 'f32'), tuned.upload(v, [1, lk, d], 'f32'), { heads: h, scale: 0.125 });
      const ref = attentionRef(q, k, v, d, { heads: h, scale: 0.125, seqs: [{ q0: 0, nq: lq, k0: 0, nk: lk }] });
      expectClose(await out.read(), ref, { ...TOL, what: 'gpu-tuned attention' });
      expect(tuned.compiledKernels).toContain('attention_tiled_f32_d64');
    });
  });
});
