import { afterAll, describe, expect, it } from 'vitest';
import { ShapeError } from '../../engine/errors.js';
import { f32ToF16Array, roundThrough } from '../../engine/dtype.js';
import { applyRope, applyRopeRef, rope2dAngles, rope2dTable } from '../../kernels/rope.js';
import { expectClose, randn, releaseTestGpu, rng, runSeed, testGpu } from '../helpers.js';

afterAll(releaseTestGpu);

// Tolerances. applyRope: each output is x0·cos ∓ x1·sin in f32, two roundings of products ≤ |x| plus one
// of the sum: ≤ 3·2⁻²⁴·(|x0| + |x1|) ≈ 2e-7·|x|, with |x| ≲ 5 for N(0,1) data — inside 1e-5 relative
// plus 1e-6 absolute (outputs near zero after cancellation). rope2dTable: cos/sin of float64 angles
// rounded once to f32, so 2⁻²⁴ relative, i.e. 6e-8 absolute on values ≤ 1.
const TOL = { rtol: 1e-5, atol: 1e-6 };

/** A table of cos/sin of random angles (any angles: the kernel does not care where they came from). */
function randomTable(rows: number, halfD: number, rand: () => number): Float32Array {
  const t = new Float32Array(rows * halfD * 2);
  for (let i = 0; i < rows * halfD; i++) {
    const a = (rand() - 0.5) * 200;
    t[2 * i] = Math.cos(a);
    t[2 * i + 1] = Math.sin(a);
  }
  return t;
}

describe(`rope (seed ${runSeed})`, () => {
  // [R, H, D, rowsPerBatch, tableOffset, table rows]: one row, batches that wrap (rowsPerBatch < R),
  // offsets into a longer table (the current scale of a KV cache), element counts not a multiple of 256.
  it.each([
    [1, 1, 64, 1, 0, 1],
    [7, 3, 64, 7, 2, 9],
    [10, 2, 128, 5, 0, 5],
    [300, 1, 128, 150, 17, 200],
    [33, 3, 128, 11, 0, 40],
  ])('R %i, H %i, D %i, rowsPerBatch %i, offset %i, table rows %i', async (r, h, d, rowsPerBatch, tableOffset, l) => {
    const gpu = await testGpu();
    const rand = rng(runSeed + r * 31 + d);
    const c = h * d;
    const x = randn(r * c, rand);
    const table = randomTable(l, d / 2, rand);
    const xt = gpu.upload(x, [r, c], 'f32');
    const back = applyRope(gpu, xt, gpu.upload(table, [l, d / 2, 2], 'f32'), { heads: h, rowsPerBatch, tableOffset });
    expect(back).toBe(xt);
    expectClose(await xt.read(), applyRopeRef(x, table, c, { heads: h, rowsPerBatch, tableOffset }), { ...TOL, what: 'rope' });
  });

  it('[B, L, C] input: rowsPerBatch defaults to L; the rotation preserves every pair norm', async () => {
    const gpu = await testGpu();
    const rand = rng(runSeed + 5);
    const [b, l, h, d] = [2, 13, 2, 64];
    const c = h * d;
    const x = randn(b * l * c, rand);
    const table = randomTable(l, d / 2, rand);
    const xt = gpu.upload(x, [b, l, c], 'f32');
    applyRope(gpu, xt, gpu.upload(table, [l, d / 2, 2], 'f32'), { heads: h });
    const got = await xt.read();
    expectClose(got, applyRopeRef(x, table, c, { heads: h, rowsPerBatch: l }), { ...TOL, what: 'rope [B, L, C]' });
    const norms = (a: ArrayLike<number>) => Array.from({ length: a.length / 2 }, (_, i) => Math.hypot(a[2 * i], a[2 * i + 1]));
    expectClose(norms(got), norms(x), { ...TOL, what: 'pair norms' });
  });

  it('Infinity table (D 128, rows first): θ_k = 10000^(−k/32), pairs 0..31 with the row, 32..63 with the column', async () => {
    // Positions of the 6×6 scale on the 64×64 grid (infinity.md §2.7) plus fractional ones.
    const grid = [0, 11, 21, 32, 43, 53];
    const positions = grid.flatMap((row) => grid.map((col) => ({ row, col })));
    positions.push({ row: 0.5, col: 63.25 });
    const table = rope2dTable(positions, 128, { order: 'rows-first' });
    expect(table.length).toBe(positions.length * 64 * 2);
    // The spec's own formula, written out independently: inv_freq = 1 / 10000^(arange(0, 64, 2) / 64).
    const want = new Float64Array(table.length);
    positions.forEach(({ row, col }, t) => {
      for (let pair = 0; pair < 64; pair++) {
        const k = pair % 32;
        const freq = 1 / 10000 ** ((2 * k) / 64);
        const angle = (pair < 32 ? row : col) * freq;
        want[(t * 64 + pair) * 2] = Math.cos(angle);
        want[(t * 64 + pair) * 2 + 1] = Math.sin(angle);
      }
    });
    expectClose(table, want, { rtol: 0, atol: 1e-7, what: 'infinity table' });
    // Spot checks: token (0, 0) is the identity; pair 0 turns by exactly the row, pair 32 by the column.
    expect(Array.from(table.subarray(0, 128))).toEqual(Array.from({ length: 128 }, (_, i) => (i % 2 === 0 ? 1 : 0)));
    const t1 = 1; // (row 0, col 11)
    expect(table[(t1 * 64 + 0) * 2]).toBe(1);
    expect(table[(t1 * 64 + 32) * 2]).toBeCloseTo(Math.cos(11), 6);
  });

  it('STAR table (D 64, cols first, normalised float positions): ω_j = 10000^(−j/16), pairs 0..15 with the column', () => {
    const pn = 7;
    const flat = new Float64Array(2 * pn * pn);
    for (let r = 0; r < pn; r++) {
      for (let c = 0; c < pn; c++) {
        flat[2 * (r * pn + c)] = (r / (pn - 1)) * 64;
        flat[2 * (r * pn + c) + 1] = (c / (pn - 1)) * 64;
      }
    }
    const table = rope2dTable(flat, 64, { order: 'cols-first', theta: 10000 });
    const want = new Float64Array(table.length);
    for (let l = 0; l < pn * pn; l++) {
      const posX = ((l % pn) / (pn - 1)) * 64; // column
      const posY = (Math.floor(l / pn) / (pn - 1)) * 64; // row
      for (let j = 0; j < 16; j++) {
        const w = 10000 ** (-j / 16);
        want[(l * 32 + j) * 2] = Math.cos(posX * w);
        want[(l * 32 + j) * 2 + 1] = Math.sin(posX * w);
        want[(l * 32 + 16 + j) * 2] = Math.cos(posY * w);
        want[(l * 32 + 16 + j) * 2 + 1] = Math.sin(posY * w);
      }
    }
    expectClose(table, want, { rtol: 0, atol: 1e-7, what: 'star table' });
    // Object and flat position forms agree, and the angles are what the table holds.
    const objs = Array.from({ length: pn * pn }, (_, t) => ({ row: flat[2 * t], col: flat[2 * t + 1] }));
    expect(rope2dTable(objs, 64, { order: 'cols-first' })).toEqual(table);
    const angles = rope2dAngles(flat, 64, { order: 'cols-first' });
    expectClose(table.filter((_, i) => i % 2 === 0), Array.from(angles, Math.cos), { rtol: 0, atol: 1e-7, what: 'cos(angles)' });
  });

  it('a 2D table applied on the GPU matches the float64 complex rotation of the spec', async () => {
    const gpu = await testGpu();
    const rand = rng(runSeed + 77);
    const [h, d] = [3, 128];
    const c = h * d;
    const positions = Array.from({ length: 20 }, (_, t) => ({ row: Math.floor(t / 5) * 16, col: (t % 5) * 16 }));
    const x = randn(positions.length * c, rand);
    const xt = gpu.upload(x, [positions.length, c], 'f32');
    applyRope(gpu, xt, gpu.upload(rope2dTable(positions, d, { order: 'rows-first' }), [positions.length, d / 2, 2], 'f32'), { heads: h });
    const angles = rope2dAngles(positions, d, { order: 'rows-first' });
    const want = new Float64Array(x.length);
    for (let t = 0; t < positions.length; t++) {
      for (let hh = 0; hh < h; hh++) {
        for (let i = 0; i < d / 2; i++) {
          const at = t * c + hh * d + 2 * i;
          const a = angles[t * (d / 2) + i];
          // (x0 + i·x1)·e^{iθ}
          want[at] = x[at] * Math.cos(a) - x[at + 1] * Math.sin(a);
          want[at + 1] = x[at] * Math.sin(a) + x[at + 1] * Math.cos(a);
        }
      }
    }
    // The table's f32 rounding of cos/sin adds ≤ 6e-8·|x| to the f32 arithmetic bound above.
    expectClose(await xt.read(), want, { ...TOL, what: 'rope 2d' });
  });

  // f16 x (the f16 activation path; shader-f16): each pair is widened, rotated in f32 and rounded once, so
  // on top of TOL the output carries one f16 rounding, ≤ 2⁻¹¹ = 4.9e-4 relative (rtol 1e-3), or half the
  // subnormal step 2⁻²⁴ for outputs near 0 (inside atol 1e-6). The reference sees the f16-rounded input.
  it.each([
    [1, 1, 4, 1, 0, 1],
    [7, 3, 64, 7, 2, 9],
    [33, 3, 128, 11, 0, 40],
    [300, 1, 128, 150, 17, 200],
  ])('f16 x: R %i, H %i, D %i, rowsPerBatch %i, offset %i, table rows %i', async (r, h, d, rowsPerBatch, tableOffset, l) => {
    const gpu = await testGpu();
    const xt0 = gpu.empty([1, 4], 'f16');
    if (!gpu.hasF16) return expect(() => applyRope(gpu, xt0, gpu.empty([1, 2, 2], 'f32'), { heads: 1 })).toThrow(/rope: f16 x needs the shader-f16 feature/);
    const rand = rng(runSeed + r * 37 + d + 1);
    const c = h * d;
    // Values up to ~100 in magnitude (Infinity's scaled cosine q), still exact f16 inputs.
    const x = roundThrough('f16', randn(r * c, rand, 30));
    const table = randomTable(l, d / 2, rand);
    const xt = gpu.upload(f32ToF16Array(x), [r, c], 'f16');
    expect(applyRope(gpu, xt, gpu.upload(table, [l, d / 2, 2], 'f32'), { heads: h, rowsPerBatch, tableOffset })).toBe(xt);
    expectClose(await xt.read(), applyRopeRef(x, table, c, { heads: h, rowsPerBatch, tableOffset }), { rtol: 1e-3, atol: 1e-6, what: 'rope f16' });
  });

  it('rejects bad shapes with ShapeError naming the kernel and shapes', async () => {
    const gpu = await testGpu();
    const x = gpu.empty([4, 128], 'f32');
    const table = gpu.empty([4, 32, 2], 'f32');
    expect(() => applyRope(gpu, x, table, { heads: 2 })).not.toThrow();
    expect(() => applyRope(gpu, x, table, { heads: 1 })).toThrow(/rope: table must be \[L, 64, 2\] for head dim 128 \(x \[4, 128\]/);
    expect(() => applyRope(gpu, x, table, { heads: 3 })).toThrow(ShapeError);
    expect(() => applyRope(gpu, x, table, { heads: 2, tableOffset: 1 })).toThrow(/rope: tokens 1\.\.4 .* exceed the 4 table rows/);
    expect(() => applyRope(gpu, x, table, { heads: 2, rowsPerBatch: 0 })).toThrow(/rowsPerBatch 0/);
    expect(() => applyRope(gpu, gpu.empty([4, 128], 'i32'), table, { heads: 2 })).toThrow(/rope: x must be f32 or f16 and table f32/);
    expect(() => applyRope(gpu, x, gpu.empty([4, 64, 2], 'f16'), { heads: 2 })).toThrow(/rope: x must be f32 or f16 and table f32/);
    expect(() => rope2dTable([{ row: 0, col: 0 }], 6, { order: 'rows-first' })).toThrow(/rope2dTable: head dim 6/);
    expect(() => rope2dTable(new Float64Array(3), 8, { order: 'rows-first' })).toThrow(/rope2dTable: flat positions/);
    await gpu.sync();
  });
});
