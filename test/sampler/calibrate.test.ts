// Rank calibration: the float64 eigen-solver against known spectra, the GPU-formed centered Gram against a
// float64 PCA, and a calibration run on the tiny model whose result is a valid policy.

import { afterAll, describe, expect, it } from 'vitest';
import { calibrate, calibratedPolicy, centeredSpectrum, energyRatio, gramParts } from '../../sampler/calibrate.js';
import { energyRank, symmetricEigenvalues } from '../../sampler/eigen.js';
import { fixtureInputs, loadFixtureModel, openInfinityFixture } from '../../model/infinity/parity.js';
import { vanillaPlan } from '../../sampler/plan.js';
import { parsePolicy } from '../../sampler/policy.js';
import { applyPolicy } from '../../sampler/policy_plan.js';
import { expectClose, fixture, randn, releaseTestGpu, rng, testGpu } from '../helpers.js';

afterAll(releaseTestGpu);

/** Q·diag(λ)·Qᵀ with a random orthogonal Q (Gram–Schmidt). */
function withSpectrum(lambda: number[], rand: () => number): Float64Array {
  const n = lambda.length;
  const q = Array.from({ length: n }, () => Array.from({ length: n }, () => rand() - 0.5));
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < i; j++) {
      const dot = q[i].reduce((s, v, k) => s + v * q[j][k], 0);
      for (let k = 0; k < n; k++) q[i][k] -= dot * q[j][k];
    }
    const norm = Math.hypot(...q[i]);
    for (let k = 0; k < n; k++) q[i][k] /= norm;
  }
  const a = new Float64Array(n * n);
  for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) a[i * n + j] = lambda.reduce((s, l, k) => s + q[k][i] * l * q[k][j], 0);
  return a;
}

/** σ² of the centered rows of x [M, C] in float64 (the C×C covariance's eigenvalues, padded to min(M, C)). */
function pcaSpectrumRef(x: Float32Array, M: number, C: number): Float64Array {
  const mu = new Float64Array(C);
  for (let i = 0; i < M; i++) for (let c = 0; c < C; c++) mu[c] += x[i * C + c] / M;
  const g = new Float64Array(C * C);
  for (let i = 0; i < M; i++) for (let a = 0; a < C; a++) for (let b = 0; b < C; b++) g[a * C + b] += (x[i * C + a] - mu[a]) * (x[i * C + b] - mu[b]);
  return symmetricEigenvalues(g, C).slice(0, Math.min(M, C));
}

describe('eigenvalues and energy ranks', () => {
  it('recovers known spectra (zeros and repeats included)', () => {
    const rand = rng(41);
    for (const lambda of [[3], [2, -1], [5, 5, 1, 0, 0], Array.from({ length: 60 }, (_, i) => (i % 5 === 0 ? 0 : Math.exp(4 * rand() - 2)))]) {
      const got = symmetricEigenvalues(withSpectrum(lambda, rand), lambda.length);
      expectClose(got, [...lambda].sort((a, b) => b - a), { rtol: 1e-10, atol: 1e-12, what: 'eigenvalues' });
    }
  });

  it('energy rank: the smallest k holding α of Σσ²', () => {
    expect(energyRank([4, 3, 2, 1], 0.4)).toBe(1);
    expect(energyRank([4, 3, 2, 1], 0.7)).toBe(2);
    expect(energyRank([4, 3, 2, 1], 0.71)).toBe(3);
    expect(energyRank([4, 3, 2, 1], 1)).toBe(4);
    expect(energyRank([0, 0], 0.9)).toBe(1);
    expect(energyRatio([4, 3, 2, 1], 0.7)).toBe(0.5);
  });

  it('the GPU-formed centered Gram gives the float64 PCA spectrum (token and channel sides)', async () => {
    const gpu = await testGpu();
    const rand = rng(42);
    for (const [M, C] of [[24, 40], [50, 16]]) {
      const x = randn(M * C, rand).map((v, i) => v + (i % C) * 0.3); // a non-zero mean to remove
      const got = await centeredSpectrum(gramParts(gpu, gpu.upload(x, [M, C], 'f32')));
      const want = pcaSpectrumRef(x, M, C);
      expect(got.length).toBe(Math.min(M, C));
      expectClose(got, want, { rtol: 0, atol: 1e-4 * want[0], what: `spectrum ${M}×${C}` });
    }
  });
});

describe('calibration on the tiny model', () => {
  it('measures the unconditional chunk inputs and yields a policy file', async () => {
    const gpu = await testGpu();
    const f = await openInfinityFixture(fixture('infinity-tiny'));
    const model = await loadFixtureModel(gpu, f);
    try {
      const inputs = await fixtureInputs(f);
      const plans = vanillaPlan(f.schedule, { cfg: 3, tau: 1 });
      const c = await calibrate(gpu, {
        model, text: { features: inputs.text, lens: inputs.lens }, schedule: f.schedule, template: 1, plans, bits: inputs.bits,
        scales: [5, 6], alphas: [0.9, 0.99], branch: 'uncond',
      });
      expect(Object.keys(c.ratios)).toEqual(['0.9', '0.99']);
      for (const s of [5, 6]) {
        const lo = c.ratios['0.9'][s];
        const hi = c.ratios['0.99'][s];
        expect(lo).toHaveLength(model.config.chunks);
        lo.forEach((r, k) => {
          expect(r).toBeGreaterThan(0);
          expect(hi[k]).toBeGreaterThanOrEqual(r);
          expect(hi[k]).toBeLessThanOrEqual(1);
        });
      }
      const policy = parsePolicy(JSON.parse(JSON.stringify(calibratedPolicy(c, 0.9, { cfg: 0 }))), 'calibrated.json');
      const applied = applyPolicy(policy, plans, { chunks: model.config.chunks, depth: model.config.depth }).plans;
      expect(applied[6].branches).toBe('uncond');
      expect(applied[6].tokens).toMatchObject({ kind: 'random-projection', ranks: c.ratios['0.9'][6].map((r) => Math.floor(r * 256) + 1) });
    } finally {
      model.dispose();
      await f.golden.close();
    }
  });
});
