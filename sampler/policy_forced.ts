// Teacher-forced run of a policy's plans: the sampler loop's per-scale structure (skip, row groups per
// branch choice, token runner per scale) with the bits given instead of drawn. It is how StageVAR
// fixtures are replayed (stagevar_parity.ts) and how the RP/RTR path is checked for determinism without
// the sampler: the only randomness left is the projection's own.

import type { Gpu } from '../engine/device.js';
import type { Tensor } from '../engine/tensor.js';
import type { Generation, RowRange } from '../model/infinity/generation.js';
import { BitLatent } from '../model/infinity/latent.js';
import type { InfinityModel } from '../model/infinity/model.js';
import type { PolicyPlan } from './policy_plan.js';
import { ropeGrid, type Grid } from './schedule.js';
import { TokenRunner, type ChunkEvent, type DrawSource } from './stagevar.js';

export interface PolicyForcedOptions {
  model: InfinityModel;
  /** Packed text features [Σ lens, textWidth] and the prompt lengths (B = lens.length). */
  text: { features: Float32Array; lens: readonly number[] };
  schedule: readonly Grid[];
  /** h/w template of the RoPE grid. */
  template: number;
  plans: readonly PolicyPlan[];
  /** Forced bits [B, h·w, bits] per scale (entries of skipped scales are not read). */
  bits: ReadonlyArray<Int32Array>;
  /** One seed per image (the projections' Philox key). */
  seeds: readonly number[];
  draws?: DrawSource;
  observe?: (e: ChunkEvent) => void;
}

export interface PolicyForcedResult {
  /** Raw logits per scale [rows, h·w, 2·bits] (cond rows then uncond rows of the rows that ran), null when skipped. */
  logits: Array<Float32Array | null>;
  latent: Float32Array;
  latentShape: number[];
}

export async function runPolicyForced(gpu: Gpu, o: PolicyForcedOptions): Promise<PolicyForcedResult> {
  const { model, schedule, plans } = o;
  const { config } = model;
  const batch = o.text.lens.length;
  const gen = model.begin({ text: { features: o.text.features, lens: o.text.lens, guidance: plans.some((p) => p.run && p.branches !== 'cond') }, schedule, ropeGrid: ropeGrid(o.template) });
  const runner = new TokenRunner({ model, plans, seeds: o.seeds, ...(o.draws ? { draws: o.draws } : {}), ...(o.observe ? { observe: o.observe } : {}) });
  const latent = new BitLatent(gpu, { batch, channels: config.vaeChannels, patch: config.patch, finalGrid: schedule[schedule.length - 1] });
  const logits: Array<Float32Array | null> = [];
  try {
    for (const plan of plans) {
      if (!plan.run) {
        logits.push(null);
        continue;
      }
      const input = plan.scale === 0 ? null : latent.nextInput(plan.grid);
      const parts: Float32Array[] = [];
      for (const rows of rowGroups(gen, plan)) {
        const step = gen.step(plan.scale, rows);
        const x = input ? model.embedTokens(gen, input, rows) : model.sosInput(gen, rows);
        const lx = model.addLevel(x, plan.scale);
        x.dispose();
        const y = runner.runChunks(gen, plan, step, lx);
        const l = model.head(y, gen, step);
        y.dispose();
        parts.push(await l.readF32());
        l.dispose();
      }
      input?.dispose();
      logits.push(concat(parts));
      const [h, w] = plan.grid;
      const bits = o.bits[plan.scale];
      if (!bits || bits.length !== batch * h * w * config.bitsPerToken) throw new Error(`bits of scale ${plan.scale}: expected [${batch}, ${h * w}, ${config.bitsPerToken}]`);
      const t: Tensor = gpu.upload(bits, [batch, h * w, config.bitsPerToken], 'i32', 'forced-bits');
      latent.addBits(t, plan.grid);
      t.dispose();
    }
    return { logits, latent: await latent.latent.readF32(), latentShape: [...latent.latent.shape] };
  } finally {
    runner.dispose();
    latent.dispose();
    gen.dispose();
  }
}

/** As the sampler loop groups rows: both branches in one pass while their caches agree. */
function rowGroups(gen: Generation, plan: PolicyPlan): RowRange[] {
  if (plan.branches === 'cond') return [gen.condRows()];
  if (plan.branches === 'uncond') return [gen.uncondRows()];
  const same = gen.cache.lengths.every((perRow) => perRow.every((len) => len === perRow[0]));
  return same ? [gen.allRows()] : [gen.condRows(), gen.uncondRows()];
}

function concat(parts: Float32Array[]): Float32Array {
  if (parts.length === 1) return parts[0];
  const out = new Float32Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}
