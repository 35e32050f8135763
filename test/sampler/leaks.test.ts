// Every generation gives back all of its GPU memory: after a second generation with the same settings the
// pool's live bytes are what they were after the first (weights and caches only). Guards against handing a
// fresh result on as a view (`reshape`), which frees nothing when disposed (Tensor.as moves ownership).
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Gpu } from '../../engine/device.js';
import { StarModel } from '../../model/star/model.js';
import { VarVqvae } from '../../model/star/vqvae.js';
import { Engine } from '../../sampler/engine.js';
import { parsePolicy, starPresets } from '../../sampler/policy.js';
import { applyPolicy, policyPlanHook } from '../../sampler/policy_plan.js';
import { STAR_RANKS } from '../../sampler/rank_table.js';
import { runStarLoop, starVanillaPlan } from '../../sampler/star_loop.js';
import { fixture, releaseTestGpu, testGpu } from '../helpers.js';

afterAll(releaseTestGpu);

describe('no GPU memory is left behind by a generation', () => {
  let gpu: Gpu;
  beforeAll(async () => {
    gpu = await testGpu();
  });
  const live = () => gpu.stats().liveBytes;

  it('Infinity (demo model): vanilla, StageVAR RP + RTR, FastVAR pruning', async () => {
    const engine = await Engine.create({ gpu });
    try {
      const info = await engine.loadDemo();
      const ratios = Array.from({ length: info.chunks }, (_, c) => 0.1 + 0.05 * c);
      const policies = {
        vanilla: parsePolicy({ scales: {} }),
        stagevar: parsePolicy({ scales: { 5: { cfg: 0, tokens: { kind: 'rp', ratios, rope: 'sampled-slots' } }, 6: { cfg: 0, tokens: { kind: 'rp', ratios } } } }),
        fastvar: parsePolicy({ scales: { 5: { tokens: { kind: 'fastvar', prune: 0.4, layers: [0, 99], cacheScale: 4 } }, 6: { run: false } } }),
      };
      for (const [name, policy] of Object.entries(policies)) {
        const plan = policyPlanHook(policy, { chunks: info.chunks, depth: info.depth });
        await engine.generate({ prompt: 'a cat', seed: 1, size: 256, plan });
        const after = live();
        await engine.generate({ prompt: 'a cat', seed: 2, size: 256, plan });
        expect(live(), name).toBe(after);
      }
    } finally {
      engine.dispose();
    }
  });

  it("STAR: StageVAR's preset (per-layer RP + RTR, CFG 0 rows)", async () => {
    const dir = fixture('star-tiny');
    const model = await StarModel.load(gpu, `${dir}/model.safetensors`);
    const vq = await VarVqvae.load(gpu, `${dir}/vae.safetensors`);
    const C = model.config.textWidth;
    const text = {
      hidden: gpu.upload(Float32Array.from({ length: 2 * 4 * C }, (_, i) => Math.sin(i)), [2, 4, C], 'f32'),
      pooled: gpu.upload(Float32Array.from({ length: 2 * model.config.pooledWidth }, (_, i) => Math.cos(i)), [2, model.config.pooledWidth], 'f32'),
      mask: Int32Array.from([1, 1, 1, 0, 1, 1, 0, 0]),
    };
    try {
      const patchNums = [1, 2, 3, 4, 5];
      const ctx = { chunks: model.config.depth, depth: model.config.depth, table: STAR_RANKS, width: model.config.width, unit: 'layer' };
      const plans = applyPolicy(starPresets(5).stagevar, starVanillaPlan(patchNums, { cfg: 4.5 }), ctx).plans;
      const run = async (seed: number) => (await runStarLoop(gpu, { model, vq, text, patchNums, plans, seeds: [seed], topK: 600, topP: 0.8 })).fhat.dispose();
      await run(1);
      const after = live();
      await run(2);
      expect(live()).toBe(after);
      // Aborted inside the projected scale, after a layer replaced the token map: nothing is left behind either.
      const ctl = new AbortController();
      const aborted = runStarLoop(gpu, {
        model, vq, text, patchNums, plans, seeds: [3], topK: 600, topP: 0.8, signal: ctl.signal,
        draws: (_s, layer) => {
          if (layer === 0) ctl.abort();
          return null;
        },
      });
      await expect(aborted).rejects.toThrow(/abort/i);
      expect(live()).toBe(after);
    } finally {
      text.hidden.dispose();
      text.pooled.dispose();
      vq.dispose();
      model.dispose();
    }
  });
});
