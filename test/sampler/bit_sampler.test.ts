import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Gpu } from '../../engine/device.js';
import { randomUniformCpu } from '../../kernels/rng.js';
import {
  bitProbabilityRef,
  cfgWeights,
  mixedRowRef,
  sampleBits,
  sampleBitsRef,
  sampleTokenRef,
  sampleTokens,
  tokenDistributionRef,
} from '../../kernels/sample.js';
import { randn, releaseTestGpu, rng, runSeed, testGpu } from '../helpers.js';

afterAll(releaseTestGpu);

let gpu: Gpu;
beforeAll(async () => {
  gpu = await testGpu();
});

/** Pearson χ² of observed counts against expected probabilities (bins with expectation 0 must be empty). */
function chiSquare(counts: number[], probs: number[], n: number): { chi2: number; df: number } {
  let chi2 = 0;
  let df = -1;
  counts.forEach((o, i) => {
    const e = probs[i] * n;
    if (e === 0) {
      expect(o, `bin ${i} has probability 0`).toBe(0);
      return;
    }
    chi2 += (o - e) ** 2 / e;
    df++;
  });
  return { chi2, df };
}

/** Upper bound of χ²(df) at a tail probability of about 1e-6 (Wilson–Hilferty with z = 4.75). */
function chiBound(df: number): number {
  const z = 4.75;
  return df * (1 - 2 / (9 * df) + z * Math.sqrt(2 / (9 * df))) ** 3;
}

const uniformsOf = (seeds: number[], n: number, stream: number) => (i: number) => randomUniformCpu(n, { key: seeds[i], stream });

describe(`bit sampler (seed ${runSeed})`, () => {
  it('draws exactly the CPU twin: CFG mix, temperature, both logit layouts', async () => {
    const rand = rng(runSeed);
    const B = 2;
    const T = 37;
    const d = 32;
    // One tensor [2B·T, 2d]: cond rows then uncond rows, as the model's head gives them.
    const host = randn(2 * B * T * 2 * d, rand, 2);
    const logits = gpu.upload(host, [2 * B * T, 2 * d], 'f32');
    const seeds = [12345, 2 ** 40 + 7];
    for (const [cfg, tau, topP] of [[3, 0.5, 0.97], [1, 1, 1], [0, 2, 0.8]]) {
      const { wa, wb } = cfgWeights(cfg, tau);
      const mix = { a: logits, aBase: 0, b: logits, bBase: B * T, wa, wb };
      const opts = { images: B, tokens: T, bits: d, seeds, stream: 5, topP };
      const got = (await sampleBits(gpu, mix, opts).read()) as Int32Array;
      const want = sampleBitsRef({ a: host, aBase: 0, bBase: B * T, wa, wb }, opts, uniformsOf(seeds, T * d, 5));
      // f32 (GPU) and float64 (CPU) may only disagree when the uniform sits on the probability.
      let differ = 0;
      for (let i = 0; i < want.length; i++) if (got[i] !== want[i]) differ++;
      expect(differ, `cfg ${cfg} tau ${tau} top-p ${topP}`).toBeLessThanOrEqual(1);
    }
    // Two tensors (branches run separately) give the same draw as the packed layout.
    const cond = gpu.upload(host.slice(0, B * T * 2 * d), [B * T, 2 * d], 'f32');
    const uncond = gpu.upload(host.slice(B * T * 2 * d), [B * T, 2 * d], 'f32');
    const { wa, wb } = cfgWeights(3, 0.5);
    const opts = { images: B, tokens: T, bits: d, seeds, stream: 1 };
    const packed = await sampleBits(gpu, { a: logits, bBase: B * T, wa, wb }, opts).read();
    const split = await sampleBits(gpu, { a: cond, b: uncond, wa, wb }, opts).read();
    expect(Array.from(split)).toEqual(Array.from(packed));
  });

  it('is a function of (seed, stream) per image: same → identical, else different, batch-independent', async () => {
    const rand = rng(runSeed + 1);
    const T = 64;
    const d = 32;
    const host = randn(2 * T * 2 * d, rand, 0.5);
    const logits = gpu.upload(host, [2 * T, 2 * d], 'f32');
    const draw = async (seeds: number[], stream: number, image = 0) => {
      const B = seeds.length;
      const all = (await sampleBits(gpu, { a: logits, wa: 1, wb: 0 }, { images: B, tokens: T / B, bits: d, seeds, stream }).read()) as Int32Array;
      return Array.from(all.subarray(image * (T / B) * d, (image + 1) * (T / B) * d));
    };
    const a = await draw([7], 0);
    expect(await draw([7], 0)).toEqual(a);
    expect(await draw([8], 0)).not.toEqual(a);
    expect(await draw([7], 1)).not.toEqual(a);
    // Image 1's bits with seed 9 do not depend on image 0's seed.
    expect(await draw([1, 9], 0, 1)).toEqual(await draw([2, 9], 0, 1));
  });

  it('matches the per-bit probabilities (χ²) and cuts values with probability ≤ 1 − top_p', async () => {
    // Bins of bits with known p1; tokens × 32 bits each, many draws per bin.
    const p1s = [0.02, 0.029, 0.031, 0.1, 0.3, 0.5, 0.62, 0.9, 0.969, 0.975, 0.995];
    const d = 32;
    const T = 1024;
    const host = new Float32Array(T * 2 * d);
    const binOf = new Int32Array(T * d);
    for (let g = 0; g < T * d; g++) {
      const bin = g % p1s.length;
      binOf[g] = bin;
      // ℓ1 − ℓ0 = logit(p1), split over both entries so the mix has something to add.
      const diff = Math.log(p1s[bin] / (1 - p1s[bin]));
      host[2 * g] = -diff / 2 + 0.25;
      host[2 * g + 1] = diff / 2 + 0.25;
    }
    const logits = gpu.upload(host, [T, 2 * d], 'f32');
    for (const topP of [1, 0.97]) {
      const ones = new Array<number>(p1s.length).fill(0);
      const total = new Array<number>(p1s.length).fill(0);
      const draws = 6;
      for (let s = 0; s < draws; s++) {
        const bits = (await sampleBits(gpu, { a: logits, wa: 1, wb: 0 }, { images: 1, tokens: T, bits: d, seeds: [1000 + s], stream: 3, topP }).read()) as Int32Array;
        for (let g = 0; g < bits.length; g++) {
          ones[binOf[g]] += bits[g];
          total[binOf[g]]++;
        }
      }
      let chi2 = 0;
      let df = 0;
      p1s.forEach((p, bin) => {
        const q = bitProbabilityRef(-Math.log(p / (1 - p)) / 2, Math.log(p / (1 - p)) / 2, 0, topP);
        if (topP < 1 && Math.min(p, 1 - p) <= 1 - topP) {
          // Cut: the likelier value every time.
          expect(ones[bin], `p1 ${p} top-p ${topP}`).toBe(p > 0.5 ? total[bin] : 0);
          expect(q).toBe(p > 0.5 ? 1 : 0);
          return;
        }
        expect(q).toBeCloseTo(p, 12);
        const r = chiSquare([ones[bin], total[bin] - ones[bin]], [q, 1 - q], total[bin]);
        chi2 += r.chi2;
        df += r.df;
      });
      expect(chi2, `χ² with ${df} df, top-p ${topP}`).toBeLessThan(chiBound(df));
      // Just above the cut (0.031 > 0.03) the minority value must still appear.
      if (topP < 1) expect(ones[p1s.indexOf(0.031)]).toBeGreaterThan(0);
    }
  });

  it('top-k 1 is greedy; ties and a top-p of 1 behave as documented', async () => {
    const host = new Float32Array([0.3, 0.1, -1, 2, 5, 5, 0, 0]); // 4 bits: 0 likelier, 1 likelier, tie, tie
    const logits = gpu.upload(host, [1, 8], 'f32');
    const greedy = await sampleBits(gpu, { a: logits, wa: 1, wb: 0 }, { images: 1, tokens: 1, bits: 4, seeds: [3], stream: 0, topK: 1 }).read();
    expect(Array.from(greedy.subarray(0, 2))).toEqual([0, 1]);
    // Ties under a tight top-p: both values have probability 0.5 ≤ 1 − 0.4, so the rule takes bit 1.
    const tight = await sampleBits(gpu, { a: logits, wa: 1, wb: 0 }, { images: 1, tokens: 1, bits: 4, seeds: [3], stream: 0, topP: 0.4 }).read();
    expect(Array.from(tight)).toEqual([0, 1, 1, 1]);
  });
});

describe(`token sampler for vocabulary heads (seed ${runSeed})`, () => {
  it('follows the top-k / top-p distribution (χ²) and agrees with the CPU twin draw for draw', async () => {
    const V = 10;
    const T = 1200;
    const row = [2.0, 1.5, 1.5, 0.2, -0.5, 0.9, 3.0, -2, 0.0, 1.1];
    const host = new Float32Array(T * V);
    for (let t = 0; t < T; t++) host.set(row, t * V);
    const logits = gpu.upload(host, [T, V], 'f32');
    for (const [topK, topP] of [[0, 1], [5, 1], [0, 0.8], [6, 0.7]]) {
      const seeds = [99];
      const got = (await sampleTokens(gpu, { a: logits, wa: 1, wb: 0 }, { images: 1, tokens: T, vocab: V, seeds, stream: 2, topK, topP }).read()) as Int32Array;
      const probs = Array.from(tokenDistributionRef(row, topK, topP));
      const counts = new Array<number>(V).fill(0);
      for (const v of got) counts[v]++;
      const { chi2, df } = chiSquare(counts, probs, T);
      expect(chi2, `top-k ${topK} top-p ${topP}: χ² ${chi2.toFixed(1)} with ${df} df`).toBeLessThan(chiBound(df));
      const u = randomUniformCpu(T, { key: seeds[0], stream: 2 });
      let differ = 0;
      for (let t = 0; t < T; t++) if (got[t] !== sampleTokenRef(row, u[t], topK, topP)) differ++;
      expect(differ).toBeLessThanOrEqual(2);
    }
  });

  it('handles a large vocabulary (not a multiple of the workgroup) with CFG, like the CPU twin', async () => {
    const rand = rng(runSeed + 2);
    const V = 3001;
    const B = 2;
    const T = 5;
    const host = randn(2 * B * T * V, rand, 3);
    const logits = gpu.upload(host, [2 * B * T, V], 'f32');
    const { wa, wb } = cfgWeights(4, 0.9);
    const seeds = [5, 6];
    for (const [topK, topP] of [[600, 0.8], [0, 0.95], [1, 1]]) {
      const got = (await sampleTokens(gpu, { a: logits, bBase: B * T, wa, wb }, { images: B, tokens: T, vocab: V, seeds, stream: 9, topK, topP }).read()) as Int32Array;
      for (let i = 0; i < B; i++) {
        const u = randomUniformCpu(T, { key: seeds[i], stream: 9 });
        for (let t = 0; t < T; t++) {
          const mixed = mixedRowRef({ a: host, bBase: B * T, wa, wb }, V, T, i, t);
          expect(got[i * T + t], `image ${i} token ${t} top-k ${topK} top-p ${topP}`).toBe(sampleTokenRef(mixed, u[t], topK, topP));
        }
      }
    }
  });
});
