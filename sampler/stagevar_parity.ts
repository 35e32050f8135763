// Parity against a StageVAR fixture (../shared/fixtures/stagevar-tiny and any fixture of its format: more
// block chunks, other widths, heads, text lengths, cfg). The fixture's config.json says what ran
// (scales_run / scales_skipped, cfg_list, tau_list, rp_scales, ranks or alpha, the RoPE convention); it is
// turned into a Policy and applied through the same code a user's `--policy` goes through
// (policy_plan.ts), then replayed teacher-forced through the same token runner the sampler uses, with the
// recorded draws rp.{c}.index (I) and rp.{c}.Q injected in place of the Philox ones. Every recorded key is
// compared: logits.* (the RP scale's unconditional only), chunk_in.*, rp.*.out, chunk_prev.*, chunk_out.*,
// latent (and image when the fixture has one). Register: registerParityRunner('stagevar', runStageVarParity).

import { join } from 'node:path';
import type { Gpu } from '../engine/device.js';
import type { Tensor } from '../engine/tensor.js';
import { fixtureInputs, loadFixtureModel, openInfinityFixture, type InfinityFixture } from '../model/infinity/parity.js';
import type { ParityPrecision } from '../model/parity/fixtures.js';
import { parityTolerance, relMaxError, type ParityEntry } from '../model/parity/measure.js';
import { loadBsqDecoder } from '../model/vae/load.js';
import { perScale, vanillaPlan } from './plan.js';
import type { Policy, ScaleRule } from './policy.js';
import { applyPolicy, type PolicyPlan } from './policy_plan.js';
import { runPolicyForced } from './policy_forced.js';
import { uploadDraw } from './rp.js';
import { nearestTemplate } from './schedule.js';
import type { ChunkEvent } from './stagevar.js';

/** Fixture RoPE conventions → the token policy's names. */
const ROPE: Readonly<Record<string, 'first-rows' | 'sampled-slots'>> = { first_r_raster: 'first-rows', sampled: 'sampled-slots', sampled_slots: 'sampled-slots', index: 'sampled-slots' };

/** The policy a StageVAR fixture's config.json describes. */
export function fixturePolicy(config: Record<string, unknown>, scales: number): Policy {
  const list = (k: string) => (Array.isArray(config[k]) ? (config[k] as number[]) : null);
  const run = list('scales_run');
  const skipped = list('scales_skipped') ?? (run ? Array.from({ length: scales }, (_, s) => s).filter((s) => !run.includes(s)) : []);
  const rpScales = list('rp_scales') ?? [];
  const cfg = perScale('cfg_list', (config.cfg_list ?? config.cfg ?? 1) as number | number[], scales);
  const rope = config.rope as { convention?: string } | undefined;
  const convention = rope?.convention ?? 'first_r_raster';
  if (!(convention in ROPE)) throw new Error(`stagevar fixture: unknown RoPE convention "${convention}" (known: ${Object.keys(ROPE).join(', ')})`);
  const ranks = config.ranks as Record<string, number> | undefined;
  const rules: Record<number, ScaleRule> = {};
  for (let s = 0; s < scales; s++) {
    if (skipped.includes(s)) {
      rules[s] = { run: false };
      continue;
    }
    const rule: ScaleRule = {};
    if (cfg[s] === 0) rule.cfg = 0;
    if (rpScales.includes(s)) {
      rule.tokens = ranks
        ? { kind: 'rp', ranks: Object.keys(ranks).sort((a, b) => Number(a) - Number(b)).map((c) => ranks[c]), rope: ROPE[convention] }
        : { kind: 'rp', alpha: String(config.alpha ?? '0.96'), rope: ROPE[convention] };
    }
    if (rule.cfg !== undefined || rule.tokens !== undefined) rules[s] = rule;
  }
  return { name: 'fixture', scales: rules };
}

/** The fixture's plans for a model with `chunks` chunks and `depth` layers. */
export function fixturePlans(f: InfinityFixture, chunks: number, depth: number): PolicyPlan[] {
  const n = f.schedule.length;
  const cfg = perScale('cfg_list', f.cfg, n);
  const tau = perScale('tau_list', (f.config.tau_list ?? f.config.tau ?? 1) as number | number[], n);
  const base = vanillaPlan(f.schedule, { cfg, tau });
  const alpha = f.config.alpha === undefined ? {} : { alpha: String(f.config.alpha) };
  return applyPolicy(fixturePolicy(f.config, n), base, { chunks, depth, ...alpha }).plans;
}

/**
 * Replays a StageVAR fixture (recorded draws injected) and compares every recorded key. `precision` runs
 * the f16 paths (the bar then defaults to F16_TOL instead of F32_TOL).
 */
export async function runStageVarParity(gpu: Gpu, dir: string, onEntry?: (e: ParityEntry) => void, tol?: number, precision: ParityPrecision = {}): Promise<ParityEntry[]> {
  const bar = tol ?? parityTolerance(precision);
  const f = await openInfinityFixture(dir);
  const model = await loadFixtureModel(gpu, f, precision);
  const kept = new Map<string, Tensor>();
  try {
    const { chunks, depth } = model.config;
    const plans = fixturePlans(f, chunks, depth);
    const rpScales = plans.filter((p) => p.run && p.tokens !== 'all').map((p) => p.scale);
    // The fixture format names the RP keys by chunk only (rp.{c}.*): one projected scale.
    if (rpScales.length !== 1) throw new Error(`stagevar fixture ${dir}: ${rpScales.length} projected scales; the format records one`);
    const inputs = await fixtureInputs(f);
    const batch = inputs.lens.length;
    // Read the recorded draws up front (the runner's draw hook is synchronous).
    const recorded: Array<{ index: Int32Array; q: Float32Array }> = [];
    for (let c = 0; c < chunks; c++) {
      recorded.push({
        index: Int32Array.from((await f.golden.readTensorToArray(`rp.${c}.index`)) as ArrayLike<number>),
        q: await f.golden.readTensorF32(`rp.${c}.Q`),
      });
    }
    const result = await runPolicyForced(gpu, {
      model,
      text: { features: inputs.text, lens: inputs.lens },
      schedule: f.schedule,
      template: nearestTemplate(f.ratio),
      plans,
      bits: inputs.bits,
      seeds: Array.from({ length: batch }, (_, i) => i),
      draws: (_scale, c, rows, M, r) => {
        const { index, q } = recorded[c];
        if (index.length !== rows.count * r || q.length !== rows.count * M * r) {
          throw new Error(`rp.${c}: recorded I has ${index.length} values and Q ${q.length}; chunk ${c} runs ${rows.count} row(s) of ${M} tokens at rank ${r}`);
        }
        return uploadDraw(gpu, index, q, rows.count, M, r);
      },
      observe: (e: ChunkEvent) => {
        if (e.scale !== rpScales[0]) return;
        const key = e.what === 'rp_out' ? `rp.${e.chunk}.out` : `${e.what}.${e.chunk}`;
        const copy = gpu.empty(e.x.shape, 'f32', key);
        gpu.copy(e.x, copy);
        kept.get(key)?.dispose();
        kept.set(key, copy);
      },
    });

    const entries: ParityEntry[] = [];
    const compare = async (key: string, got: ArrayLike<number>) => {
      const want = await f.golden.readTensorF32(key);
      const e: ParityEntry = { key, error: relMaxError(got, want), tol: bar };
      entries.push(e);
      onEntry?.(e);
    };
    for (let s = 0; s < f.schedule.length; s++) {
      const key = `logits.${s}`;
      if (!f.golden.has(key)) continue;
      const got = result.logits[s];
      if (!got) throw new Error(`${key} is recorded but the fixture's config skips scale ${s}`);
      await compare(key, got);
    }
    for (const what of ['chunk_in', 'rp', 'chunk_prev', 'chunk_out']) {
      for (let c = 0; c < chunks; c++) {
        const key = what === 'rp' ? `rp.${c}.out` : `${what}.${c}`;
        if (!f.golden.has(key)) continue;
        const t = kept.get(key);
        if (!t) throw new Error(`${key} is recorded but the replay produced no such tensor`);
        await compare(key, await t.readF32());
      }
    }
    if (f.golden.has('latent')) await compare('latent', result.latent);
    if (f.golden.has('image') && f.vaeChannels !== undefined) {
      const decoder = await loadBsqDecoder(gpu, join(f.dir, 'vae.safetensors'));
      try {
        const latent = gpu.upload(result.latent, result.latentShape, 'f32', 'latent');
        const image = decoder.decode(latent);
        latent.dispose();
        await compare('image', await image.readF32());
        image.dispose();
      } finally {
        decoder.dispose();
      }
    }
    return entries;
  } finally {
    for (const t of kept.values()) t.dispose();
    model.dispose();
    await f.golden.close();
  }
}
