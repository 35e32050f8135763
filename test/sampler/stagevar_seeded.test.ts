// Seeded StageVAR on the tiny Infinity model (7 scales, up to 16×16; bits forced from infinity-tiny so
// only the projection draws vary): a seed gives one result, another seed another, an image's result does
// not depend on what else is in the batch, and the RoPE variant changes the result. The token runner's
// vanilla path reproduces the fixture's logits.

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { InfinityModel } from '../../model/infinity/model.js';
import { fixtureInputs, loadFixtureModel, openInfinityFixture, type FixtureInputs, type InfinityFixture } from '../../model/infinity/parity.js';
import { vanillaPlan } from '../../sampler/plan.js';
import type { Policy, RpRope } from '../../sampler/policy.js';
import { applyPolicy, type PolicyPlan } from '../../sampler/policy_plan.js';
import { runPolicyForced } from '../../sampler/policy_forced.js';
import { fixture, relMaxError, releaseTestGpu, testGpu } from '../helpers.js';

afterAll(releaseTestGpu);

describe('seeded RP/RTR on the tiny model', () => {
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

  const plans = (policy: Policy): PolicyPlan[] => applyPolicy(policy, vanillaPlan(f.schedule, { cfg: 3, tau: 1 }), { chunks: model.config.chunks, depth: model.config.depth }).plans;
  const stagevar = (rope: RpRope): Policy => ({ name: 'tiny', scales: { 6: { cfg: 0, tokens: { kind: 'rp', ranks: [20, 60], rope } } } });

  /** Logits per scale for `seeds` (the fixture's prompt and bits repeated per image). */
  const run = async (policy: Policy, seeds: number[]) => {
    const B = seeds.length;
    const text = new Float32Array(inputs.text.length * B);
    for (let b = 0; b < B; b++) text.set(inputs.text, b * inputs.text.length);
    const bits = inputs.bits.map((x) => {
      const out = new Int32Array(x.length * B);
      for (let b = 0; b < B; b++) out.set(x, b * x.length);
      return out;
    });
    const r = await runPolicyForced(await testGpu(), {
      model, text: { features: text, lens: Array(B).fill(inputs.lens[0]) }, schedule: f.schedule, template: 1, plans: plans(policy), bits, seeds,
    });
    return r.logits.map((l) => l!);
  };

  it('vanilla through the token runner matches the fixture', async () => {
    const logits = await run({ name: 'vanilla', scales: {} }, [0]);
    for (let s = 0; s < f.schedule.length; s++) expect(relMaxError(logits[s], await f.golden.readTensorF32(`logits.${s}`)), `logits.${s}`).toBeLessThan(1e-3);
  });

  it('one seed, one result; another seed, another; independent of the batch', async () => {
    const a = await run(stagevar('first-rows'), [1]);
    const again = await run(stagevar('first-rows'), [1]);
    const other = await run(stagevar('first-rows'), [2]);
    const batch = await run(stagevar('first-rows'), [2, 1]);
    const last = a.length - 1;
    expect(a[last].length).toBe(256 * 64); // CFG 0: the unconditional row only
    expect(Array.from(again[last])).toEqual(Array.from(a[last]));
    for (let s = 0; s < last; s++) expect(Array.from(other[s])).toEqual(Array.from(a[s])); // RP only at the last scale
    expect(relMaxError(other[last], a[last])).toBeGreaterThan(1e-3);
    // Batch [seed 2, seed 1]: image 1's unconditional logits equal the single run's, image 0's the seed-2 run's.
    expect(relMaxError(batch[last].subarray(256 * 64), a[last])).toBeLessThan(1e-5);
    expect(relMaxError(batch[last].subarray(0, 256 * 64), other[last])).toBeLessThan(1e-5);
  });

  it('RoPE of the sampled slots is an option and changes the result (batched rows run one by one)', async () => {
    const first = await run(stagevar('first-rows'), [3, 4]);
    const slots = await run(stagevar('sampled-slots'), [3, 4]);
    const slotsOne = await run(stagevar('sampled-slots'), [4]);
    const last = first.length - 1;
    expect(relMaxError(slots[last], first[last])).toBeGreaterThan(1e-3);
    expect(relMaxError(slots[last].subarray(256 * 64), slotsOne[last])).toBeLessThan(1e-5);
  });
});
