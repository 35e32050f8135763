import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Gpu } from '../../engine/device.js';
import { type DType, f32ToBf16Array, f32ToF16Array, bf16ArrayToF32, f16ArrayToF32 } from '../../engine/dtype.js';
import { ShapeError } from '../../engine/errors.js';
import type { HostArray } from '../../engine/tensor.js';
import {
  copyColumns,
  copyColumnsRef,
  copyRows,
  copyRowsRef,
  gatherRows,
  gatherRowsRef,
  scatterRows,
  scatterRowsRef,
  transpose2d,
  transpose2dRef,
} from '../../kernels/layout.js';
import { poison, poisoned, randomArray, releaseTestGpu, rng, runSeed, testGpu } from '../helpers.js';

afterAll(releaseTestGpu);

/**
 * The test GPU as the launchers see it, but reporting a tiny binding limit and a 256-byte offset alignment
 * (as on many discrete GPUs), so that the chunking past maxStorageBufferBindingSize and the aligned-down
 * windows are exercised on small tensors. Every method still runs on the real device.
 */
function smallBindings(gpu: Gpu, maxBinding = 1024, align = 256): Gpu {
  const limits = { maxStorageBufferBindingSize: maxBinding, minStorageBufferOffsetAlignment: align };
  return new Proxy(gpu, {
    get(target, prop) {
      if (prop === 'limits') return limits;
      const v = Reflect.get(target, prop, target);
      return typeof v === 'function' ? v.bind(target) : v;
    },
  });
}

const prod = (shape: number[]) => shape.reduce((a, b) => a * b, 1);

/** Random host data for a dtype: floats in [-4, 4) (halves as bit patterns), integers of both signs. */
function hostData(dtype: DType, n: number, rand: () => number): HostArray {
  const f = randomArray(n, rand, -4, 4);
  if (dtype === 'f16') return f32ToF16Array(f);
  if (dtype === 'bf16') return f32ToBf16Array(f);
  if (dtype === 'i32') return Int32Array.from(f, (v) => Math.round(v * 1e8));
  if (dtype === 'u32') return Uint32Array.from(f, (v) => Math.round((v + 4) * 5e8));
  return f;
}

/** Exact comparison (values, or bit patterns for halves). */
function expectExact(got: ArrayLike<number>, want: ArrayLike<number>, what: string): void {
  expect(got.length, `${what}: length`).toBe(want.length);
  for (let i = 0; i < want.length; i++) {
    if (got[i] !== want[i]) expect.fail(`${what}: element ${i} is ${got[i]}, expected ${want[i]} (seed ${runSeed})`);
  }
}

describe(`layout (seed ${runSeed})`, () => {
  describe('gatherRows', () => {
    const cases: [DType, number, number, number[]][] = [
      ['f32', 1, 1, [1]],
      ['f32', 37, 5, [11]],
      ['f16', 37, 5, [11]], // odd C: rows of halves start mid-word
      ['bf16', 9, 3, [3, 7]], // 2-D indices → [3, 7, C]
      ['f32', 1000, 129, [3001]],
      ['bf16', 513, 257, [1025]],
    ];
    it.each(cases)('%s table [%i, %i], indices %j (out-of-range ids clamp)', async (dtype, V, C, ishape) => {
      const gpu = await testGpu();
      const rand = rng(runSeed + V * C);
      const n = prod(ishape);
      const raw = hostData(dtype, V * C, rand);
      const values = dtype === 'f16' ? f16ArrayToF32(raw as Uint16Array) : dtype === 'bf16' ? bf16ArrayToF32(raw as Uint16Array) : raw;
      // Mostly valid ids, some below 0 and some ≥ V.
      const ids = Int32Array.from({ length: n }, () => Math.floor(rand() * (V + 6)) - 3);
      const out = poisoned(gpu, [...ishape, C]);
      const got = gatherRows(gpu, gpu.upload(raw, [V, C], dtype), gpu.upload(ids, ishape, 'i32'), { out });
      expect(got.shape).toEqual([...ishape, C]);
      expectExact(await got.readF32(), gatherRowsRef(values, C, ids), 'gather');
    });

    it('returns a new [...indices, C] f32 tensor and splits tables and outputs bigger than a binding', async () => {
      const gpu = await testGpu();
      const rand = rng(runSeed + 1);
      const [V, C, n] = [301, 7, 157];
      for (const dtype of ['f16', 'f32'] as DType[]) {
        const raw = hostData(dtype, V * C, rand);
        const values = dtype === 'f16' ? f16ArrayToF32(raw as Uint16Array) : raw;
        const ids = Int32Array.from({ length: n }, () => Math.floor(rand() * (V + 2)) - 1);
        const small = smallBindings(gpu);
        const table = gpu.upload(raw, [V, C], dtype);
        const got = gatherRows(small, table, gpu.upload(ids, [n], 'i32'));
        expect([got.shape, got.dtype]).toEqual([[n, C], 'f32']);
        expectExact(await got.readF32(), gatherRowsRef(values, C, ids), `chunked ${dtype} gather`);
      }
    });

    it('validates its inputs', async () => {
      const gpu = await testGpu();
      const table = gpu.upload(new Float32Array(6).fill(1), [2, 3], 'f32');
      const ids = gpu.upload(new Int32Array([0, 1]), [2], 'i32');
      expect(() => gatherRows(gpu, table.reshape([6]), ids)).toThrow(ShapeError);
      expect(() => gatherRows(gpu, table, gpu.upload(new Float32Array([0]), [1], 'f32'))).toThrow(/gather_rows.*i32/);
      expect(() => gatherRows(gpu, gpu.empty([0, 3], 'f32'), ids)).toThrow(/no rows/);
      expect(() => gatherRows(gpu, table, ids, { out: gpu.empty([2, 4], 'f32') })).toThrow(/out/);
    });
  });

  describe('scatterRows', () => {
    it.each([
      [1, 1, 1],
      [40, 3, 17],
      [1000, 65, 999],
    ])('dst [%i, %i] ← %i rows (ids without duplicates; out-of-range ids dropped)', async (V, C, n) => {
      const gpu = await testGpu();
      const rand = rng(runSeed + V + n);
      // A random permutation prefix, with a few ids pushed out of range.
      const perm = Array.from({ length: V }, (_, i) => i);
      for (let i = V - 1; i > 0; i--) {
        const j = Math.floor(rand() * (i + 1));
        [perm[i], perm[j]] = [perm[j], perm[i]];
      }
      const ids = Int32Array.from({ length: n }, (_, k) => (k % 7 === 3 ? (k % 2 ? -1 - k : V + k) : perm[k % V]));
      const src = randomArray(n * C, rand);
      const dst0 = randomArray(V * C, rand, 5, 6);
      const dst = gpu.upload(dst0, [V, C], 'f32');
      expect(scatterRows(gpu, gpu.upload(src, [n, C], 'f32'), gpu.upload(ids, [n], 'i32'), dst)).toBe(dst);
      expectExact(await dst.readF32(), scatterRowsRef(src, ids, dst0, C), 'scatter');
    });

    it('with duplicate ids one of the rows lands whole', async () => {
      const gpu = await testGpu();
      const rand = rng(runSeed + 2);
      const C = 33;
      const ids = new Int32Array([2, 0, 2, 2, 1]);
      const src = randomArray(5 * C, rand);
      const dst = gpu.upload(randomArray(3 * C, rand), [3, C], 'f32');
      const got = await scatterRows(gpu, gpu.upload(src, [5, C], 'f32'), gpu.upload(ids, [5], 'i32'), dst).readF32();
      expectExact(got.subarray(0, C), src.subarray(C, 2 * C), 'row 0');
      expectExact(got.subarray(C, 2 * C), src.subarray(4 * C, 5 * C), 'row 1');
      // Elements of row 2 each come from rows 0, 2 or 3 of src (which one is unspecified, even per element).
      for (let c = 0; c < C; c++) expect([src[c], src[2 * C + c], src[3 * C + c]]).toContain(got[2 * C + c]);
    });

    it('splits src and dst bigger than a binding', async () => {
      const gpu = await testGpu();
      const rand = rng(runSeed + 3);
      const [V, C, n] = [203, 9, 97];
      const ids = Int32Array.from({ length: n }, (_, k) => (k * 37 + 11) % V); // distinct: 37 and 203 are coprime
      const src = randomArray(n * C, rand);
      const dst0 = randomArray(V * C, rand, 5, 6);
      const dst = gpu.upload(dst0, [V, C], 'f32');
      scatterRows(smallBindings(gpu), gpu.upload(src, [n, C], 'f32'), gpu.upload(ids, [n], 'i32'), dst);
      expectExact(await dst.readF32(), scatterRowsRef(src, ids, dst0, C), 'chunked scatter');
    });

    it('validates its inputs', async () => {
      const gpu = await testGpu();
      const dst = gpu.empty([4, 3], 'f32');
      const ids = gpu.upload(new Int32Array([0, 1]), [2], 'i32');
      expect(() => scatterRows(gpu, gpu.empty([2, 4], 'f32'), ids, dst)).toThrow(/scatter_rows.*one row of 3/);
      expect(() => scatterRows(gpu, gpu.empty([3, 3], 'f32'), ids, dst)).toThrow(ShapeError);
      expect(() => scatterRows(gpu, gpu.empty([2, 3], 'f16'), ids, dst)).toThrow(/f32/);
      expect(() => scatterRows(gpu, dst.rows(0, 2), ids, dst)).toThrow(/shares a buffer/);
    });
  });

  describe('transpose2d', () => {
    // Two kernels: a tiled one (GPUs) and a row-wise one (CPU adapters); each shape runs on both tunings.
    let other: Gpu;
    beforeAll(async () => {
      other = await Gpu.create({ validate: true, tuning: (await testGpu()).tuning === 'cpu' ? 'gpu' : 'cpu' });
    });
    afterAll(() => other?.destroy());
    const kernelOf = (gpu: Gpu) => (gpu.tuning === 'cpu' ? 'transpose2d_rows' : 'transpose2d');
    const shapes: [DType, number[]][] = [
      ['f32', [1, 1]],
      ['f32', [1, 7]],
      ['f32', [7, 1]],
      ['f32', [17, 33]],
      ['i32', [3, 16, 16]],
      ['u32', [2, 3, 31, 45]],
      ['f32', [300, 1025]],
      ['f32', [70_001, 1, 1]], // 70001 one-tile matrices: more workgroups than one grid dimension holds
    ];
    it.each(shapes)('%s %j', async (dtype, shape) => {
      for (const gpu of [await testGpu(), other]) {
        const x = hostData(dtype, prod(shape), rng(runSeed + prod(shape)));
        const [R, C] = shape.slice(-2);
        const out = poisoned(gpu, [...shape.slice(0, -2), C, R], dtype);
        const got = transpose2d(gpu, gpu.upload(x, shape, dtype), { out });
        expectExact(await got.read(), transpose2dRef(x, R, C), `transpose ${dtype} (${gpu.tuning} tuning)`);
        expect(gpu.compiledKernels).toContain(kernelOf(gpu));
      }
    });

    it('reads unaligned views, returns [..., C, R], and splits batches bigger than a binding', async () => {
      for (const gpu of [await testGpu(), other]) {
        const x = hostData('f32', 6 * 9 * 11, rng(runSeed + 4));
        const t = gpu.upload(x, [6, 9, 11], 'f32');
        const view = t.rows(1, 5); // starts at byte 396: not aligned
        const got = transpose2d(smallBindings(gpu), view);
        expect(got.shape).toEqual([5, 11, 9]);
        expectExact(await got.read(), transpose2dRef(x.subarray(99), 9, 11), `chunked transpose (${gpu.tuning} tuning)`);
      }
    });

    it('validates its inputs', async () => {
      const gpu = await testGpu();
      expect(() => transpose2d(gpu, gpu.empty([5], 'f32'))).toThrow(/transpose2d.*2 dims/);
      expect(() => transpose2d(gpu, gpu.empty([2, 2], 'f16'))).toThrow(ShapeError);
      expect(() => transpose2d(gpu, gpu.empty([2, 3], 'f32'), { out: gpu.empty([2, 2], 'f32') })).toThrow(/out/);
    });
  });

  describe('copyRows', () => {
    // Every parity of row offsets for an odd row length, so halves start at odd and even positions.
    const cases: [DType, number, number, number, number, number][] = [];
    for (const dtype of ['f32', 'f16', 'bf16', 'i32'] as DType[]) {
      for (const [srcRow, dstRow] of [[0, 0], [1, 0], [0, 1], [1, 2], [3, 5]]) cases.push([dtype, 7, srcRow, dstRow, 3, 13]);
    }
    cases.push(['f32', 1, 0, 0, 1, 1], ['f16', 1, 2, 1, 1, 3], ['f16', 513, 5, 17, 200, 1000]);
    it.each(cases)('%s, C = %i: src rows from %i → dst rows from %i, %i rows (dst has %i)', async (dtype, C, srcRow, dstRow, rows, dstRows) => {
      const gpu = await testGpu();
      const rand = rng(runSeed + C + srcRow * 3 + dstRow);
      const srcRows = srcRow + rows + 2;
      const src = hostData(dtype, srcRows * C, rand);
      const dst0 = hostData(dtype, dstRows * C, rand);
      const dst = gpu.upload(dst0, [dstRows, C], dtype);
      copyRows(gpu, gpu.upload(src, [srcRows, C], dtype), dst, { srcRow, dstRow, rows });
      expectExact(await dst.readRaw(), copyRowsRef(src, dst0, C, srcRow, dstRow, rows), `copy ${dtype}`);
    });

    it('appends to a batch-major KV cache, within one buffer, and in chunks past the binding limit', async () => {
      const gpu = await testGpu();
      const rand = rng(runSeed + 5);
      const [B, Lmax, Lnew, C, L] = [2, 10, 3, 5, 4];
      const cache0 = hostData('f16', B * Lmax * C, rand);
      const fresh = hostData('f16', B * Lnew * C, rand);
      const cache = gpu.upload(cache0, [B, Lmax, C], 'f16');
      const k = gpu.upload(fresh, [B, Lnew, C], 'f16');
      let want: Float64Array = Float64Array.from(cache0);
      for (let b = 0; b < B; b++) {
        copyRows(gpu, k, cache, { srcRow: b * Lnew, dstRow: b * Lmax + L, rows: Lnew });
        want = copyRowsRef(fresh, want, C, b * Lnew, b * Lmax + L, Lnew);
      }
      expectExact(await cache.readRaw(), want, 'kv append');
      // Within one buffer (through a temporary), overlapping ranges included: memmove semantics.
      copyRows(gpu, cache, cache, { srcRow: 0, dstRow: 12, rows: 3 });
      want = copyRowsRef(want, want, C, 0, 12, 3);
      copyRows(gpu, cache, cache.rows(1, 1), { srcRow: 3, dstRow: 2, rows: 6 });
      want = copyRowsRef(want, want, C, 3, Lmax + 2, 6);
      expectExact(await cache.readRaw(), want, 'copy within a buffer');
      // Many chunks, each starting at an odd half.
      const big0 = hostData('bf16', 301 * 7, rand);
      const big = gpu.upload(big0, [301, 7], 'bf16');
      const from = hostData('bf16', 250 * 7, rand);
      copyRows(smallBindings(gpu, 512, 64), gpu.upload(from, [250, 7], 'bf16'), big, { srcRow: 1, dstRow: 50, rows: 249 });
      expectExact(await big.readRaw(), copyRowsRef(from, big0, 7, 1, 50, 249), 'chunked copy');
    });

    it('validates its inputs', async () => {
      const gpu = await testGpu();
      const a = gpu.empty([4, 3], 'f32');
      expect(() => copyRows(gpu, a, gpu.empty([4, 2], 'f32'))).toThrow(/copy_rows.*last dim/);
      expect(() => copyRows(gpu, a, gpu.empty([4, 3], 'f16'))).toThrow(ShapeError);
      expect(() => copyRows(gpu, a, gpu.empty([4, 3], 'f32'), { srcRow: 2, rows: 3 })).toThrow(/out of range/);
      expect(() => copyRows(gpu, a, gpu.empty([4, 3], 'f32'), { dstRow: -1, rows: 1 })).toThrow(/non-negative/);
    });
  });

  describe('copyColumns', () => {
    it.each([
      ['f32', [5, 11], 3, 4],
      ['bf16', [4, 3, 9], 1, 5],
      ['f16', [7, 1], 0, 1],
      ['i32', [100, 257], 128, 129],
    ] as [DType, number[], number, number][])('%s %j columns from %i, %i wide', async (dtype, shape, c0, cols) => {
      const gpu = await testGpu();
      const x = hostData(dtype, prod(shape), rng(runSeed + prod(shape)));
      const C = shape[shape.length - 1];
      const out = poisoned(gpu, [...shape.slice(0, -1), cols], dtype);
      copyColumns(gpu, gpu.upload(x, shape, dtype), c0, cols, { out });
      expectExact(await out.readRaw(), copyColumnsRef(x, C, c0, cols), `columns ${dtype}`);
    });

    it('slices a row view of a conv weight along Cin (as the VAE does), also in chunks', async () => {
      const gpu = await testGpu();
      const [Cout, Cin, k] = [6, 5, 3];
      const w = hostData('bf16', Cout * Cin * k * k, rng(runSeed + 6));
      const t = gpu.upload(w, [Cout, Cin, k, k], 'bf16');
      const rows = t.reshape([Cout, Cin * k * k]).rows(1, 4); // starts at byte 90
      for (const g of [gpu, smallBindings(gpu, 128, 32)]) {
        const got = copyColumns(g, rows, 2 * k * k, 3 * k * k);
        expect(got.shape).toEqual([4, 3 * k * k]);
        expectExact(await got.readRaw(), copyColumnsRef(w.subarray(Cin * k * k, 5 * Cin * k * k), Cin * k * k, 2 * k * k, 3 * k * k), 'weight slice');
      }
      expect(() => copyColumns(gpu, rows, 40, 6)).toThrow(/copy_columns.*outside/);
    });
  });

  it('writes nothing for empty inputs', async () => {
    const gpu = await testGpu();
    const dst = poison(gpu.empty([3, 2], 'f32'));
    copyRows(gpu, gpu.empty([0, 2], 'f32'), dst);
    scatterRows(gpu, gpu.empty([0, 2], 'f32'), gpu.empty([0], 'i32'), dst);
    expect(gatherRows(gpu, gpu.empty([3, 2], 'f32'), gpu.empty([0], 'i32')).shape).toEqual([0, 2]);
    expect(Array.from(await dst.readF32()).every(Number.isNaN)).toBe(true);
  });
});

