import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { f32ToF16Array, roundThrough } from '../../engine/dtype.js';
import { ShapeError } from '../../engine/errors.js';
import { attention, attentionMasked, attentionRef, attentionTesting, attentionVarlen } from '../../kernels/attention.js';
import { checkDense, checkVarlen, starts, unitHeads } from './attention_helpers.js';
import { expectClose, poisoned, randn, releaseTestGpu, rng, runSeed, testGpu } from '../helpers.js';

// This file tests the portable (flash) kernel, which lavapipe would replace by the two-GEMM path for long query
// runs (attention_gemm.test.ts) and GPUs by the tiled kernel (attention_tiled.test.ts).
beforeAll(() => {
  attentionTesting.kernel = 'portable';
});
afterAll(async () => {
  attentionTesting.kernel = 'auto';
  await releaseTestGpu();
});

// Tolerances. Each output is a convex combination of v rows (|v| ≲ 4), so its error is about
// max|v| · Σ_j w_j·|Δs_j| plus the rounding of the weighted sum. A score is a D-term f32 dot product,
// |Δs| ≲ √D·2⁻²⁴·|s|-ish: at scale 1/√D on N(0,1) data (|s| ≲ 4) that is ~1e-6 on the output, and the T5
// cases (scale 1, |s| up to ~30) measured up to 4e-6; f32 exp and the running sums over ≥ 4096 keys add
// ~1e-6 relative. Hence 1e-5 relative plus 1e-5 absolute (outputs are averages that can cancel to ~0).
// Cosine attention (unit q, k, logits up to ±100 at softmax scale 1) multiplies the score error by 100:
// measured ≤ 7e-6, so 5e-5 absolute there.
const TOL = { rtol: 1e-5, atol: 1e-5 };

describe(`attention (seed ${runSeed})`, () => {
  // [B, H, D, Lq, Lmax, kvLen]: Lq = 1, Lq below/above/not a multiple of the 16/64 query tiles, kvLen = 1,
  // kvLen not a multiple of the 16/32-key tiles, kvLen < Lmax (garbage rows after it must not matter).
  const cases: [number, number, number, number, number, number][] = [
    [1, 1, 64, 1, 1, 1],
    [2, 3, 64, 17, 40, 33],
    [1, 2, 128, 1, 50, 47],
    [2, 1, 128, 70, 20, 20],
    [1, 3, 128, 130, 100, 65],
    [2, 2, 64, 5, 31, 1],
    [1, 2, 96, 16, 17, 17],
  ];
  it.each(cases)('B %i, H %i, D %i, Lq %i, Lmax %i, kvLen %i', async (b, h, d, lq, lmax, kvLen) => {
    const gpu = await testGpu();
    await checkDense(gpu, { b, h, d, lq, lmax, kvLen }, rng(runSeed + b * 1000 + lq * 7 + kvLen), 'attention');
  });

  it('caches too large for one binding run per batch element (limit lowered), and a fresh output', async () => {
    const gpu = await testGpu();
    const rand = rng(runSeed + 555);
    const [b, h, d, lq, lmax, kvLen] = [2, 2, 64, 20, 50, 37];
    const c = h * d;
    const q = randn(b * lq * c, rand);
    const k = randn(b * lmax * c, rand);
    const v = randn(b * lmax * c, rand);
    // Room for one batch element's valid rows but not for both: two dispatches on row views.
    const maxBindingBytes = (lmax + 10) * c * 4;
    const qt = gpu.upload(q, [b, lq, c], 'f32');
    const before = gpu.dispatchCount;
    const out = attention(gpu, qt, gpu.upload(k, [b, lmax, c], 'f32'), gpu.upload(v, [b, lmax, c], 'f32'), {
      heads: h,
      scale: 0.125,
      kvLen,
      maxBindingBytes,
    });
    expect(out.shape).toEqual([b, lq, c]);
    expect(gpu.dispatchCount - before).toBe(b);
    const seqs = Array.from({ length: b }, (_, i) => ({ q0: i * lq, nq: lq, k0: i * lmax, nk: kvLen }));
    expectClose(await out.read(), attentionRef(q, k, v, c, { heads: h, scale: 0.125, seqs }), { ...TOL, what: 'split per batch' });
    expect(() => attention(gpu, qt, gpu.upload(k, [b, lmax, c], 'f32'), gpu.upload(v, [b, lmax, c], 'f32'), {
      heads: h,
      scale: 0.125,
      maxBindingBytes: 1000,
    })).toThrow(/attention: k\/v of one batch element.*maxStorageBufferBindingSize/);
  });

  it('cosine attention (unit q·k times 100, softmax scale 1) and the long-cache path with Lk ≥ 4096', async () => {
    const gpu = await testGpu();
    const rand = rng(runSeed + 4096);
    const [b, h, d, lq, lmax, kvLen] = [2, 2, 128, 3, 4200, 4133];
    const c = h * d;
    const q = unitHeads(randn(b * lq * c, rand), c, h, 100);
    const k = unitHeads(randn(b * lmax * c, rand), c, h);
    const v = randn(b * lmax * c, rand);
    const out = poisoned(gpu, [b, lq, c]);
    attention(gpu, gpu.upload(q, [b, lq, c], 'f32'), gpu.upload(k, [b, lmax, c], 'f32'), gpu.upload(v, [b, lmax, c], 'f32'), {
      heads: h,
      scale: 1,
      kvLen,
      out,
    });
    const seqs = Array.from({ length: b }, (_, i) => ({ q0: i * lq, nq: lq, k0: i * lmax, nk: kvLen }));
    expectClose(await out.read(), attentionRef(q, k, v, c, { heads: h, scale: 1, seqs }), { rtol: 1e-5, atol: 5e-5, what: 'cosine attention' });
  });

  it('a plain long cache: Lq 20, kvLen 4097', async () => {
    const gpu = await testGpu();
    const rand = rng(runSeed + 4097);
    const [h, d, lq, kvLen] = [1, 64, 20, 4097];
    const c = h * d;
    const q = randn(lq * c, rand);
    const k = randn(kvLen * c, rand);
    const v = randn(kvLen * c, rand);
    const out = poisoned(gpu, [1, lq, c]);
    attention(gpu, gpu.upload(q, [1, lq, c], 'f32'), gpu.upload(k, [1, kvLen, c], 'f32'), gpu.upload(v, [1, kvLen, c], 'f32'), {
      heads: h,
      scale: 1 / 8,
      out,
    });
    const ref = attentionRef(q, k, v, c, { heads: h, scale: 1 / 8, seqs: [{ q0: 0, nq: lq, k0: 0, nk: kvLen }] });
    expectClose(await out.read(), ref, { ...TOL, what: 'long cache' });
  });

  it.each(['f16', 'bf16'] as const)('%s k/v caches read through packed loads', async (dtype) => {
    const gpu = await testGpu();
    const rand = rng(runSeed + (dtype === 'f16' ? 16 : 17));
    const [b, h, d, lq, lmax, kvLen] = [2, 2, 64, 19, 45, 37];
    const c = h * d;
    const q = randn(b * lq * c, rand);
    const k = randn(b * lmax * c, rand);
    const v = randn(b * lmax * c, rand);
    const bits = (x: Float32Array) => {
      if (dtype === 'f16') return f32ToF16Array(x);
      const h16 = new Uint16Array(x.length);
      const r = roundThrough('bf16', x);
      const u = new Uint32Array(r.buffer);
      for (let i = 0; i < x.length; i++) h16[i] = u[i] >>> 16;
      return h16;
    };
    const out = poisoned(gpu, [b, lq, c]);
    attention(gpu, gpu.upload(q, [b, lq, c], 'f32'), gpu.upload(bits(k), [b, lmax, c], dtype), gpu.upload(bits(v), [b, lmax, c], dtype), {
      heads: h,
      scale: 1 / 8,
      kvLen,
      out,
    });
    // The reference sees the same rounded k/v, so the f32 tolerance still holds.
    const seqs = Array.from({ length: b }, (_, i) => ({ q0: i * lq, nq: lq, k0: i * lmax, nk: kvLen }));
    const ref = attentionRef(q, roundThrough(dtype, k), roundThrough(dtype, v), c, { heads: h, scale: 1 / 8, seqs });
    expectClose(await out.read(), ref, { ...TOL, what: `${dtype} cache` });
  });

  // f16 q and output (the f16 activation path; shader-f16): q is widened on load, scores, softmax and the
  // accumulator stay f32, the output is rounded once. The reference sees the f16-rounded q, k, v, so on top
  // of the f32 bound (TOL; 5e-5 absolute for cosine attention, see above) only that rounding is new:
  // ≤ 2⁻¹¹ = 4.9e-4 relative, so rtol 1e-3; outputs near 0 round by ≤ 2⁻²⁵ absolute (inside atol).
  describe('f16 q and output', () => {
    const F16 = { rtol: 1e-3, atol: 5e-5 };
    const half = (x: Float32Array) => f32ToF16Array(x);

    it.each([
      // [B, H, D, Lq, Lmax, kvLen, cache dtype]
      [1, 1, 64, 1, 1, 1, 'f16'],
      [2, 3, 64, 17, 40, 33, 'f16'],
      [1, 2, 128, 130, 100, 65, 'f32'],
      [2, 2, 128, 70, 20, 20, 'f16'],
    ] as [number, number, number, number, number, number, 'f32' | 'f16'][])('attention B %i, H %i, D %i, Lq %i, Lmax %i, kvLen %i, %s cache (cosine, q·100)', async (b, h, d, lq, lmax, kvLen, kv) => {
      const gpu = await testGpu();
      if (!gpu.hasF16) {
        return expect(() => attention(gpu, gpu.empty([1, 1, 64], 'f16'), gpu.empty([1, 1, 64], 'f16'), gpu.empty([1, 1, 64], 'f16'), { heads: 1, scale: 1 })).toThrow(/f16 q needs the shader-f16 feature/);
      }
      const rand = rng(runSeed + b * 1000 + lq * 7 + kvLen + 5);
      const c = h * d;
      // Infinity's self-attention: unit k, q scaled by up to 100, softmax scale 1.
      const q = roundThrough('f16', unitHeads(randn(b * lq * c, rand), c, h, 100));
      const k = roundThrough('f16', unitHeads(randn(b * lmax * c, rand), c, h));
      const v = roundThrough('f16', randn(b * lmax * c, rand));
      for (let bi = 0; bi < b; bi++) v.fill(1e4, (bi * lmax + kvLen) * c, (bi + 1) * lmax * c); // rows past kvLen must not be read
      const upKv = (x: Float32Array) => (kv === 'f16' ? gpu.upload(half(x), [b, lmax, c], 'f16') : gpu.upload(x, [b, lmax, c], 'f32'));
      const out = poisoned(gpu, [b, lq, c], 'f16');
      attention(gpu, gpu.upload(half(q), [b, lq, c], 'f16'), upKv(k), upKv(v), { heads: h, scale: 1, kvLen, out });
      const seqs = Array.from({ length: b }, (_, i) => ({ q0: i * lq, nq: lq, k0: i * lmax, nk: kvLen }));
      expectClose(await out.read(), attentionRef(q, k, v, c, { heads: h, scale: 1, seqs }), { ...F16, what: `attention f16 q, ${kv} cache` });
    });

    it.each([
      [2, 128, [1, 1, 1], [5, 33, 17]],
      [3, 64, [20, 0, 70], [9, 1, 40]],
      [2, 128, [17, 33], [77, 512]],
    ] as [number, number, number[], number[]][])('attentionVarlen H %i, D %i, queries %j, keys %j (f32 text K/V)', async (h, d, qLens, kLens) => {
      const gpu = await testGpu();
      if (!gpu.hasF16) return;
      const rand = rng(runSeed + qLens.length * 37 + kLens[0] + 6);
      const c = h * d;
      const qStarts = starts(qLens);
      const kStarts = starts(kLens);
      const nq = qStarts[qStarts.length - 1];
      const nk = kStarts[kStarts.length - 1];
      const q = roundThrough('f16', randn(nq * c, rand));
      const k = randn(nk * c, rand);
      const v = randn(nk * c, rand);
      const scale = 1 / Math.sqrt(d);
      const out = poisoned(gpu, [nq, c], 'f16');
      attentionVarlen(gpu, gpu.upload(half(q), [nq, c], 'f16'), gpu.upload(k, [nk, c], 'f32'), gpu.upload(v, [nk, c], 'f32'), { heads: h, scale, qStarts, kStarts, out });
      const seqs = qLens.map((n, i) => ({ q0: qStarts[i], nq: n, k0: kStarts[i], nk: kLens[i] }));
      expectClose(await out.read(), attentionRef(q, k, v, c, { heads: h, scale, seqs }), { ...F16, what: 'varlen f16 q' });
    });

    it('the output takes q\'s dtype; attentionMasked stays f32-only', async () => {
      const gpu = await testGpu();
      if (!gpu.hasF16) return;
      const q = gpu.empty([1, 4, 64], 'f16');
      const k = gpu.empty([1, 4, 64], 'f32');
      expect(() => attention(gpu, q, k, k, { heads: 1, scale: 1, out: gpu.empty([1, 4, 64], 'f32') })).toThrow(/attention: out .* must be f16 \(q's dtype\)/);
      expect(() => attentionMasked(gpu, q, k, k, { heads: 1, scale: 1 })).toThrow(/attentionMasked: q must be f32 \(/);
      expect(() => attention(gpu, gpu.empty([1, 4, 64], 'bf16'), k, k, { heads: 1, scale: 1 })).toThrow(/attention: q must be f32 or f16/);
      await gpu.sync();
    });
  });

  it.each([
    // [heads, D, query lengths, key lengths]
    [1, 64, [1], [1]],
    [2, 128, [1, 1, 1], [5, 33, 17]], // a pooling query per text (TextAttentivePool)
    [3, 64, [20, 0, 70], [9, 1, 40]], // an empty query range, a single key
    [2, 128, [17, 33], [77, 512]], // cross-attention to texts of different lengths
    [1, 224, [1, 1], [30, 7]], // Infinity-8B's text pool: head dim 224
  ] as [number, number, number[], number[]][])('varlen H %i, D %i, queries %j, keys %j', async (h, d, qLens, kLens) => {
    const gpu = await testGpu();
    await checkVarlen(gpu, h, d, qLens, kLens, rng(runSeed + qLens.length * 31 + kLens[0]), 'varlen');
  });

  it.each([
    // [B, H, D, Lq, Lk, causal, keyMask, bias, valid key counts per batch (keyMask)]
    [2, 2, 64, 77, 77, true, true, false, [5, 77]], // CLIP: causal + padding (prompt of 5 tokens, a full one)
    [1, 3, 64, 1, 1, true, true, false, [1]],
    [2, 1, 64, 33, 33, false, true, true, [1, 20]], // T5 encoder: bias + padding
    [1, 2, 128, 17, 17, false, false, true, [17]],
    [2, 2, 64, 40, 40, true, false, false, [40, 40]],
    [2, 3, 64, 5, 70, true, true, true, [9, 70]], // Lq ≠ Lk: causal is top-left aligned (key j ≤ query i)
  ] as [number, number, number, number, number, boolean, boolean, boolean, number[]][])(
    'masked B %i, H %i, D %i, Lq %i, Lk %i, causal %s, keyMask %s, bias %s',
    async (b, h, d, lq, lk, causal, useMask, useBias, valid) => {
      const gpu = await testGpu();
      const rand = rng(runSeed + lq * 13 + lk + b + (useBias ? 1 : 0));
      const c = h * d;
      const q = randn(b * lq * c, rand);
      const k = randn(b * lk * c, rand);
      const v = randn(b * lk * c, rand);
      const mask = new Int32Array(b * lk);
      for (let bi = 0; bi < b; bi++) for (let j = 0; j < lk; j++) mask[bi * lk + j] = j < valid[bi] ? 1 : 0;
      const bias = randn(h * lq * lk, rand);
      const scale = useBias ? 1 : 1 / Math.sqrt(d);
      const out = poisoned(gpu, [b, lq, c]);
      attentionMasked(gpu, gpu.upload(q, [b, lq, c], 'f32'), gpu.upload(k, [b, lk, c], 'f32'), gpu.upload(v, [b, lk, c], 'f32'), {
        heads: h,
        scale,
        causal,
        keyMask: useMask ? gpu.upload(mask, [b, lk], 'i32') : null,
        bias: useBias ? gpu.upload(bias, [h, lq, lk], 'f32') : null,
        out,
      });
      const ref = attentionRef(q, k, v, c, {
        heads: h,
        scale,
        seqs: Array.from({ length: b }, (_, i) => ({ q0: i * lq, nq: lq, k0: i * lk, nk: lk })),
        causal,
        keyMask: useMask ? (s, j) => mask[s * lk + j] !== 0 : undefined,
        bias: useBias ? (hh, i, j) => bias[(hh * lq + i) * lk + j] : undefined,
      });
      expectClose(await out.read(), ref, { ...TOL, what: 'masked' });
    },
  );

  it('a row whose keys are all masked averages v over every key (finfo.min semantics, no NaN)', async () => {
    const gpu = await testGpu();
    const rand = rng(runSeed + 99);
    const [b, h, d, l] = [2, 2, 64, 21];
    const c = h * d;
    const q = randn(b * l * c, rand);
    const k = randn(b * l * c, rand);
    const v = randn(b * l * c, rand);
    // Batch 0: key 0 masked, so with the causal mask query 0 sees nothing. Batch 1: every key masked.
    const mask = new Int32Array(b * l).fill(1);
    mask[0] = 0;
    mask.fill(0, l);
    const out = poisoned(gpu, [b, l, c]);
    attentionMasked(gpu, gpu.upload(q, [b, l, c], 'f32'), gpu.upload(k, [b, l, c], 'f32'), gpu.upload(v, [b, l, c], 'f32'), {
      heads: h,
      scale: 0.125,
      causal: true,
      keyMask: gpu.upload(mask, [b, l], 'i32'),
      out,
    });
    const got = await out.read();
    const mean = (bi: number, x: number) => {
      let s = 0;
      for (let j = 0; j < l; j++) s += v[(bi * l + j) * c + x];
      return s / l;
    };
    const want: number[] = [];
    const gotRows: number[] = [];
    for (let x = 0; x < c; x++) {
      want.push(mean(0, x)); // batch 0, query 0
      gotRows.push(got[x]);
      for (let i = 0; i < l; i++) {
        want.push(mean(1, x)); // batch 1, every query
        gotRows.push(got[(l + i) * c + x]);
      }
    }
    expectClose(gotRows, want, { ...TOL, what: 'fully masked rows' });
    const ref = attentionRef(q, k, v, c, {
      heads: h,
      scale: 0.125,
      seqs: [0, 1].map((i) => ({ q0: i * l, nq: l, k0: i * l, nk: l })),
      causal: true,
      keyMask: (s, j) => mask[s * l + j] !== 0,
    });
    expectClose(got, ref, { ...TOL, what: 'masked rows vs reference' });
  });

  it('rejects mismatched shapes with ShapeError naming the kernel and shapes', async () => {
    const gpu = await testGpu();
    const t = (shape: number[], dtype: 'f32' | 'i32' = 'f32') => gpu.empty(shape, dtype);
    const q = t([1, 4, 128]);
    const k = t([1, 8, 128]);
    expect(() => attention(gpu, q, k, k, { heads: 3, scale: 1 })).toThrow(ShapeError);
    expect(() => attention(gpu, q, k, k, { heads: 1, scale: 1, kvLen: 9 })).toThrow(/attention: kvLen 9 outside \[1, 8\].*q \[1, 4, 128\]/);
    expect(() => attention(gpu, q, t([1, 8, 64]), t([1, 8, 64]), { heads: 1, scale: 1 })).toThrow(/attention: channel counts differ/);
    expect(() => attention(gpu, t([1, 4, 6]), t([1, 4, 6]), t([1, 4, 6]), { heads: 3, scale: 1 })).toThrow(/head dim 2/);
    expect(() => attention(gpu, t([1, 4, 512]), t([1, 4, 512]), t([1, 4, 512]), { heads: 1, scale: 1 })).toThrow(/head dim 512/);
    expect(() => attention(gpu, q, k, k, { heads: 1, scale: 1, out: t([1, 4, 64]) })).toThrow(/attention: out/);
    expect(() => attention(gpu, q, k, k, { heads: 1, scale: 1, out: q })).toThrow(/attention: out .* shares a buffer with input/);
    const q2 = t([4, 128]);
    const k2 = t([8, 128]);
    expect(() => attentionVarlen(gpu, q2, k2, k2, { heads: 1, scale: 1, qStarts: [0, 4], kStarts: [0, 7] })).toThrow(/attentionVarlen: offsets/);
    expect(() => attentionVarlen(gpu, q2, k2, k2, { heads: 1, scale: 1, qStarts: [0, 2, 4], kStarts: [0, 8, 8] })).toThrow(
      /sequence 1 has 2 queries but no keys/,
    );
    expect(() => attentionMasked(gpu, q, q, q, { heads: 1, scale: 1, keyMask: t([1, 5], 'i32') })).toThrow(/attentionMasked: keyMask must be i32 \[1, 4\]/);
    expect(() => attentionMasked(gpu, q, q, q, { heads: 2, scale: 1, bias: t([1, 4, 4]) })).toThrow(/attentionMasked: bias must be f32 \[2, 4, 4\]/);
  });
});
