// StageVAR's RP/RTR steps on the GPU against float64 references: the norm² sampler (arrival times, rank
// selection, and the distribution of the drawn sequences by a χ² test), QᵀX, restoration (area resize +
// scatter, both already tested in kernels/: here composed as RTR uses them), the slot RoPE table, and the
// seeded draws (same seed → same I and Q, image draws independent of the batch).

import { afterAll, describe, expect, it } from 'vitest';
import { matmulRef } from '../../kernels/matmul.js';
import { resizeRef } from '../../kernels/resize.js';
import { randomUniform } from '../../kernels/rng.js';
import { scatterRowsRef } from '../../kernels/layout.js';
import { drawRp, project, restore, rpStream, slotRopeTable, uploadDraw, disposeDraw } from '../../sampler/rp.js';
import { NEVER, arrivalTimes, arrivalTimesRef, rankSelect, rankSelectRef, sequenceProbabilityRef } from '../../sampler/rp_kernels.js';
import { expectClose, randn, releaseTestGpu, rng, testGpu } from '../helpers.js';

afterAll(releaseTestGpu);

describe('norm² sampler kernels', () => {
  it('arrival times match float64 (zero and negative weights never arrive)', async () => {
    const gpu = await testGpu();
    const rand = rng(11);
    const n = 1000;
    const w = Float32Array.from({ length: n }, (_, i) => (i % 97 === 0 ? 0 : i % 89 === 0 ? -1 : 10 ** (4 * rand() - 2)));
    const u = Float32Array.from({ length: n }, () => Math.floor(rand() * 2 ** 24) / 2 ** 24);
    u[1] = 0; // E = 0: arrives at once
    const t = arrivalTimes(gpu, gpu.upload(w, [n], 'f32'), gpu.upload(u, [n], 'f32'));
    const got = await t.readF32();
    expectClose(got, arrivalTimesRef(w, u), { rtol: 1e-5, atol: 0, what: 'arrival times' });
    expect(got[0]).toBe(Math.fround(NEVER));
  });

  it('rank selection: the r earliest per row, in order, ties by index (several tiles, r = M too)', async () => {
    const gpu = await testGpu();
    const rand = rng(12);
    for (const [rows, M, r] of [[3, 600, 50], [2, 257, 257], [1, 5, 3]] as const) {
      const t = Float32Array.from({ length: rows * M }, () => (rand() < 0.1 ? NEVER : Math.round(rand() * 400) / 8)); // many ties
      const { index, slots } = rankSelect(gpu, gpu.upload(t, [rows, M], 'f32'), r);
      const want = rankSelectRef(t, rows, M, r);
      expect(Array.from((await index.read()) as Int32Array)).toEqual(Array.from(want));
      expect(Array.from((await slots.read()) as Int32Array)).toEqual(Array.from(want, (i, k) => Math.floor(k / r) * M + i));
    }
  });

  // Exact distribution of the ordered draws: 20 000 independent rows of M = 5 tokens (one of weight 0),
  // r = 3 → 24 possible sequences, each with probability Π w_i / (what is left). Fixed Philox key: the test
  // is deterministic; the bound is the χ² quantile at p = 1e-6 (Wilson–Hilferty), far above a fair fit.
  it('draws sequences with the probabilities of sampling without replacement ∝ ‖x‖² (χ²), never repeating', async () => {
    const gpu = await testGpu();
    const w = [4, 1, 0, 2, 3];
    const M = w.length;
    const r = 3;
    const N = 20_000;
    const wT = gpu.upload(Float32Array.from({ length: N * M }, (_, i) => w[i % M]), [N * M], 'f32');
    const u = randomUniform(gpu, N * M, { key: 12345, stream: rpStream(10, 0, 'index') });
    const t = arrivalTimes(gpu, wT, u);
    const got = (await rankSelect(gpu, t.reshape([N, M]), r).index.read()) as Int32Array;
    const counts = new Map<string, number>();
    for (let b = 0; b < N; b++) {
      const seq = Array.from(got.subarray(b * r, b * r + r));
      expect(new Set(seq).size).toBe(r);
      expect(seq).not.toContain(2);
      counts.set(seq.join(','), (counts.get(seq.join(',')) ?? 0) + 1);
    }
    const live = [0, 1, 3, 4];
    let chi2 = 0;
    let cells = 0;
    for (const a of live) for (const b of live) for (const c of live) {
      if (a === b || b === c || a === c) continue;
      const expected = N * sequenceProbabilityRef(w, [a, b, c]);
      const seen = counts.get(`${a},${b},${c}`) ?? 0;
      chi2 += (seen - expected) ** 2 / expected;
      cells++;
    }
    expect(cells).toBe(24);
    const k = cells - 1;
    const z = 4.753; // one-sided 1e-6
    const bound = k * (1 - 2 / (9 * k) + z * Math.sqrt(2 / (9 * k))) ** 3;
    expect(chi2, `χ² ${chi2.toFixed(1)} over ${k} dof`).toBeLessThan(bound);
  });
});

describe('RP and RTR', () => {
  it('X̂ = QᵀX per row matches float64', async () => {
    const gpu = await testGpu();
    const rand = rng(21);
    const [n, M, r, C] = [2, 40, 7, 24];
    const q = randn(n * M * r, rand);
    const x = randn(n * M * C, rand);
    const got = await project(gpu, gpu.upload(q, [n, M, r], 'f32'), gpu.upload(x, [n * M, C], 'f32')).readF32();
    const want = matmulRef(q, x, { batch: n, M: r, N: C, K: M, transA: true, aBatched: true, bBatched: true });
    expectClose(got, want, { rtol: 1e-5, atol: 1e-5, what: 'QᵀX' });
  });

  it('restores: area resize of the previous map (NHWC), then row k into slot I[k] of its row', async () => {
    const gpu = await testGpu();
    const rand = rng(22);
    const [n, C, r] = [2, 8, 5];
    const prevGrid = [4, 6] as const;
    const grid = [5, 8] as const;
    const M = grid[0] * grid[1];
    const prev = randn(n * prevGrid[0] * prevGrid[1] * C, rand);
    const out = randn(n * r * C, rand);
    const index = new Int32Array([3, 0, 39, 17, 8, 1, 2, 30, 31, 9]);
    const slots = Int32Array.from(index, (i, k) => Math.floor(k / r) * M + i);
    const y = restore(gpu, gpu.upload(prev, [n * prevGrid[0] * prevGrid[1], C], 'f32'), prevGrid, grid, gpu.upload(out, [n * r, C], 'f32'), gpu.upload(slots, [n * r], 'i32'));
    expect(y.shape).toEqual([n * M, C]);
    const resized = resizeRef(prev, [n, prevGrid[0], prevGrid[1], C], grid[0], grid[1], 'area', 'nhwc');
    expectClose(await y.readF32(), scatterRowsRef(out, slots, resized, C), { rtol: 1e-6, atol: 1e-7, what: 'RTR' });
  });

  it('the sampled-slot RoPE table holds the schedule rows start + I[k]', async () => {
    const gpu = await testGpu();
    const rand = rng(23);
    const [T, half, start, M] = [60, 4, 20, 40];
    const rope = randn(T * half * 2, rand);
    const index = new Int32Array([39, 0, 7, 7 + 13]);
    const got = await slotRopeTable(gpu, gpu.upload(rope, [T, half, 2], 'f32'), start, M, gpu.upload(index, [1, 4], 'i32')).readF32();
    const want = Array.from(index).flatMap((i) => Array.from(rope.subarray((start + i) * half * 2, (start + i + 1) * half * 2)));
    expect(Array.from(got)).toEqual(want);
  });

  it('seeded draws: same seed → same I and Q; an image\'s draw does not depend on the batch; no repeats; Q ~ N(0, 1/r)', async () => {
    const gpu = await testGpu();
    const rand = rng(24);
    const [M, C, r] = [300, 16, 40];
    const x1 = randn(M * C, rand);
    const x2 = randn(M * C, rand);
    const both = new Float32Array(2 * M * C);
    both.set(x1);
    both.set(x2, M * C);
    const opts = { tokens: M, rank: r, scale: 10, chunk: 3 };
    const read = async (x: Float32Array, keys: number[]) => {
      const d = drawRp(gpu, gpu.upload(x, [keys.length * M, C], 'f32'), { ...opts, keys });
      const out = { index: (await d.index.read()) as Int32Array, slots: (await d.slots.read()) as Int32Array, q: await d.q.readF32() };
      disposeDraw(d);
      return out;
    };
    const a = await read(x2, [7]);
    const again = await read(x2, [7]);
    const other = await read(x2, [8]);
    const batch = await read(both, [5, 7]);
    expect(Array.from(again.index)).toEqual(Array.from(a.index));
    expect(Array.from(again.q)).toEqual(Array.from(a.q));
    expect(Array.from(other.index)).not.toEqual(Array.from(a.index));
    expect(Array.from(batch.index.subarray(r))).toEqual(Array.from(a.index));
    expect(Array.from(batch.q.subarray(M * r))).toEqual(Array.from(a.q));
    expect(Array.from(batch.slots.subarray(r))).toEqual(Array.from(a.index, (i) => M + i));
    for (const d of [a, other, batch]) {
      for (let b = 0; b < d.index.length / r; b++) expect(new Set(d.index.subarray(b * r, b * r + r)).size).toBe(r);
    }
    const mean = a.q.reduce((s, v) => s + v, 0) / a.q.length;
    const variance = a.q.reduce((s, v) => s + (v - mean) ** 2, 0) / a.q.length;
    expect(Math.abs(mean)).toBeLessThan(0.01);
    expect(variance * r).toBeGreaterThan(0.95);
    expect(variance * r).toBeLessThan(1.05);
  });

  it('draw streams never collide (and stay clear of the bit sampler\'s streams 0…255)', () => {
    const seen = new Set<number>();
    for (let s = 0; s < 16; s++) for (let c = 0; c < 16; c++) for (const d of ['index', 'q'] as const) seen.add(rpStream(s, c, d));
    expect(seen.size).toBe(16 * 16 * 2);
    expect(Math.min(...seen)).toBeGreaterThanOrEqual(0x10000);
    expect(() => rpStream(300, 0, 'q')).toThrow(/0…255/);
  });

  it('uploaded draws reject slots outside the scale', async () => {
    const gpu = await testGpu();
    expect(() => uploadDraw(gpu, new Int32Array([0, 9]), new Float32Array(2 * 9), 1, 9, 2)).toThrow(/outside the scale's 9 tokens/);
  });
});
