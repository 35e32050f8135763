// FastVAR on the tiny Infinity model: pivotal-token selection against float64, the sub-module-wise layer
// equal to the model's layer (no pruning; and pruning 0 % through the gather/true-RoPE/scatter path, which
// only permutes the cache), and a forced run of a FastVAR policy (pruning 0 % reproduces vanilla; real
// pruning changes only the pruned scales).

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { InfinityModel } from '../../model/infinity/model.js';
import { fixtureInputs, loadFixtureModel, openInfinityFixture, type FixtureInputs, type InfinityFixture } from '../../model/infinity/parity.js';
import { SUB_MODULES, fastVarLayer, pivotalTokens, type SubModule } from '../../sampler/fastvar.js';
import { vanillaPlan } from '../../sampler/plan.js';
import type { Policy } from '../../sampler/policy.js';
import { applyPolicy } from '../../sampler/policy_plan.js';
import { runPolicyForced } from '../../sampler/policy_forced.js';
import { expectClose, randn, relMaxError, releaseTestGpu, rng, testGpu } from '../helpers.js';
import { fixture } from '../helpers.js';

afterAll(releaseTestGpu);

describe('FastVAR', () => {
  let f: InfinityFixture;
  let model: InfinityModel;
  let inputs: FixtureInputs;

  beforeAll(async () => {
    f = await openInfinityFixture(fixture('infinity-tiny'));
    model = await loadFixtureModel(await testGpu(), f);
    inputs = await fixtureInputs(f);
  }, 120_000);

  afterAll(async () => {
    model?.dispose();
    await f?.golden.close();
  });

  it('pivotal tokens: the K farthest from the row mean, farthest first', async () => {
    const gpu = await testGpu();
    const rand = rng(31);
    const [n, M, C, K] = [2, 70, 12, 20];
    const x = randn(n * M * C, rand);
    const { index } = pivotalTokens(gpu, gpu.upload(x, [n * M, C], 'f32'), n, M, K);
    const got = (await index.read()) as Int32Array;
    for (let b = 0; b < n; b++) {
      const mean = new Float64Array(C);
      for (let i = 0; i < M; i++) for (let c = 0; c < C; c++) mean[c] += x[(b * M + i) * C + c] / M;
      const s = Array.from({ length: M }, (_, i) => mean.reduce((acc, m, c) => acc + (x[(b * M + i) * C + c] - m) ** 2, 0));
      const want = Array.from({ length: M }, (_, i) => i).sort((i, j) => s[j] - s[i]).slice(0, K);
      expect(Array.from(got.subarray(b * K, (b + 1) * K))).toEqual(want);
    }
  });

  /** A layer of scale 2 (4×4) on random x in a fresh generation, by `run`. */
  const layerOut = async (run: (x: ReturnType<typeof Object>, gen: any, step: any) => void) => {
    const gpu = await testGpu();
    const gen = model.begin({ text: { features: inputs.text, lens: inputs.lens, guidance: true }, schedule: f.schedule, ropeGrid: [64, 64] });
    const step = gen.step(2);
    const x = gpu.upload(randn(2 * 16 * model.config.width, rng(32)), [2 * 16, model.config.width], 'f32');
    run(x, gen, step);
    const out = await x.readF32();
    gen.dispose();
    return out;
  };

  it('sub-module by sub-module equals the model\'s layer; records each sub-module\'s output', async () => {
    const want = await layerOut((x, gen, step) => model.runLayer(1, x, gen, step));
    const seen: SubModule[] = [];
    const got = await layerOut((x, gen, step) => fastVarLayer(model, 1, x, gen, step, { keep: null, grid: [4, 4], record: (p, y) => { seen.push(p); expect(y.shape).toEqual(x.shape); } }));
    expect(seen).toEqual([...SUB_MODULES]);
    expectClose(got, want, { rtol: 1e-4, atol: 1e-5, what: 'layer' });
  });

  it('pruning 0 %: kept tokens in another order, true RoPE positions, scattered back — the same layer', async () => {
    const gpu = await testGpu();
    const want = await layerOut((x, gen, step) => model.runLayer(1, x, gen, step));
    const junk = gpu.upload(new Float32Array(2 * 4 * model.config.width).fill(1e3), [2 * 4, model.config.width], 'f32');
    const got = await layerOut((x, gen, step) => fastVarLayer(model, 1, x, gen, step, { keep: 16, grid: [4, 4], cachedGrid: [2, 2], cached: () => junk }));
    expectClose(got, want, { rtol: 1e-4, atol: 1e-5, what: 'layer' });
  });

  const fastvar = (prune: number): Policy => ({
    name: 'tiny-fastvar',
    scales: { 5: { tokens: { kind: 'fastvar', prune, layers: [1, 28], cacheScale: 4 } }, 6: { tokens: { kind: 'fastvar', prune, layers: [1, 28], cacheScale: 4 } } },
  });
  const run = async (policy: Policy) => {
    const plans = applyPolicy(policy, vanillaPlan(f.schedule, { cfg: 3, tau: 1 }), { chunks: model.config.chunks, depth: model.config.depth }).plans;
    const r = await runPolicyForced(await testGpu(), { model, text: { features: inputs.text, lens: inputs.lens }, schedule: f.schedule, template: 1, plans, bits: inputs.bits, seeds: [0] });
    return r.logits.map((l) => l!);
  };

  it('a FastVAR policy: 0 % pruning is vanilla; pruning changes only the pruned scales', async () => {
    const vanilla = await run({ name: 'vanilla', scales: {} });
    const none = await run(fastvar(0));
    const half = await run(fastvar(0.5));
    for (let s = 0; s < vanilla.length; s++) expect(relMaxError(none[s], vanilla[s]), `scale ${s}`).toBeLessThan(1e-4);
    for (let s = 0; s < 5; s++) expect(Array.from(half[s])).toEqual(Array.from(vanilla[s]));
    for (const s of [5, 6]) {
      expect(half[s].every(Number.isFinite)).toBe(true);
      expect(relMaxError(half[s], vanilla[s])).toBeGreaterThan(1e-3);
    }
  });
});
