import { afterAll, afterEach, describe, expect, it } from 'vitest';
import type { Gpu } from '../../engine/device.js';
import { ShapeError } from '../../engine/errors.js';
import {
  adaLayerNorm,
  adaLayerNormRef,
  gatedResidual,
  gatedResidualRef,
  groupNorm,
  groupNormRef,
  l2NormalizeHeads,
  l2NormalizeHeadsRef,
  layerNorm,
  layerNormRef,
  normsTesting,
  type ReduceOp,
  rmsNorm,
  rmsNormRef,
  rowReduce,
  rowReduceRef,
} from '../../kernels/norms.js';
import { f32ToF16Array, roundThrough } from '../../engine/dtype.js';
import { expectClose, poisoned, randn, randomArray, releaseTestGpu, rng, runSeed, testGpu } from '../helpers.js';

afterAll(releaseTestGpu);
afterEach(() => {
  normsTesting.bindingLimit = 0;
});

// Tolerances. Every normalised output is O(1) (|x̂| ≲ 5, times weights ≲ 2). On the GPU each statistic is a
// Welford/Chan reduction in f32 of the data minus one of its own values, so mean and variance carry a relative
// error of a few ulps × log2(n) (≲ 1e-6), and x − shift is exact or one rounding. So 1e-5 relative with a 1e-5
// absolute floor (outputs near zero, where x − mean is a difference of O(1) f32 values) bounds f32 rounding
// with > 10× margin. The same bound holds for the 1000 ± 1 inputs: with E[x²] − E[x]² (or even a plain
// unshifted running mean, which rounds by ulp(1000)/2 = 3e-5 per update) they would be off by 1e-4 … 1.
const F32 = { rtol: 1e-5, atol: 1e-5 };

type Fill = 'normal' | 'offset';
/** Test data: normal(0.3, 2) (never zero-mean or all zero), or 1000 ± 1 (large mean, small spread). */
function data(n: number, rand: () => number, fill: Fill = 'normal'): Float32Array {
  if (fill === 'offset') return randomArray(n, rand, 999, 1001);
  const v = randn(n, rand, 2);
  for (let i = 0; i < n; i++) v[i] += 0.3;
  return v;
}

const numel = (s: readonly number[]) => s.reduce((a, b) => a * b, 1);

describe(`norms (seed ${runSeed})`, () => {
  // Awkward widths: 1, below/around both workgroup widths (64, 256), many short rows, long rows.
  const rowShapes: number[][] = [
    [1, 1],
    [3, 7],
    [5, 63],
    [2, 257],
    [1000, 33],
    [4, 2048],
    [3, 8191],
    [2, 3, 5, 40],
  ];

  describe('layerNorm', () => {
    for (const shape of rowShapes) {
      for (const affine of ['none', 'weight', 'weight+bias'] as const) {
        it(`${JSON.stringify(shape)} ${affine}`, async () => {
          const gpu = await testGpu();
          const rand = rng(runSeed + numel(shape) + affine.length);
          const C = shape[shape.length - 1];
          const x = data(numel(shape), rand);
          const w = affine !== 'none' ? randomArray(C, rand, 0.5, 2) : null;
          const b = affine === 'weight+bias' ? randomArray(C, rand, -1, 1) : null;
          const out = poisoned(gpu, shape);
          layerNorm(gpu, gpu.upload(x, shape, 'f32'), {
            weight: w && gpu.upload(w, [C], 'f32'),
            bias: b && gpu.upload(b, [C], 'f32'),
            eps: 1e-6,
            out,
          });
          expectClose(await out.read(), layerNormRef(x, C, w, b, 1e-6), { ...F32, what: 'layerNorm' });
        });
      }
    }

    it.each([[8, 8192], [300, 37], [2, 1]])('large mean offset (1000 ± 1) %i×%i', async (R, C) => {
      const gpu = await testGpu();
      const x = data(R * C, rng(runSeed + R), 'offset');
      const y = layerNorm(gpu, gpu.upload(x, [R, C], 'f32'), { eps: 1e-6, out: poisoned(gpu, [R, C]) });
      expectClose(await y.read(), layerNormRef(x, C, null, null, 1e-6), { ...F32, what: 'layerNorm offset' });
    });

    it('in place (out = x), default eps 1e-5', async () => {
      const gpu = await testGpu();
      const rand = rng(runSeed + 11);
      const x = data(9 * 300, rand);
      const w = randomArray(300, rand, 0.5, 2);
      const xt = gpu.upload(x, [9, 300], 'f32');
      const y = layerNorm(gpu, xt, { weight: gpu.upload(w, [300], 'f32'), out: xt });
      expect(y).toBe(xt);
      expectClose(await xt.read(), layerNormRef(x, 300, w, null, 1e-5), { ...F32, what: 'layerNorm in place' });
    });

    it('row views at unaligned offsets for x, weight and bias', async () => {
      const gpu = await testGpu();
      const rand = rng(runSeed + 12);
      const C = 13; // 52-byte rows: row 1 starts 4 bytes past a 16-byte boundary
      const x = data(6 * C, rand);
      const table = randomArray(3 * C, rand, 0.5, 2);
      const tt = gpu.upload(table, [3, C], 'f32');
      const out = poisoned(gpu, [4, C]);
      layerNorm(gpu, gpu.upload(x, [6, C], 'f32').rows(1, 4), { weight: tt.rows(1, 1).reshape([C]), bias: tt.rows(2, 1).reshape([C]), eps: 1e-6, out });
      expectClose(await out.read(), layerNormRef(x.subarray(C, 5 * C), C, table.subarray(C, 2 * C), table.subarray(2 * C), 1e-6), { ...F32, what: 'views' });
    });

    it('splits tensors larger than one binding (forced 1 KiB limit)', async () => {
      const gpu = await testGpu();
      normsTesting.bindingLimit = 1024; // 252 floats: 5 rows of 45 per dispatch
      const x = data(97 * 45, rng(runSeed + 13));
      const out = poisoned(gpu, [97, 45]);
      layerNorm(gpu, gpu.upload(x, [97, 45], 'f32'), { eps: 1e-6, out });
      expectClose(await out.read(), layerNormRef(x, 45, null, null, 1e-6), { ...F32, what: 'split' });
    });
  });

  describe('rmsNorm', () => {
    for (const shape of rowShapes) {
      for (const weighted of [false, true]) {
        it(`${JSON.stringify(shape)} weight=${weighted}`, async () => {
          const gpu = await testGpu();
          const rand = rng(runSeed + numel(shape) + +weighted);
          const C = shape[shape.length - 1];
          const x = data(numel(shape), rand);
          const w = weighted ? randomArray(C, rand, -2, 2) : null;
          const out = poisoned(gpu, shape);
          rmsNorm(gpu, gpu.upload(x, shape, 'f32'), { weight: w && gpu.upload(w, [C], 'f32'), out });
          // Σx² of positive terms: relative error ≲ (n/wg + log2 wg)·2^-24 ≤ 3e-6, so F32 holds.
          expectClose(await out.read(), rmsNormRef(x, C, w, 1e-6), { ...F32, what: 'rmsNorm' });
        });
      }
    }

    it('eps matters for small inputs (eps 0.01, |x| ≈ 0.05)', async () => {
      const gpu = await testGpu();
      const x = randomArray(7 * 100, rng(runSeed + 21), -0.1, 0.1);
      const y = rmsNorm(gpu, gpu.upload(x, [7, 100], 'f32'), { eps: 0.01, out: poisoned(gpu, [7, 100]) });
      expectClose(await y.read(), rmsNormRef(x, 100, null, 0.01), { ...F32, what: 'rmsNorm eps' });
    });

    it('offset inputs and a forced split', async () => {
      const gpu = await testGpu();
      normsTesting.bindingLimit = 4096;
      const x = data(50 * 77, rng(runSeed + 22), 'offset');
      const y = rmsNorm(gpu, gpu.upload(x, [50, 77], 'f32'), { out: poisoned(gpu, [50, 77]) });
      expectClose(await y.read(), rmsNormRef(x, 77, null, 1e-6), { ...F32, what: 'rmsNorm offset split' });
    });
  });

  describe('adaLayerNorm', () => {
    it.each([
      // R, C, G, rowsPerGroup (undefined: R / G)
      [1, 1, 1, undefined],
      [10, 257, 2, 5],
      [7, 64, 3, 3], // last group short: rows 6 → g 2
      [6, 2048, 2, undefined],
      [2, 8192, 1, undefined],
      [1000, 33, 4, 250],
    ] as [number, number, number, number | undefined][])('R=%i C=%i G=%i rowsPerGroup=%s', async (R, C, G, rpg) => {
      const gpu = await testGpu();
      const rand = rng(runSeed + R * C + G);
      const x = data(R * C, rand);
      const scale = randomArray(G * C, rand, -0.5, 0.5);
      const shift = randomArray(G * C, rand, -1, 1);
      const out = poisoned(gpu, [R, C]);
      adaLayerNorm(gpu, gpu.upload(x, [R, C], 'f32'), gpu.upload(scale, [G, C], 'f32'), gpu.upload(shift, [G, C], 'f32'), {
        rowsPerGroup: rpg,
        out,
      });
      expectClose(await out.read(), adaLayerNormRef(x, C, scale, shift, rpg ?? R / G, 1e-6), { ...F32, what: 'adaLN' });
    });

    it('scale/shift as unaligned row views of a per-layer table, offset inputs, split', async () => {
      const gpu = await testGpu();
      normsTesting.bindingLimit = 2048;
      const rand = rng(runSeed + 31);
      const R = 12;
      const C = 45;
      const G = 2;
      // A [6·G, C] table like Infinity's [γ1, γ2, s1, s2, b1, b2] blocks; s1 = rows [2G, 3G), b1 = [4G, 5G).
      const table = randomArray(6 * G * C, rand, -0.5, 0.5);
      const tt = gpu.upload(table, [6 * G, C], 'f32');
      const x = data(R * C, rand, 'offset');
      const out = poisoned(gpu, [R, C]);
      adaLayerNorm(gpu, gpu.upload(x, [R, C], 'f32'), tt.rows(2 * G, G), tt.rows(4 * G, G), { rowsPerGroup: R / G, eps: 1e-6, out });
      const want = adaLayerNormRef(x, C, table.subarray(2 * G * C, 3 * G * C), table.subarray(4 * G * C, 5 * G * C), R / G, 1e-6);
      expectClose(await out.read(), want, { ...F32, what: 'adaLN views' });
    });
  });

  describe('gatedResidual', () => {
    it.each([
      [1, 1, 1, true],
      [5, 255, 5, true],
      [1000, 33, 2, true],
      [3, 2049, 1, true],
      [4, 100, 1, false],
      [2, 3, 1, false],
    ] as [number, number, number, boolean][])('R=%i C=%i G=%i gated=%s', async (R, C, G, gated) => {
      const gpu = await testGpu();
      const rand = rng(runSeed + R + C + G);
      const x = data(R * C, rand);
      const y = data(R * C, rand);
      const gamma = gated ? randomArray(G * C, rand, -2, 2) : null;
      const xt = gpu.upload(x, [R, C], 'f32');
      const ret = gatedResidual(gpu, xt, gpu.upload(y, [R, C], 'f32'), gamma && gpu.upload(gamma, [G, C], 'f32'));
      expect(ret).toBe(xt);
      // One fused multiply-add per element: ≤ 2 roundings of O(10) values.
      expectClose(await xt.read(), gatedResidualRef(x, y, C, gamma, R / G), { rtol: 1e-6, atol: 1e-6, what: 'gatedResidual' });
    });

    it('gamma view, rowsPerGroup, forced split of x and y', async () => {
      const gpu = await testGpu();
      normsTesting.bindingLimit = 4096 + 16; // 1 block of 1024 elements per dispatch
      const rand = rng(runSeed + 41);
      const R = 37;
      const C = 111;
      const x = data(R * C, rand);
      const y = data(R * C, rand);
      const table = randomArray(5 * C, rand, -2, 2);
      const xt = gpu.upload(x, [R, C], 'f32');
      gatedResidual(gpu, xt, gpu.upload(y, [R, C], 'f32'), gpu.upload(table, [5, C], 'f32').rows(1, 4), { rowsPerGroup: 10 });
      expectClose(await xt.read(), gatedResidualRef(x, y, C, table.subarray(C), 10), { rtol: 1e-6, atol: 1e-6, what: 'gated split' });
    });
  });

  describe('l2NormalizeHeads', () => {
    it.each([
      // R, H, D, scaled
      [1, 1, 1, false],
      [3, 2, 3, true],
      [7, 16, 64, true],
      [5, 16, 128, false],
      [2, 3, 2048, true],
      [1000, 2, 33, true],
    ] as [number, number, number, boolean][])('R=%i H=%i D=%i scale=%s', async (R, H, D, scaled) => {
      const gpu = await testGpu();
      const rand = rng(runSeed + R * H + D);
      const x = data(R * H * D, rand);
      const scale = scaled ? randomArray(H, rand, 1, 100) : null;
      const out = poisoned(gpu, [R, H * D]);
      l2NormalizeHeads(gpu, gpu.upload(x, [R, H * D], 'f32'), { heads: H, scale: scale && gpu.upload(scale, [H], 'f32'), out });
      expectClose(await out.read(), l2NormalizeHeadsRef(x, H * D, H, scale), { ...F32, what: 'l2 heads' });
    });

    it('norms below 1e-12 are clamped like F.normalize; in place; forced split', async () => {
      const gpu = await testGpu();
      normsTesting.bindingLimit = 1024;
      const rand = rng(runSeed + 51);
      const R = 20;
      const H = 4;
      const D = 24;
      const x = data(R * H * D, rand);
      // Heads 1 of every row: |x| ≈ 1e-14 so ‖x‖ ≈ 5e-14 < 1e-12; the result is x / 1e-12 (still normal f32).
      for (let r = 0; r < R; r++) for (let d = 0; d < D; d++) x[r * H * D + D + d] *= 1e-14;
      const scale = randomArray(H, rand, 1, 4);
      const xt = gpu.upload(x, [R, H * D], 'f32');
      l2NormalizeHeads(gpu, xt, { heads: H, scale: gpu.upload(scale, [H], 'f32'), out: xt });
      expectClose(await xt.read(), l2NormalizeHeadsRef(x, H * D, H, scale), { ...F32, what: 'l2 tiny' });
    });
  });

  describe('groupNorm', () => {
    const cases: [number[], number, boolean, boolean][] = [
      // shape, groups, affine, swish
      [[1, 32, 7, 9], 32, true, true], // one channel per group
      [[2, 64, 33, 17], 32, true, false],
      [[1, 6, 5, 5], 3, false, false],
      [[2, 4, 1, 1], 2, true, true], // one element per channel
      [[1, 8, 100, 123], 4, true, true], // 24600 per group: several partial blocks
      [[3, 5, 77], 5, false, true], // rank 3
      [[1, 1, 3, 3], 1, true, false], // C = 1
    ];
    for (const [shape, G, affine, swish] of cases) {
      it(`${JSON.stringify(shape)} G=${G} affine=${affine} swish=${swish}`, async () => {
        const gpu = await testGpu();
        const rand = rng(runSeed + numel(shape) + G);
        const C = shape[1];
        const x = data(numel(shape), rand);
        const w = affine ? randomArray(C, rand, 0.5, 2) : null;
        const b = affine ? randomArray(C, rand, -1, 1) : null;
        const out = poisoned(gpu, shape);
        groupNorm(gpu, gpu.upload(x, shape, 'f32'), { groups: G, weight: w && gpu.upload(w, [C], 'f32'), bias: b && gpu.upload(b, [C], 'f32'), eps: 1e-6, swish, out });
        // swish adds one exp and one division (≤ 3 ulps relative) on top of the F32 bound.
        expectClose(await out.read(), groupNormRef(x, shape, G, w, b, 1e-6, swish), { ...F32, what: 'groupNorm' });
      });
    }

    it('large mean offset (1000 ± 1) over 4·64² elements per group, in place, default eps', async () => {
      const gpu = await testGpu();
      const rand = rng(runSeed + 61);
      const shape = [1, 16, 64, 64];
      const x = data(numel(shape), rand, 'offset');
      const w = randomArray(16, rand, 0.5, 2);
      const xt = gpu.upload(x, shape, 'f32');
      groupNorm(gpu, xt, { groups: 4, weight: gpu.upload(w, [16], 'f32'), out: xt });
      expectClose(await xt.read(), groupNormRef(x, shape, 4, w, null, 1e-5, false), { ...F32, what: 'groupNorm offset' });
    });

    it('forced split: blocks of one group spread over many dispatches; unaligned weight views', async () => {
      const gpu = await testGpu();
      normsTesting.bindingLimit = 20_000; // one 4096-element statistics block, four 1024-element apply blocks
      const rand = rng(runSeed + 62);
      const shape = [2, 6, 61, 67];
      const x = data(numel(shape), rand, 'offset');
      const table = randomArray(13, rand, 0.5, 2);
      const tt = gpu.upload(table, [13], 'f32');
      const out = poisoned(gpu, shape);
      groupNorm(gpu, gpu.upload(x, shape, 'f32'), { groups: 2, weight: tt.rows(1, 6), bias: tt.rows(7, 6), eps: 1e-6, swish: true, out });
      const want = groupNormRef(x, shape, 2, table.subarray(1, 7), table.subarray(7, 13), 1e-6, true);
      expectClose(await out.read(), want, { ...F32, what: 'groupNorm split' });
    });

    it('x larger than a real 128 MiB binding (34M elements), in place', async () => {
      const gpu = await testGpu();
      const shape = [1, 32, 1024, 1040]; // 136 MB of f32; 1M elements per group (one channel each)
      const n = numel(shape);
      const m = n / 32;
      if (n * 4 <= gpu.limits.maxStorageBufferBindingSize) throw new Error('test shape no longer exceeds the binding limit');
      // Host time dominates here (page faults on 100s of MB), so: a random pool of a prime length tiled with a
      // drift (no two groups alike, no period that divides a group), no swish (exp per element), and the
      // reference built one group at a time.
      const rand = rng(runSeed + 63);
      const pool = randomArray(1_000_003, rand, -3, 4);
      const x = new Float32Array(n);
      for (let i = 0, j = 0; i < n; i++, j = j + 1 === pool.length ? 0 : j + 1) x[i] = pool[j] + (i >>> 20) * 0.25;
      const w = randomArray(32, rand, 0.5, 2);
      const b = randomArray(32, rand, -1, 1);
      const xt = gpu.upload(x, shape, 'f32');
      groupNorm(gpu, xt, { groups: 32, weight: gpu.upload(w, [32], 'f32'), bias: gpu.upload(b, [32], 'f32'), eps: 1e-6, out: xt });
      const got = await xt.read();
      xt.dispose();
      for (let g = 0; g < 32; g++) {
        const want = groupNormRef(x.subarray(g * m, (g + 1) * m), [1, 1, m], 1, w.subarray(g, g + 1), b.subarray(g, g + 1), 1e-6);
        expectClose(got.subarray(g * m, (g + 1) * m), want, { ...F32, what: `groupNorm > binding, group ${g}` });
      }
    });
  });

  describe('rowReduce', () => {
    const ops: ReduceOp[] = ['sum', 'max', 'sumsq'];
    const shapes = [[1, 1], [3, 257], [1000, 5], [2, 8192], [1, 100_003], [2, 3, 64]];
    for (const op of ops) {
      for (const shape of shapes) {
        for (const fill of ['normal', 'offset'] as Fill[]) {
          it(`${op} ${JSON.stringify(shape)} ${fill}`, async () => {
            const gpu = await testGpu();
            const C = shape[shape.length - 1];
            const R = numel(shape) / C;
            const x = data(numel(shape), rng(runSeed + numel(shape) + op.length), fill);
            if (op === 'max' && fill === 'normal') for (let i = 0; i < x.length; i++) x[i] = -Math.abs(x[i]) - 1; // all negative: no 0 init
            const out = poisoned(gpu, [R]);
            rowReduce(gpu, gpu.upload(x, shape, 'f32'), op, { out });
            const got = await out.read();
            const want = rowReduceRef(x, C, op);
            if (op === 'max') {
              expectClose(got, want, { rtol: 0, atol: 0, what: 'max is exact' });
              return;
            }
            // A sum of C terms: ≤ ceil(C / wg) sequential additions per thread, then log2(wg) tree levels, so
            // |err| ≤ (C/64 + 8)·2^-24·Σ|term| (first order). Compare values scaled by Σ|term| per row.
            const l1 = new Float64Array(R);
            for (let i = 0; i < x.length; i++) l1[Math.floor(i / C)] += op === 'sum' ? Math.abs(x[i]) : x[i] * x[i];
            const bound = (Math.ceil(C / 64) + 8) * 2 ** -24;
            expectClose(
              Array.from(got, (v, r) => v / l1[r]),
              Array.from(want, (v, r) => v / l1[r]),
              { rtol: 0, atol: bound, what: `${op} / Σ|term|` },
            );
          });
        }
      }
    }

    it('forced split over rows', async () => {
      const gpu = await testGpu();
      normsTesting.bindingLimit = 1024;
      const x = data(333 * 17, rng(runSeed + 71));
      const out = poisoned(gpu, [333]);
      rowReduce(gpu, gpu.upload(x, [333, 17], 'f32'), 'max', { out });
      expectClose(await out.read(), rowReduceRef(x, 17, 'max'), { rtol: 0, atol: 0, what: 'max split' });
    });
  });

  // f16 activations (the f16 path of Infinity): layerNorm / adaLayerNorm read f32 and write f16, and also
  // read f16; l2NormalizeHeads works in place on f16. References run in float64 on exactly the values the
  // GPU reads (f16 inputs rounded on the host first). Tolerance: the f32 statistics keep the F32 bound
  // (≤ 1e-5 relative + 1e-5 absolute, see above); rounding the output to f16 adds ≤ 2⁻¹¹ = 4.9e-4 relative,
  // so rtol 1e-3 (2× room) and atol 1e-5 + 6e-8 (half of f16's subnormal step 2⁻²⁴ for outputs near 0).
  // A kernel that kept f32 or dropped the shift would still pass these; one that misread the packed halves
  // (wrong offset, wrong half) is off by O(1).
  describe('f16 activations (shader-f16)', () => {
    const F16 = { rtol: 1e-3, atol: 1e-5 + 6e-8 };
    const f16 = (gpu: Gpu, v: Float32Array, shape: number[]) => gpu.upload(f32ToF16Array(v), shape, 'f16');

    it('without shader-f16 the f16 forms throw a ShapeError naming the feature', async () => {
      const gpu = await testGpu();
      if (gpu.hasF16) return; // covered by test/model/infinity_f16.test.ts on a device created without the feature
      const x = gpu.upload(data(8, rng(runSeed)), [2, 4], 'f32');
      expect(() => layerNorm(gpu, x, { outDtype: 'f16' })).toThrow(/layer_norm: .*shader-f16/);
    });

    for (const shape of [[1, 1], [3, 7], [2, 257], [5, 2048], [1000, 33]]) {
      it(`layerNorm ${JSON.stringify(shape)} f32 → f16 (weight+bias) and f16 → f16`, async () => {
        const gpu = await testGpu();
        if (!gpu.hasF16) return;
        const rand = rng(runSeed + numel(shape) + 91);
        const C = shape[1];
        const x = data(numel(shape), rand);
        const w = randomArray(C, rand, 0.5, 2);
        const b = randomArray(C, rand, -1, 1);
        const out = poisoned(gpu, shape, 'f16');
        layerNorm(gpu, gpu.upload(x, shape, 'f32'), { weight: gpu.upload(w, [C], 'f32'), bias: gpu.upload(b, [C], 'f32'), eps: 1e-6, outDtype: 'f16', out });
        expectClose(await out.read(), layerNormRef(x, C, w, b, 1e-6), { ...F16, what: 'layerNorm f32 → f16' });
        const xh = roundThrough('f16', x);
        const y = layerNorm(gpu, f16(gpu, xh, shape), { eps: 1e-6 });
        expect(y.dtype).toBe('f16'); // the output defaults to x's dtype
        expectClose(await y.read(), layerNormRef(xh, C, null, null, 1e-6), { ...F16, what: 'layerNorm f16 → f16' });
      });
    }

    it.each([
      [1, 1, 1, undefined],
      [10, 257, 2, 5],
      [7, 64, 3, 3],
      [6, 2048, 2, undefined],
      [1000, 33, 4, 250],
    ] as [number, number, number, number | undefined][])('adaLayerNorm R=%i C=%i G=%i rowsPerGroup=%s, f32 → f16', async (R, C, G, rpg) => {
      const gpu = await testGpu();
      if (!gpu.hasF16) return;
      const rand = rng(runSeed + R * C + G + 92);
      const x = data(R * C, rand);
      const scale = randomArray(G * C, rand, -0.5, 0.5);
      const shift = randomArray(G * C, rand, -1, 1);
      const out = poisoned(gpu, [R, C], 'f16');
      adaLayerNorm(gpu, gpu.upload(x, [R, C], 'f32'), gpu.upload(scale, [G, C], 'f32'), gpu.upload(shift, [G, C], 'f32'), { rowsPerGroup: rpg, out });
      expectClose(await out.read(), adaLayerNormRef(x, C, scale, shift, rpg ?? R / G, 1e-6), { ...F16, what: 'adaLN f32 → f16' });
    });

    it('adaLayerNorm: f16 output into an unaligned row view (odd half offset), offset inputs, forced split', async () => {
      const gpu = await testGpu();
      if (!gpu.hasF16) return;
      normsTesting.bindingLimit = 2048;
      const rand = rng(runSeed + 93);
      const [R, C, G] = [12, 45, 2];
      const x = data(R * C, rand, 'offset');
      const scale = randomArray(G * C, rand, -0.5, 0.5);
      const shift = randomArray(G * C, rand, -1, 1);
      // Rows 1..R of an f16 [R + 2, 45] tensor: the view starts 90 bytes in (mid-word, not 16-byte aligned).
      const big = poisoned(gpu, [R + 2, C], 'f16');
      adaLayerNorm(gpu, gpu.upload(x, [R, C], 'f32'), gpu.upload(scale, [G, C], 'f32'), gpu.upload(shift, [G, C], 'f32'), { rowsPerGroup: R / G, out: big.rows(1, R) });
      const got = await big.read();
      expectClose(got.subarray(C, (R + 1) * C), adaLayerNormRef(x, C, scale, shift, R / G, 1e-6), { ...F16, what: 'adaLN view' });
      // The rows around the view stay poisoned: nothing was written outside it.
      expect([...got.subarray(0, C), ...got.subarray((R + 1) * C)].every(Number.isNaN)).toBe(true);
    });

    it.each([
      // R, H, D, scaled
      [1, 1, 1, false],
      [3, 2, 3, true],
      [7, 16, 64, true],
      [5, 2, 128, false],
      [1000, 2, 33, true],
    ] as [number, number, number, boolean][])('l2NormalizeHeads R=%i H=%i D=%i scale=%s, f16 in place', async (R, H, D, scaled) => {
      const gpu = await testGpu();
      if (!gpu.hasF16) return;
      const rand = rng(runSeed + R * H + D + 94);
      const x = roundThrough('f16', data(R * H * D, rand));
      // Scales up to 100 (Infinity's cosine-attention q): outputs up to 100, still 2⁻¹¹ relative in f16.
      const scale = scaled ? randomArray(H, rand, 1, 100) : null;
      const xt = f16(gpu, x, [R, H * D]);
      const y = l2NormalizeHeads(gpu, xt, { heads: H, scale: scale && gpu.upload(scale, [H], 'f32'), out: xt });
      expect(y).toBe(xt);
      expectClose(await xt.read(), l2NormalizeHeadsRef(x, H * D, H, scale), { ...F16, what: 'l2 heads f16' });
    });

    it('rejects f16 in place into f32, and outDtype that contradicts out', async () => {
      const gpu = await testGpu();
      if (!gpu.hasF16) return;
      const x = gpu.upload(data(16, rng(runSeed + 95)), [2, 8], 'f32');
      expect(() => layerNorm(gpu, x, { out: gpu.empty([2, 8], 'f16'), outDtype: 'f32' })).toThrow(/layer_norm: out .* must be f32 \(outDtype\)/);
      expect(() => l2NormalizeHeads(gpu, x, { heads: 2, out: x, outDtype: 'f16' })).toThrow(/l2_normalize_heads: out .* must be f16/);
      expect(() => adaLayerNorm(gpu, gpu.empty([2, 8], 'bf16'), gpu.empty([8], 'f32'), gpu.empty([8], 'f32'))).toThrow(/ada_layer_norm: x .* must be f32 or f16/);
    });
  });

  it('pipelines are per variant, not per shape', async () => {
    const gpu = await testGpu();
    const rand = rng(runSeed + 81);
    const run = (R: number, C: number) => {
      const x = gpu.upload(data(R * C, rand), [R, C], 'f32');
      layerNorm(gpu, x).dispose();
      groupNorm(gpu, x.reshape([1, R, C]), { groups: R }).dispose();
    };
    run(4, 100);
    await gpu.sync();
    const before = gpu.stats().pipelines;
    run(8, 300); // same workgroup widths (C < 2048), other shapes
    run(2, 1000);
    await gpu.sync();
    expect(gpu.stats().pipelines).toBe(before);
  });

  it('launchers reject bad inputs with ShapeError naming kernel and shapes', async () => {
    const gpu = await testGpu();
    const t = (shape: number[], dtype: 'f32' | 'i32' = 'f32') =>
      dtype === 'f32' ? gpu.upload(randomArray(numel(shape), rng(runSeed)), shape, 'f32') : gpu.upload(new Int32Array(numel(shape)).fill(1), shape, 'i32');
    const x = t([4, 8]);
    const x5 = t([5, 8]);
    const cases: [() => unknown, RegExp][] = [
      [() => layerNorm(gpu, t([4, 8], 'i32')), /^layer_norm: .*i32/],
      [() => layerNorm(gpu, x, { weight: t([7]) }), /^layer_norm: weight \[7\] must be \[8\].*\[4, 8\]/],
      [() => layerNorm(gpu, x, { eps: -1 }), /^layer_norm: eps/],
      [() => layerNorm(gpu, x, { out: t([3, 8]) }), /^layer_norm: out \[3, 8\] vs x \[4, 8\]/],
      [() => layerNorm(gpu, x5.rows(0, 4), { out: x5.rows(1, 4) }), /^layer_norm: .*overlaps/],
      [() => rmsNorm(gpu, x, { weight: t([8, 1]) }), /^rms_norm: weight \[8, 1\]/],
      [() => adaLayerNorm(gpu, x, t([2, 8]), t([3, 8])), /^ada_layer_norm: scale \[2, 8\] and shift \[3, 8\] differ/],
      [() => adaLayerNorm(gpu, x, t([2, 9]), t([2, 9])), /^ada_layer_norm: scale \[2, 9\] must be \[G, 8\].*\[4, 8\]/],
      [() => adaLayerNorm(gpu, x, t([3, 8]), t([3, 8])), /^ada_layer_norm: .*4 rows, not a multiple of G = 3/],
      [() => adaLayerNorm(gpu, x, t([2, 8]), t([2, 8]), { rowsPerGroup: 1 }), /^ada_layer_norm: .*need 4 groups, table has G = 2/],
      [() => gatedResidual(gpu, x, t([4, 7]), null), /^residual_add: y \[4, 7\] must match x \[4, 8\]/],
      [() => gatedResidual(gpu, x, t([4, 8]), t([3])), /^gated_residual: gamma \[3\]/],
      [() => gatedResidual(gpu, x, x, null), /^residual_add: .*overlaps/],
      [() => l2NormalizeHeads(gpu, x, { heads: 3 }), /^l2_normalize_heads: heads = 3 must divide .*\[4, 8\]/],
      [() => l2NormalizeHeads(gpu, x, { heads: 2, scale: t([4]) }), /^l2_normalize_heads: scale \[4\] must be \[2\]/],
      [() => groupNorm(gpu, t([8])), /^group_norm: x \[8\] must be \[N, C, \.\.\.\]/],
      [() => groupNorm(gpu, t([1, 6, 2, 2]), { groups: 4 }), /^group_norm: groups = 4 must divide C = 6 .*\[1, 6, 2, 2\]/],
      [() => groupNorm(gpu, t([1, 6, 2, 2]), { groups: 3, bias: t([3]), swish: true }), /^group_norm_swish: bias \[3\] must be \[6\]/],
      [() => rowReduce(gpu, t([4, 8], 'i32'), 'sum'), /^row_reduce_sum: .*i32/],
      [() => rowReduce(gpu, x, 'max', { out: t([5]) }), /^row_reduce_max: out \[5\] needs 4 elements.*\[4, 8\]/],
      [() => rowReduce(gpu, x, 'mean' as ReduceOp), /^row_reduce: unknown op "mean"/],
    ];
    for (const [fn, re] of cases) {
      let err: unknown;
      try {
        fn();
      } catch (e) {
        err = e;
      }
      expect(err, String(re)).toBeInstanceOf(ShapeError);
      expect((err as Error).message).toMatch(re);
    }
    await gpu.sync();
  });
});
