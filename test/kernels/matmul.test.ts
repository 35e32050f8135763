import { afterAll, describe, expect, it } from 'vitest';
import { roundThrough } from '../../engine/dtype.js';
import { LimitError, ShapeError } from '../../engine/errors.js';
import type { Gpu } from '../../engine/device.js';
import { type Activation, linear, linearRef, matmul, matmulRef, matmulTesting } from '../../kernels/matmul.js';
import { expectClose, poisoned, randomArray, releaseTestGpu, rng, runSeed, testGpu } from '../helpers.js';
import { checkBatchedMatmul, checkLinear, dotTol, uploadAs, type WDtype } from './matmul_helpers.js';

afterAll(releaseTestGpu);

// Tolerances: dotTol (matmul_helpers.ts) bounds f32 accumulation over K on inputs rounded to their storage
// dtype on the host, so the float64 reference sees exactly what the GPU reads.
const maxAbs = (a: ArrayLike<number>) => {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]));
  return m;
};

describe(`linear (seed ${runSeed})`, () => {
  // [M, K, N]: degenerate, odd (scalar path), tile edges, a skinny early-scale row count with a long K, and a
  // larger odd one on the vector path (K % 4 == 0).
  const shapes: [number, number, number][] = [
    [1, 1, 1],
    [7, 13, 5],
    [65, 129, 67],
    [2, 2048, 9],
    [3, 64, 300],
    [333, 1000, 77],
  ];
  const dtypes: WDtype[] = ['f32', 'f16', 'bf16'];
  for (const dt of dtypes) {
    for (const [M, K, N] of shapes) {
      for (const withBias of [true, false]) {
        // Keep the run short: the biggest shape only with bias, the rest both ways.
        if (M * K * N > 1e7 && !withBias) continue;
        it(`${dt} weights, x [${M}, ${K}] · w [${N}, ${K}]ᵀ${withBias ? ' + bias' : ''}`, async () => {
          const gpu = await testGpu();
          const rand = rng(runSeed + M * 7919 + K * 31 + N + (withBias ? 1 : 0) + dt.length * 1_000_003);
          const x = randomArray(M * K, rand);
          const w = roundThrough(dt, randomArray(N * K, rand, -0.5, 0.5));
          const b = withBias ? randomArray(N, rand, -2, 2) : null;
          const out = poisoned(gpu, [M, N]);
          const bias = b ? gpu.upload(b, [N], 'f32') : null;
          linear(gpu, gpu.upload(x, [M, K], 'f32'), uploadAs(gpu, w, [N, K], dt), bias, { out });
          expectClose(await out.read(), linearRef(x, w, b, M, N, K), { what: `linear ${dt}`, ...dotTol(K, maxAbs(x), maxAbs(w)) });
        });
      }
    }
  }

  const acts: Activation[] = ['gelu_tanh', 'gelu_erf', 'silu'];
  for (const act of acts) {
    it(`fused ${act} (f16 weights, bias, leading dims [2, 9])`, async () => {
      const gpu = await testGpu();
      const rand = rng(runSeed + act.length);
      const [K, N] = [96, 70];
      const x = randomArray(18 * K, rand, -1.5, 1.5);
      const w = roundThrough('f16', randomArray(N * K, rand, -0.5, 0.5));
      const b = randomArray(N, rand, -3, 3);
      const out = linear(gpu, gpu.upload(x, [2, 9, K], 'f32'), uploadAs(gpu, w, [N, K], 'f16'), gpu.upload(b, [N], 'f32'), { activation: act });
      expect(out.shape).toEqual([2, 9, N]);
      // The activations' slopes are ≤ 1.13, so the pre-activation tolerance carries over.
      expectClose(await out.read(), linearRef(x, w, b, 18, N, K, act), { what: act, ...dotTol(K, 1.5, 0.5) });
    });
  }

  it('f16 activations in, f16 out (shader-f16)', async () => {
    const gpu = await testGpu();
    if (!gpu.hasF16) return expect(() => linear(gpu, gpu.empty([1, 4], 'f32'), gpu.empty([4, 4], 'f32'), null, { outDtype: 'f16' })).toThrow(ShapeError);
    const rand = rng(runSeed + 16);
    for (const [M, K, N] of [[37, 256, 45], [5, 30, 11]] as const) {
      const x = roundThrough('f16', randomArray(M * K, rand));
      const w = roundThrough('f16', randomArray(N * K, rand, -0.5, 0.5));
      const b = randomArray(N, rand);
      const xt = uploadAs(gpu, x, [M, K], 'f16');
      const wt = uploadAs(gpu, w, [N, K], 'f16');
      const bt = gpu.upload(b, [N], 'f32');
      const want = linearRef(x, w, b, M, N, K, 'silu');
      // f16 input, f32 output: inputs are exact, so only f32 accumulation error remains.
      const y32 = poisoned(gpu, [M, N]);
      linear(gpu, xt, wt, bt, { activation: 'silu', out: y32 });
      expectClose(await y32.read(), want, { what: 'f16 x → f32', ...dotTol(K, 1, 0.5) });
      // f16 output: rounding to f16 adds ≤ 2⁻¹¹ relative (4.9e-4; 1e-3 leaves room for the f32 error
      // below it), and outputs under f16's normal range round to steps of 2⁻²⁴ (atol 1e-7 covers half).
      const y16 = poisoned(gpu, [M, N], 'f16');
      linear(gpu, xt, wt, bt, { activation: 'silu', out: y16 });
      expectClose(await y16.read(), want, { what: 'f16 x → f16', rtol: 1e-3, atol: dotTol(K, 1, 0.5).atol + 1e-7 });
    }
  });

  for (const K of [5, 8]) {
    it(`views of x, w, bias and out starting mid-binding (K = ${K})`, async () => {
      const gpu = await testGpu();
      const rand = rng(runSeed + 5 + K);
      const [M, N] = [9, 6];
      const xs = randomArray((M + 3) * K, rand);
      const ws = roundThrough('f16', randomArray((N + 1) * K, rand));
      const bs = randomArray(N + 3, rand);
      const x = gpu.upload(xs, [M + 3, K], 'f32').rows(1, M);
      const w = uploadAs(gpu, ws, [N + 1, K], 'f16').rows(1, N);
      const bias = gpu.upload(bs, [N + 3], 'f32').reshape([N + 3, 1]).rows(3, N).reshape([N]);
      const outBig = poisoned(gpu, [M + 1, N]);
      // x starts at byte 4K, w at byte 2K, bias at byte 12 and out at byte 24: none is 16-byte aligned for K = 5;
      // for K = 8 x and w are, and the vector path runs on offsets inside the bindings.
      linear(gpu, x, w, bias, { out: outBig.rows(1, M) });
      const got = (await outBig.read()).subarray(N);
      const want = linearRef(xs.subarray(K, (M + 1) * K), ws.subarray(K), bs.subarray(3), M, N, K);
      expectClose(got, want, { what: 'views', ...dotTol(K, 1, 1) });
    });
  }

  it('empty inputs give empty outputs', async () => {
    const gpu = await testGpu();
    const y = linear(gpu, gpu.empty([0, 8], 'f32'), gpu.empty([3, 8], 'f32'), null);
    expect(y.shape).toEqual([0, 3]);
    const z = linear(gpu, gpu.upload(new Float32Array([1, 2]), [2], 'f32'), gpu.upload(new Float32Array([3, 4]), [1, 2], 'f32'), null);
    expect(z.shape).toEqual([1]);
    expect(Array.from(await z.read())).toEqual([11]);
  });

  it('splits rows across bindings when x and y exceed the binding cap', async () => {
    const gpu = await testGpu();
    const rand = rng(runSeed + 77);
    const [M, K, N] = [203, 40, 24];
    const x = randomArray(M * K, rand);
    const w = roundThrough('bf16', randomArray(N * K, rand));
    const b = randomArray(N, rand);
    const out = poisoned(gpu, [M, N]);
    // 2 KiB bindings: x rows are 160 B, so ≤ 12 rows per dispatch (8 after rounding to row blocks), 26 dispatches.
    const before = gpu.dispatchCount;
    linear(gpu, gpu.upload(x, [M, K], 'f32'), uploadAs(gpu, w, [N, K], 'bf16'), gpu.upload(b, [N], 'f32'), { out, maxBindingBytes: 2048, activation: 'gelu_erf' });
    expect(gpu.dispatchCount - before).toBeGreaterThan(10);
    expectClose(await out.read(), linearRef(x, w, b, M, N, K, 'gelu_erf'), { what: 'row split', ...dotTol(K, 1, 1) });
  });

  it('names the weight when it exceeds one binding', async () => {
    const gpu = await testGpu();
    const w = gpu.empty([64, 64], 'f32', 'big-weight');
    expect(() => linear(gpu, gpu.empty([3, 64], 'f32'), w, null, { maxBindingBytes: 8192 })).toThrow(LimitError);
    expect(() => linear(gpu, gpu.empty([3, 64], 'f32'), w, null, { maxBindingBytes: 8192 })).toThrow(/linear weight .*big-weight/);
  });

  it('rejects mismatched shapes and dtypes, naming the kernel and shapes', async () => {
    const gpu = await testGpu();
    const x = gpu.empty([4, 8], 'f32');
    const w = gpu.empty([5, 8], 'f16');
    expect(() => linear(gpu, x, gpu.empty([5, 7], 'f32'), null)).toThrow(/linear: .*x \[4, 8\].*w \[5, 7\]/);
    expect(() => linear(gpu, x, w, gpu.empty([4], 'f32'))).toThrow(/linear: bias must be f32 \[5\]/);
    expect(() => linear(gpu, x, w, gpu.empty([5], 'f16'))).toThrow(ShapeError);
    expect(() => linear(gpu, gpu.empty([4, 8], 'i32'), w, null)).toThrow(/linear: x must be/);
    expect(() => linear(gpu, x, gpu.empty([5, 8], 'i32'), null)).toThrow(/linear: w must be/);
    expect(() => linear(gpu, x, w, null, { out: gpu.empty([4, 6], 'f32') })).toThrow(/linear: out must be f32 \[4, 5\]/);
    expect(() => linear(gpu, x, w, null, { out: gpu.empty([4, 5], 'f32'), outDtype: 'f16' })).toThrow(ShapeError);
  });
});

describe(`matmul (seed ${runSeed})`, () => {
  const cases: { name: string; batch: number; M: number; K: number; N: number; aB: boolean; bB: boolean }[] = [
    { name: 'batched', batch: 3, M: 33, K: 20, N: 17, aB: true, bB: true },
    { name: 'shared b', batch: 2, M: 20, K: 64, N: 72, aB: true, bB: false },
    { name: 'shared a', batch: 2, M: 9, K: 28, N: 40, aB: false, bB: true },
    { name: '2-D', batch: 1, M: 70, K: 31, N: 513, aB: false, bB: false },
  ];
  for (const c of cases) {
    for (const transA of [false, true]) {
      for (const transB of [false, true]) {
        it(`${c.name} [${c.batch}] ${c.M}×${c.K}·${c.K}×${c.N}${transA ? ' transA' : ''}${transB ? ' transB' : ''}`, async () => {
          const gpu = await testGpu();
          const rand = rng(runSeed + c.M * 131 + c.N + (transA ? 7 : 0) + (transB ? 13 : 0));
          const a = randomArray((c.aB ? c.batch : 1) * c.M * c.K, rand);
          const b = randomArray((c.bB ? c.batch : 1) * c.K * c.N, rand);
          const aShape = [...(c.aB ? [c.batch] : []), ...(transA ? [c.K, c.M] : [c.M, c.K])];
          const bShape = [...(c.bB ? [c.batch] : []), ...(transB ? [c.N, c.K] : [c.K, c.N])];
          const outShape = c.aB || c.bB ? [c.batch, c.M, c.N] : [c.M, c.N];
          const out = poisoned(gpu, outShape);
          matmul(gpu, gpu.upload(a, aShape, 'f32'), gpu.upload(b, bShape, 'f32'), { transA, transB, out });
          const want = matmulRef(a, b, { batch: c.batch, M: c.M, N: c.N, K: c.K, transA, transB, aBatched: c.aB, bBatched: c.bB });
          expectClose(await out.read(), want, { what: 'matmul', ...dotTol(c.K, 1, 1) });
        });
      }
    }
  }

  it('QᵀX: Q [M, r], X [M, C] → [r, C] (transA)', async () => {
    const gpu = await testGpu();
    const rand = rng(runSeed + 99);
    const [M, r, C] = [300, 8, 132];
    const q = randomArray(M * r, rand);
    const x = randomArray(M * C, rand);
    const y = matmul(gpu, gpu.upload(q, [M, r], 'f32'), gpu.upload(x, [M, C], 'f32'), { transA: true });
    expect(y.shape).toEqual([r, C]);
    expectClose(await y.read(), matmulRef(q, x, { batch: 1, M: r, N: C, K: M, transA: true, aBatched: false, bBatched: false }), { what: 'QᵀX', ...dotTol(M, 1, 1) });
  });

  it('square 256³ on the vector path', async () => {
    const gpu = await testGpu();
    const rand = rng(runSeed + 256);
    const S = 256;
    const a = randomArray(S * S, rand);
    const b = randomArray(S * S, rand);
    const out = poisoned(gpu, [S, S]);
    matmul(gpu, gpu.upload(a, [S, S], 'f32'), gpu.upload(b, [S, S], 'f32'), { out });
    expectClose(await out.read(), matmulRef(a, b, { batch: 1, M: S, N: S, K: S, aBatched: false, bBatched: false }), { what: '256³', ...dotTol(S, 1, 1) });
  });

  it('splits batches and rows across bindings', async () => {
    const gpu = await testGpu();
    const rand = rng(runSeed + 3);
    const [batch, M, K, N] = [5, 37, 12, 20];
    const a = randomArray(batch * M * K, rand);
    const b = randomArray(batch * K * N, rand);
    const want = matmulRef(a, b, { batch, M, N, K, aBatched: true, bBatched: true });
    const at = gpu.upload(a, [batch, M, K], 'f32');
    const bt = gpu.upload(b, [batch, K, N], 'f32');
    // 8 KiB: two batches of C (2960 B each) per dispatch; 1 KiB: rows within a batch (12 rows per dispatch).
    for (const cap of [8192, 1024]) {
      const out = poisoned(gpu, [batch, M, N]);
      matmul(gpu, at, bt, { out, maxBindingBytes: cap });
      expectClose(await out.read(), want, { what: `split at ${cap} B`, ...dotTol(K, 1, 1) });
    }
    // A transposed batch cannot be cut into rows.
    expect(() => matmul(gpu, gpu.empty([2, K, 200], 'f32', 'tall-aT'), bt.rows(0, 2), { transA: true, maxBindingBytes: 4096 })).toThrow(/tall-aT/);
  });

  it('rejects mismatched shapes and dtypes, naming the kernel and shapes', async () => {
    const gpu = await testGpu();
    const a = gpu.empty([2, 4, 8], 'f32');
    expect(() => matmul(gpu, a, gpu.empty([2, 7, 3], 'f32'))).toThrow(/matmul: inner dims differ.*a \[2, 4, 8\].*b \[2, 7, 3\]/);
    expect(() => matmul(gpu, a, gpu.empty([3, 8, 3], 'f32'))).toThrow(/matmul: batch sizes differ/);
    expect(() => matmul(gpu, a, gpu.empty([8, 3], 'f16'))).toThrow(/matmul: a and b must be f32/);
    expect(() => matmul(gpu, gpu.empty([8], 'f32'), gpu.empty([8, 3], 'f32'))).toThrow(/matmul: a and b must be 2-D or 3-D/);
    expect(() => matmul(gpu, a, gpu.empty([8, 3], 'f32'), { out: gpu.empty([2, 4, 4], 'f32') })).toThrow(/matmul: out must be f32 \[2, 4, 3\]/);
    expect(() => matmul(gpu, a, gpu.empty([3, 8], 'f32'), { transB: true })).not.toThrow();
  });
});

// Devices without subgroups (or with fewer than 8 lanes per subgroup) run the same kernel with every lane
// loading its A values itself; lavapipe has subgroups, so force that path here.
describe(`without subgroup shuffles (seed ${runSeed})`, () => {
  const withoutSubgroups = async (fn: (gpu: Gpu) => Promise<void>) => {
    const gpu = await testGpu();
    matmulTesting.disableSubgroups = true;
    try {
      await fn(gpu);
    } finally {
      matmulTesting.disableSubgroups = false;
    }
  };
  for (const [M, K, N, dt] of [[37, 96, 70, 'f16'], [7, 13, 5, 'f32']] as const) {
    it(`linear ${dt} weights, x [${M}, ${K}] · w [${N}, ${K}]ᵀ + bias`, () =>
      withoutSubgroups(async (gpu) => {
        await checkLinear(gpu, { M, K, N, dtype: dt }, rng(runSeed + M * 3 + K), 'no-subgroup linear');
      }));
  }
  for (const [transA, transB] of [[false, false], [true, false], [true, true]] as const) {
    it(`matmul [2] 21×44·44×36${transA ? ' transA' : ''}${transB ? ' transB' : ''}`, () =>
      withoutSubgroups(async (gpu) => {
        await checkBatchedMatmul(gpu, { batch: 2, M: 21, K: 44, N: 36, transA, transB }, rng(runSeed + (transA ? 1 : 0) + (transB ? 2 : 0)), 'no-subgroup matmul');
      }));
  }
});
