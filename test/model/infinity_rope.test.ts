import { describe, expect, it } from 'vitest';
import { axisPositions, ropePositions, ropeTable, roundHalfEven } from '../../model/infinity/rope.js';
import { rope2dTable } from '../../kernels/rope.js';
import { H_DIV_W_TEMPLATES, ropeGrid, scaleSchedule, scaleStarts } from '../../sampler/schedule.js';

/** round-half-to-even of the exact rational i·full/n, in integers (independent of any float rounding). */
function exactPosition(i: number, full: number, n: number): number {
  const num = i * full;
  const q = Math.floor(num / n);
  const twice = 2 * (num - q * n);
  if (twice > n) return q + 1;
  if (twice === n) return q % 2 === 0 ? q : q + 1;
  return q;
}

describe('Infinity 2D RoPE positions (normalized by hw = 2)', () => {
  it('rounds half to even', () => {
    expect([0.5, 1.5, 2.5, 3.5, -0.5, 22.5, 10.5, 2.4999, 2.5001].map(roundHalfEven)).toEqual([0, 2, 2, 4, -0, 22, 10, 2, 3]);
  });

  it('matches the spec table for 1:1', () => {
    const g = ropeGrid(1)[0];
    expect(axisPositions(6, g)).toEqual([0, 11, 21, 32, 43, 53]);
    expect(axisPositions(12, g)).toEqual([0, 5, 11, 16, 21, 27, 32, 37, 43, 48, 53, 59]);
    expect(axisPositions(20, g)).toEqual([0, 3, 6, 10, 13, 16, 19, 22, 26, 29, 32, 35, 38, 42, 45, 48, 51, 54, 58, 61]);
    expect(axisPositions(24, g)).toEqual([0, 3, 5, 8, 11, 13, 16, 19, 21, 24, 27, 29, 32, 35, 37, 40, 43, 45, 48, 51, 53, 56, 59, 61]);
    expect(axisPositions(40, g).slice(0, 8)).toEqual([0, 2, 3, 5, 6, 8, 10, 11]);
    expect(axisPositions(48, g).slice(0, 8)).toEqual([0, 1, 3, 4, 5, 7, 8, 9]);
    expect(axisPositions(64, g)).toEqual(Array.from({ length: 64 }, (_, i) => i));
  });

  it('hits the exact .5 cases of non-square templates the even way', () => {
    // 1.25 (final 70×56): rows of the 20×16 scale step 3.5 → 0, 4 (3.5), 7, 10 (10.5), 14, 18 (17.5) …
    expect(axisPositions(20, 70).slice(0, 6)).toEqual([0, 4, 7, 10, 14, 18]);
    // 2.0 (final 90×45): the columns of the 2×2 scale are 0 and 22 (22.5 → 22), not 23.
    expect(axisPositions(2, 45)).toEqual([0, 22]);
    // 0.5 is its transpose.
    expect(ropePositions([[2, 2]], ropeGrid(0.5))).toEqual(Int32Array.from([0, 0, 0, 45, 22, 0, 22, 45]));
  });

  it.each(H_DIV_W_TEMPLATES)('template %f: every scale lands on the exact round-half-even grid cell', (t) => {
    const [uh, uw] = ropeGrid(t);
    let halves = 0;
    for (const [h, w] of scaleSchedule(t)) {
      expect(axisPositions(h, uh)).toEqual(Array.from({ length: h }, (_, i) => exactPosition(i, uh, h)));
      expect(axisPositions(w, uw)).toEqual(Array.from({ length: w }, (_, j) => exactPosition(j, uw, w)));
      for (let i = 0; i < h; i++) if ((2 * i * uh) % h === 0 && ((2 * i * uh) / h) % 2 === 1) halves++;
    }
    // Sanity: the schedule's positions are concatenated row-major per scale, starting at (0, 0).
    const pos = ropePositions(scaleSchedule(t), [uh, uw]);
    expect(pos.length / 2).toBe(scaleStarts(scaleSchedule(t)).at(-1));
    expect([pos[0], pos[1]]).toEqual([0, 0]);
    if (t === 1.25 || t === 2.0) expect(halves).toBeGreaterThan(0);
  });

  it('0.25M / 0.06M schedules use the 1M final grid, not their own', () => {
    // 512² (0.25M, last scale 32×32): rows 0, 2, …, 62.
    const pos = ropePositions(scaleSchedule(1, '0.25M'), ropeGrid(1));
    const start = scaleStarts(scaleSchedule(1, '0.25M'))[9];
    const rows = Array.from({ length: 32 }, (_, i) => pos[2 * (start + i * 32)]);
    expect(rows).toEqual(Array.from({ length: 32 }, (_, i) => 2 * i));
  });

  it('builds the cos/sin table: first half of the pairs rotates with the row, second half with the column', () => {
    const headDim = 96; // 48 pairs, 24 frequencies θ_k = 10000^(−2k/48)
    const positions = Int32Array.from([0, 0, 5, 9, 111, 37]);
    const table = ropeTable(positions, headDim);
    expect(table.length).toBe(3 * 48 * 2);
    for (let t = 0; t < 3; t++) {
      for (let p = 0; p < 48; p++) {
        const pos = p < 24 ? positions[2 * t] : positions[2 * t + 1];
        const angle = pos * 10000 ** (-(2 * (p % 24)) / 48);
        // f32 angles: |error| ≤ |angle|·2^-23 ≈ 1.3e-5 at position 111.
        expect(Math.abs(table[(t * 48 + p) * 2] - Math.cos(angle))).toBeLessThan(3e-5);
        expect(Math.abs(table[(t * 48 + p) * 2 + 1] - Math.sin(angle))).toBeLessThan(3e-5);
      }
    }
    expect(() => ropeTable(positions, 6)).toThrow(/divisible by 4/);
  });

  it('agrees with the kernels’ generic rope2dTable (rows first), up to the f32 rounding of the angles', () => {
    const positions = ropePositions(scaleSchedule(2.0, '0.25M'), ropeGrid(2.0));
    const mine = ropeTable(positions, 128);
    const generic = rope2dTable(Float64Array.from(positions), 128, { order: 'rows-first' });
    let worst = 0;
    for (let i = 0; i < mine.length; i++) worst = Math.max(worst, Math.abs(mine[i] - generic[i]));
    expect(worst).toBeLessThan(3e-5);
  });
});
