import { afterAll, describe, expect, it } from 'vitest';
import { rope2dTable } from '../../kernels/rope.js';
import { scalePositions, scaleRopeTable } from '../../model/star/rope.js';
import { softmaxRows, softmaxRowsRef } from '../../model/star/softmax.js';
import { phiIndex } from '../../model/star/vqvae.js';
import { cfgRamp } from '../../model/star/config.js';
import { randomArray, relMaxError, releaseTestGpu, rng, runSeed, testGpu } from '../helpers.js';

afterAll(releaseTestGpu);

describe(`STAR RoPE (seed ${runSeed})`, () => {
  it('places scale tokens on [0, 64], columns first, pn = 1 at the origin', () => {
    expect([...scalePositions(1)]).toEqual([0, 0]);
    // pn = 3, row-major: token 5 is row 1, column 2 → x = 64, y = 32.
    const p = scalePositions(3);
    expect([p[10], p[11]]).toEqual([64, 32]);
    expect([p[2], p[3]]).toEqual([32, 0]);
  });

  it('matches the formula: pair j < D/4 turns by x·θ^(−4j/D), pair D/4 + j by y·θ^(−4j/D)', () => {
    const D = 64;
    const pn = 5;
    const table = scaleRopeTable(pn, D);
    let worst = 0;
    for (let t = 0; t < pn * pn; t++) {
      const [x, y] = [((t % pn) / (pn - 1)) * 64, (Math.floor(t / pn) / (pn - 1)) * 64];
      for (let pair = 0; pair < D / 2; pair++) {
        const j = pair % (D / 4);
        const angle = (pair < D / 4 ? x : y) * 10000 ** (-(4 * j) / D);
        const o = (t * (D / 2) + pair) * 2;
        worst = Math.max(worst, Math.abs(table[o] - Math.cos(angle)), Math.abs(table[o + 1] - Math.sin(angle)));
      }
    }
    // f32 angles up to 64 rad: one ulp (≈ 4e-6) of the angle shows up in cos/sin.
    expect(worst).toBeLessThan(2e-5);
  });

  it("agrees with the kernels' generic 2D table in STAR's column-first order", () => {
    const pn = 7;
    const positions = scalePositions(pn);
    const rc = Float64Array.from({ length: pn * pn * 2 }, (_, i) => positions[i % 2 === 0 ? i + 1 : i - 1]); // (row, col)
    expect(relMaxError(scaleRopeTable(pn, 64), rope2dTable(rc, 64, { order: 'cols-first' }))).toBeLessThan(2e-5);
  });
});

describe(`STAR row softmax (seed ${runSeed})`, () => {
  it('matches the float64 reference, rows longer and shorter than a workgroup', async () => {
    const gpu = await testGpu();
    const rand = rng(runSeed + 1);
    for (const n of [5, 64, 200]) {
      const x = randomArray(3 * n, rand, -20, 20);
      const t = gpu.upload(x, [3, n], 'f32');
      const y = softmaxRows(gpu, t, 0.37);
      expect(relMaxError(await y.read(), softmaxRowsRef(x, n, 0.37))).toBeLessThan(1e-5);
      t.dispose();
      y.dispose();
    }
  });
});

describe('STAR schedules', () => {
  it('picks the φ of each scale as upstream (ticks 1/12 … 11/12, first on ties)', () => {
    const of = (K: number) => Array.from({ length: K }, (_, si) => phiIndex(si, K, 4));
    expect(of(14)).toEqual([0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3]);
    expect(of(10)).toEqual([0, 0, 1, 1, 1, 2, 2, 3, 3, 3]);
    expect(of(8)).toEqual([0, 0, 1, 1, 2, 2, 3, 3]); // star-tiny's config.json
    expect(phiIndex(3, 5, 1)).toBe(0);
  });

  it('ramps CFG linearly from 0 to cfg', () => {
    expect(cfgRamp(4.5, 0, 8)).toBe(0);
    expect(cfgRamp(4.5, 7, 8)).toBe(4.5);
    expect(cfgRamp(4.5, 1, 8)).toBeCloseTo(0.6428571428571429, 15);
  });
});
