// The GEMM kernels GPUs run: the workgroup-memory tiled one (kernels/gemm_tiled.ts) and the K-split skinny one
// for few rows (kernels/gemm_skinny.ts). lavapipe picks the register kernel by itself, so these tests force each
// kernel through `matmulTesting.kernel`, and check that a device tuned for GPUs picks them on its own. Shapes
// cross every tile edge (64, 128; 8 rows and columns for the skinny kernel), use the scalar path (K or M not a
// multiple of 4, unaligned views) and the vector path, and size 1.
// Tolerances as in matmul.test.ts: the tiled kernel also sums the K products one at a time in f32; the skinny
// kernel sums 32 strided partial sums in a tree, whose error is below that bound.

import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { Gpu } from '../../engine/device.js';
import { roundThrough } from '../../engine/dtype.js';
import { SKINNY_MAX_ROWS } from '../../kernels/gemm_skinny.js';
import { GEMM_TILES, pickGemmTile } from '../../kernels/gemm_tiled.js';
import { linear, linearRef, matmul, matmulRef, matmulTesting } from '../../kernels/matmul.js';
import { expectClose, poisoned, randomArray, releaseTestGpu, rng, runSeed, testGpu, withGpuTuning } from '../helpers.js';
import { checkBatchedMatmul, checkLinear, dotTol, uploadAs } from './matmul_helpers.js';

afterAll(releaseTestGpu);
afterEach(() => {
  matmulTesting.kernel = 'auto';
});

const WIDE = { wMax: 0.5, biasMax: 2 };

for (const tile of ['small', 'big'] as const) {
  describe(`tiled GEMM, ${tile} tile (seed ${runSeed})`, () => {
    const { bm, bn } = GEMM_TILES[tile];
    // [M, K, N]: size 1; odd (scalar loads); one past a tile in M and N with K % 4 == 0 (vector loads, K not a
    // multiple of the k step); a skinny early-scale row count with a long K.
    const shapes: [number, number, number][] = [
      [1, 1, 1],
      [7, 13, 5],
      [bm + 1, 36, bn + 3],
      [3, 1028, 2 * bn + 1],
    ];
    for (const dt of ['f32', 'f16', 'bf16'] as const) {
      for (const [M, K, N] of shapes) {
        it(`linear ${dt} weights, x [${M}, ${K}] · w [${N}, ${K}]ᵀ + bias`, async () => {
          const gpu = await testGpu();
          matmulTesting.kernel = tile;
          await checkLinear(gpu, { M, K, N, dtype: dt }, rng(runSeed + M * 7919 + K * 31 + N + dt.length), `tiled ${tile} linear ${dt}`, WIDE);
          expect(gpu.compiledKernels.some((n) => n.endsWith(`_tiled${bm}`))).toBe(true);
        });
      }
    }

    it('f16 activations in, f16 out, fused gelu', async () => {
      const gpu = await testGpu();
      if (!gpu.hasF16) throw new Error('this test needs shader-f16 (lavapipe has it)');
      matmulTesting.kernel = tile;
      const rand = rng(runSeed + 16);
      const [M, K, N] = [bm + 5, 72, 45];
      const x = roundThrough('f16', randomArray(M * K, rand));
      const w = roundThrough('f16', randomArray(N * K, rand, -0.5, 0.5));
      const b = randomArray(N, rand);
      const want = linearRef(x, w, b, M, N, K, 'gelu_tanh');
      const y16 = poisoned(gpu, [M, N], 'f16');
      linear(gpu, uploadAs(gpu, x, [M, K], 'f16'), uploadAs(gpu, w, [N, K], 'f16'), gpu.upload(b, [N], 'f32'), { activation: 'gelu_tanh', out: y16 });
      // Rounding the output to f16 adds ≤ 2⁻¹¹ relative (see matmul.test.ts).
      expectClose(await y16.read(), want, { what: 'f16 in/out', rtol: 1e-3, atol: dotTol(K, 1, 0.5).atol + 1e-7 });
    });

    // matmul's layouts: A·B runs swapped (B transposed as the left operand, C stored transposed), transA reads
    // A along m, B [K, N] is loaded along n. 20 × 64 · 64 × 72 takes the vector path, 21 × 44 · 44 × 37 the scalar one.
    for (const [M, K, N] of [[20, 64, 72], [21, 44, 37]] as const) {
      for (const [transA, transB] of [[false, false], [true, false], [false, true], [true, true]] as const) {
        it(`matmul [2] ${M}×${K}·${K}×${N}${transA ? ' transA' : ''}${transB ? ' transB' : ''}`, async () => {
          const gpu = await testGpu();
          matmulTesting.kernel = tile;
          await checkBatchedMatmul(gpu, { batch: 2, M, K, N, transA, transB }, rng(runSeed + M + (transA ? 1 : 0) + (transB ? 2 : 0)), `tiled ${tile} matmul`);
        });
      }
    }

    it('views starting mid-binding, and rows split across bindings', async () => {
      const gpu = await testGpu();
      matmulTesting.kernel = tile;
      const rand = rng(runSeed + 5);
      const [M, K, N] = [203, 40, 24];
      const xs = randomArray((M + 1) * K, rand);
      const ws = roundThrough('bf16', randomArray(N * K, rand));
      const bs = randomArray(N, rand);
      const outBig = poisoned(gpu, [M + 1, N]);
      // x and out start one row in (160 B and 96 B: off the 16-byte vector grid for out), and 2 KiB bindings cut
      // the rows into dispatches of 8.
      const before = gpu.dispatchCount;
      const x = gpu.upload(xs, [M + 1, K], 'f32').rows(1, M);
      linear(gpu, x, uploadAs(gpu, ws, [N, K], 'bf16'), gpu.upload(bs, [N], 'f32'), { out: outBig.rows(1, M), maxBindingBytes: 2048, activation: 'silu' });
      expect(gpu.dispatchCount - before).toBeGreaterThan(10);
      const got = (await outBig.read()).subarray(N);
      expectClose(got, linearRef(xs.subarray(K), ws, bs, M, N, K, 'silu'), { what: 'tiled views + split', ...dotTol(K, 1, 1) });
    });
  });
}

describe(`skinny GEMM (seed ${runSeed})`, () => {
  // [M, K, N]: size 1; odd K (scalar loads); a row group and a column group plus one (9 × … × 9); 2 rows against a
  // long K on the vector path; the largest M the launcher gives it, and more (forced: 9 row groups).
  const shapes: [number, number, number][] = [
    [1, 1, 1],
    [3, 13, 9],
    [9, 36, 17],
    [2, 2052, 300],
    [SKINNY_MAX_ROWS, 100, 40],
    [70, 44, 11],
  ];
  for (const dt of ['f32', 'f16', 'bf16'] as const) {
    for (const [M, K, N] of shapes) {
      if (dt !== 'f16' && M >= SKINNY_MAX_ROWS) continue;
      it(`linear ${dt} weights, x [${M}, ${K}] · w [${N}, ${K}]ᵀ + bias`, async () => {
        const gpu = await testGpu();
        matmulTesting.kernel = 'skinny';
        await checkLinear(gpu, { M, K, N, dtype: dt }, rng(runSeed + M * 7919 + K * 31 + N + dt.length + 5), `skinny linear ${dt}`, WIDE);
        expect(gpu.compiledKernels).toContain(`linear_${dt}w_skinny`);
      });
    }
  }

  it('f16 activations in, f16 out, fused silu; views starting mid-binding', async () => {
    const gpu = await testGpu();
    if (!gpu.hasF16) throw new Error('this test needs shader-f16 (lavapipe has it)');
    matmulTesting.kernel = 'skinny';
    const rand = rng(runSeed + 17);
    const [M, K, N] = [5, 72, 45];
    const x = roundThrough('f16', randomArray(M * K, rand));
    const w = roundThrough('f16', randomArray(N * K, rand, -0.5, 0.5));
    const b = randomArray(N, rand);
    const want = linearRef(x, w, b, M, N, K, 'silu');
    const y16 = poisoned(gpu, [M, N], 'f16');
    linear(gpu, uploadAs(gpu, x, [M, K], 'f16'), uploadAs(gpu, w, [N, K], 'f16'), gpu.upload(b, [N], 'f32'), { activation: 'silu', out: y16 });
    expectClose(await y16.read(), want, { what: 'skinny f16 in/out', rtol: 1e-3, atol: dotTol(K, 1, 0.5).atol + 1e-7 });
    // x one row in (K = 7: off the vector grid), out one row in.
    const K7 = 7;
    const xs = randomArray((M + 1) * K7, rand);
    const ws = randomArray(N * K7, rand);
    const outBig = poisoned(gpu, [M + 1, N]);
    linear(gpu, gpu.upload(xs, [M + 1, K7], 'f32').rows(1, M), gpu.upload(ws, [N, K7], 'f32'), null, { out: outBig.rows(1, M) });
    expectClose((await outBig.read()).subarray(N), linearRef(xs.subarray(K7), ws, null, M, N, K7), { what: 'skinny views', ...dotTol(K7, 1, 1) });
  });

  it('batched a · bᵀ (transB) with a shared and a batched b', async () => {
    const gpu = await testGpu();
    matmulTesting.kernel = 'skinny';
    const rand = rng(runSeed + 23);
    const [batch, M, K, N] = [3, 4, 40, 21];
    const a = randomArray(batch * M * K, rand);
    for (const bBatched of [true, false]) {
      const b = randomArray((bBatched ? batch : 1) * N * K, rand);
      const out = poisoned(gpu, [batch, M, N]);
      matmul(gpu, gpu.upload(a, [batch, M, K], 'f32'), gpu.upload(b, bBatched ? [batch, N, K] : [N, K], 'f32'), { transB: true, out });
      const want = matmulRef(a, b, { batch, M, N, K, transB: true, aBatched: true, bBatched });
      expectClose(await out.read(), want, { what: `skinny matmul, b ${bBatched ? 'batched' : 'shared'}`, ...dotTol(K, 1, 1) });
    }
    expect(gpu.compiledKernels).toContain('matmul_nt_skinny');
  });
});

describe('GPU GEMM selection', () => {
  it('big tiles only when they still fill the GPU', () => {
    expect(pickGemmTile(8192, 2048, 1).name).toBe('big');
    expect(pickGemmTile(512, 2048, 1).name).toBe('small'); // 4 × 16 = 64 big workgroups
    expect(pickGemmTile(2, 6144, 1).name).toBe('small');
    expect(pickGemmTile(512, 2048, 4).name).toBe('big');
  });

  it("a device tuned for GPUs runs the skinny and tiled kernels unasked; lavapipe's own tuning is 'cpu'", async () => {
    const gpu = await testGpu();
    expect(gpu.adapter.software).toBe(true);
    expect(gpu.tuning).toBe(process.env.STAGEVAR_KERNELS || 'cpu'); // 'cpu' unless overridden
    await withGpuTuning(async (tuned) => {
      expect(tuned.tuning).toBe('gpu');
      const rand = rng(runSeed + 8);
      for (const [M, K, N, kernel] of [[2, 20, 11, 'linear_f32w_skinny'], [SKINNY_MAX_ROWS + 1, 20, 11, 'linear_f32w_tiled64']] as const) {
        const x = randomArray(M * K, rand);
        const w = randomArray(N * K, rand);
        const out = poisoned(tuned, [M, N]);
        linear(tuned, tuned.upload(x, [M, K], 'f32'), tuned.upload(w, [N, K], 'f32'), null, { out });
        expectClose(await out.read(), linearRef(x, w, null, M, N, K), { what: `gpu-tuned linear M ${M}`, ...dotTol(K, 1, 1) });
        expect(tuned.compiledKernels).toContain(kernel);
      }
    });
    await expect(Gpu.create({ tuning: 'fast' as never })).rejects.toThrow(/kernel tuning "fast".*one of: cpu, gpu/);
  });

  it('outputs too wide for the skinny grid (N/8 > 65535 workgroups) take the tiled kernel', async () => {
    await withGpuTuning(async (tuned) => {
      const rand = rng(runSeed + 9);
      const [M, K, N] = [2, 1, 524_281];
      const x = randomArray(M * K, rand);
      const w = randomArray(N * K, rand);
      const y = linear(tuned, tuned.upload(x, [M, K], 'f32'), tuned.upload(w, [N, K], 'f32'), null);
      expectClose(await y.read(), linearRef(x, w, null, M, N, K), { what: 'wide linear', ...dotTol(K, 1, 1) });
      expect(tuned.compiledKernels).toEqual([expect.stringMatching(/^linear_f32w_tiled(64|128)$/)]);
    });
  });
});
