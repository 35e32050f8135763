// STAR's next-scale loop (sampler/star_loop.ts) on the star-tiny fixture's transformer and VQ-VAE:
//  - greedy sampling (top-k 1) must pick, at every scale, the argmax of the CFG-mixed logits that the
//    teacher-forced path (proven against the official code in star_parity.test.ts) computes from the same
//    tokens: this checks the loop's plumbing (next-scale input, ramp t = cfg·s/(K−1), rows, accumulation);
//  - random projection at full rank with permutation draws is an exact re-ordering of the layer's tokens, so
//    it must reproduce the vanilla scale (RoPE of the sampled slots, restoration by scatter);
//  - StageVAR's STAR preset (CFG 0 on the last two scales, per-layer RP + RTR at the last) runs, is
//    deterministic per seed, and works for batch 2 and for another depth and head count.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Gpu } from '../../engine/device.js';
import type { Tensor } from '../../engine/tensor.js';
import type { StarTextInput } from '../../model/star/generation.js';
import { cfgRamp } from '../../model/star/config.js';
import { StarModel } from '../../model/star/model.js';
import { VarVqvae } from '../../model/star/vqvae.js';
import { Checkpoint } from '../../model/weights/checkpoint.js';
import type { ProjectedTokens } from '../../sampler/plan.js';
import { starPresets } from '../../sampler/policy.js';
import { applyPolicy, type PolicyPlan } from '../../sampler/policy_plan.js';
import { STAR_RANKS } from '../../sampler/rank_table.js';
import { uploadDraw } from '../../sampler/rp.js';
import { runStarLoop, starVanillaPlan, type StarLoopOptions } from '../../sampler/star_loop.js';
import { fixture, relMaxError, releaseTestGpu, rng, runSeed, testGpu } from '../helpers.js';
import { memorySource, randomStarState } from '../model/star_reference.js';

afterAll(releaseTestGpu);

const DIR = fixture('star-tiny');

describe(`STAR next-scale loop on star-tiny (seed ${runSeed})`, () => {
  let gpu: Gpu;
  let model: StarModel;
  let vq: VarVqvae;
  let patchNums: number[];
  let hidden: Float32Array;
  let pooled: Float32Array;
  let mask: Int32Array;
  let textShape: number[];
  const live: Tensor[] = [];

  beforeAll(async () => {
    gpu = await testGpu();
    const config = JSON.parse(await (await import('node:fs/promises')).readFile(`${DIR}/config.json`, 'utf8')) as { patch_nums: number[] };
    patchNums = config.patch_nums;
    model = await StarModel.load(gpu, `${DIR}/model.safetensors`);
    vq = await VarVqvae.load(gpu, `${DIR}/vae.safetensors`);
    const golden = await Checkpoint.open(`${DIR}/golden.safetensors`);
    try {
      hidden = await golden.getTensorF32('text.hidden');
      pooled = await golden.getTensorF32('text.pooled');
      textShape = golden.info('text.hidden').shape;
      const bytes = await golden.readTensorBytes('text.mask');
      mask = new Int32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength));
    } finally {
      await golden.close();
    }
  });

  afterAll(() => {
    for (const t of live) t.dispose();
    vq?.dispose();
    model?.dispose();
  });

  /** The fixture's text (one prompt row, one "" row) for `batch` images: [p × batch, "" × batch]. */
  function text(batch: number, width = model.config.textWidth, pooledWidth = model.config.pooledWidth, h = hidden, p = pooled): StarTextInput {
    const [, T] = textShape;
    const rowsOf = (data: Float32Array, n: number, row: number) => data.subarray(row * n, (row + 1) * n);
    const order = [...Array(batch).fill(0), ...Array(batch).fill(1)];
    const H = new Float32Array(order.length * T * width);
    const P = new Float32Array(order.length * pooledWidth);
    const M = new Int32Array(order.length * T);
    order.forEach((src, r) => {
      H.set(rowsOf(h, T * width, src), r * T * width);
      P.set(rowsOf(p, pooledWidth, src), r * pooledWidth);
      M.set(mask.subarray(src * T, (src + 1) * T), r * T);
    });
    const ht = gpu.upload(H, [order.length, T, width], 'f32', 'text');
    const pt = gpu.upload(P, [order.length, pooledWidth], 'f32', 'pooled');
    live.push(ht, pt);
    return { hidden: ht, pooled: pt, mask: M };
  }

  async function run(o: Partial<StarLoopOptions> & { plans: PolicyPlan[]; seeds: number[] }) {
    const r = await runStarLoop(gpu, { model, vq, text: text(o.seeds.length), patchNums, topK: 600, topP: 0.8, keepTokens: true, ...o });
    const fhat = await r.fhat.readF32();
    r.fhat.dispose();
    return { ...r, fhat };
  }

  it('greedy draws are the argmax of the teacher-forced CFG logits at every scale', async () => {
    const plans = starVanillaPlan(patchNums, { cfg: 4.5 });
    const got = await run({ plans, seeds: [7], topK: 1 });
    const tokens = got.tokens!;
    // Replay the same tokens through the teacher-forced building blocks (the parity path).
    const gen = model.begin({ text: text(1), patchNums, batch: 1 });
    const fhat = vq.newFhat(1, patchNums.at(-1)!);
    let next: Tensor | null = null;
    let mismatches = 0;
    try {
      for (let s = 0; s < patchNums.length; s++) {
        const pn = patchNums[s];
        const x = model.scaleInput(gen, s, next, gen.allRows());
        next?.dispose();
        const out = model.forward(x, gen, gen.step(s));
        x.dispose();
        const logits = model.guidedHead(out, cfgRamp(4.5, s, patchNums.length));
        out.dispose();
        const l = await logits.readF32();
        logits.dispose();
        const V = model.config.vocab;
        for (let t = 0; t < pn * pn; t++) {
          let best = 0;
          for (let v = 1; v < V; v++) if (l[t * V + v] > l[t * V + best]) best = v;
          if (best !== tokens[s][t]) mismatches++;
        }
        const idx = gpu.upload(tokens[s], [pn * pn], 'i32', 'idx');
        const h = vq.codes(idx, 1, pn);
        idx.dispose();
        next = vq.addScale(fhat, s, patchNums, h);
        h.dispose();
      }
      expect(mismatches).toBe(0);
      expect(relMaxError(got.fhat, await fhat.readF32())).toBeLessThan(1e-5);
    } finally {
      next?.dispose();
      fhat.dispose();
      gen.dispose();
    }
  });

  it('random projection at full rank with permutation draws reproduces the vanilla scale', async () => {
    const rand = rng(runSeed);
    const K = patchNums.length;
    const T = patchNums[K - 1] ** 2;
    const depth = model.config.depth;
    const vanilla = await run({ plans: starVanillaPlan(patchNums, { cfg: 4.5 }), seeds: [3], topK: 1 });
    const plans = starVanillaPlan(patchNums, { cfg: 4.5 });
    plans[K - 1] = { ...plans[K - 1], tokens: { kind: 'random-projection', ranks: Array(depth).fill(T), rope: 'sampled-slots', restore: 'area' } };
    const drawn: number[] = [];
    const projected = await run({
      plans,
      seeds: [3],
      topK: 1,
      draws: (scale, layer, rows, tokens, rank) => {
        drawn.push(layer);
        const n = rows.count;
        const index = new Int32Array(n * rank);
        const q = new Float32Array(n * tokens * rank);
        // One permutation for both CFG rows: the cross-attention output of row 0's k-th projected token is
        // added to the k-th token of every row (upstream's batch-row-0 broadcast), which is only the
        // vanilla result when both rows hold the same slots.
        const perm = Array.from({ length: tokens }, (_, i) => i);
        for (let i = tokens - 1; i > 0; i--) {
          const j = Math.floor(rand() * (i + 1));
          [perm[i], perm[j]] = [perm[j], perm[i]];
        }
        for (let b = 0; b < n; b++) {
          perm.forEach((slot, k) => {
            index[b * rank + k] = slot;
            q[(b * tokens + slot) * rank + k] = 1; // Q[m, k] = 1 iff m = I[k]: X̂ = rows I of X
          });
        }
        return uploadDraw(gpu, index, q, n, tokens, rank);
      },
    });
    expect(drawn).toEqual(Array.from({ length: depth }, (_, l) => l));
    expect(projected.ranks).toEqual([{ scale: K - 1, grid: [patchNums[K - 1], patchNums[K - 1]], rows: { start: 0, count: 2 }, ranks: Array(depth).fill(T), rope: 'sampled-slots' }]);
    // Same tokens before the last scale; at the last, equal up to f32 reordering (a near-tie may flip one).
    for (let s = 0; s < K - 1; s++) expect(projected.tokens![s]).toEqual(vanilla.tokens![s]);
    const last = projected.tokens![K - 1];
    const differ = last.filter((v, i) => v !== vanilla.tokens![K - 1][i]).length;
    expect(differ).toBeLessThanOrEqual(1);
    if (differ === 0) expect(relMaxError(projected.fhat, vanilla.fhat)).toBeLessThan(1e-5);
  });

  function stagevarPlans(m: StarModel, cfg = 4.5): PolicyPlan[] {
    const K = patchNums.length;
    return applyPolicy(starPresets(K).stagevar, starVanillaPlan(patchNums, { cfg }), { chunks: m.config.depth, depth: m.config.depth, table: STAR_RANKS, width: m.config.width, unit: 'layer' }).plans;
  }

  it("StageVAR's STAR preset: CFG 0 on the last two scales, per-layer ranks from the table, deterministic per seed", async () => {
    const K = patchNums.length;
    const plans = stagevarPlans(model);
    const T = patchNums[K - 1] ** 2;
    const basis = Math.min(T, model.config.width);
    const ratios = STAR_RANKS.ratios('0.96', K - 1, K, model.config.depth);
    expect(plans[K - 1].tokens).toEqual({ kind: 'random-projection', ranks: ratios.map((r) => Math.floor(r * basis) + 1), rope: 'sampled-slots', restore: 'area' });
    expect(plans.map((p) => p.branches)).toEqual([...Array(K - 2).fill('both'), 'uncond', 'uncond']);

    const a = await run({ plans, seeds: [11] });
    const b = await run({ plans, seeds: [11] });
    const c = await run({ plans, seeds: [12] });
    expect(a.tokens).toEqual(b.tokens);
    expect(a.fhat).toEqual(b.fhat);
    expect(c.tokens![K - 1]).not.toEqual(a.tokens![K - 1]);
    expect(a.stats.map((s) => s.rows)).toEqual([...Array(K - 2).fill(2), 1, 1]);
    expect(a.ranks.map((r) => r.scale)).toEqual([K - 1]);
    for (const t of a.tokens!) for (const v of t) expect(v >= 0 && v < model.config.vocab).toBe(true);
  });

  it('batch 2 and a 3-layer, 4-head model run the preset and decode to the right image size', async () => {
    const rand = rng(runSeed + 1);
    const sizes = { depth: 3, width: 96, heads: 4, levels: patchNums.length, textWidth: model.config.textWidth, pooledWidth: model.config.pooledWidth, vocab: model.config.vocab, codeDim: model.config.codeDim, ffn: 200 };
    const other = await StarModel.load(gpu, memorySource(randomStarState(sizes, rand)));
    try {
      const plans = stagevarPlans(other);
      expect((plans.at(-1)!.tokens as ProjectedTokens).ranks).toHaveLength(3);
      const r = await runStarLoop(gpu, { model: other, vq, text: text(2), patchNums, plans, seeds: [5, 6], topK: 600, topP: 0.8, keepTokens: true });
      try {
        expect(r.stats.map((s) => s.rows)).toEqual([...Array(patchNums.length - 2).fill(4), 2, 2]);
        const image = vq.decode(r.fhat);
        expect(image.shape).toEqual([2, 3, 16 * patchNums.at(-1)!, 16 * patchNums.at(-1)!]);
        const px = await image.readF32();
        image.dispose();
        expect(px.every((v) => v >= 0 && v <= 1)).toBe(true);
        // The two images have their own seeds: their last-scale tokens differ.
        const T = patchNums.at(-1)! ** 2;
        const last = r.tokens!.at(-1)!;
        expect(last.subarray(0, T)).not.toEqual(last.subarray(T));
      } finally {
        r.fhat.dispose();
      }
    } finally {
      other.dispose();
    }
  });
});
