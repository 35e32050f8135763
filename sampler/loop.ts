// The next-scale loop of Infinity (spec infinity.md §11), free-running: the same building blocks as the
// teacher-forced replay (model/infinity/teacher_forced.ts), with the bits drawn by the sampler. Every
// per-scale decision comes from the ScalePlan of that scale (plan.ts): whether it runs, which branch
// rows run, cfg and τ, and which tokens go through the block chunks (`runChunks`, the one hook a token
// policy such as StageVAR's random projection plugs into).
//
//   gen = model.begin(text, schedule)                    text constants, RoPE table, KV cache
//   F = 0                                                 BitLatent, on the final (VAE) grid
//   for each scale s with plan.run:
//     x   = sos (s = 0) or word_embed(Down(F → grid_s)) for the plan's rows
//     x  += lvl_embed[s]; x = chunks(x); ℓ = head(x)     (KV cache grows by the scale's tokens)
//     bits = sample(mix(ℓ), seed per image, stream s)
//     F  += Up(codes(bits))
// Skipped scales contribute nothing and draw nothing; the stream of scale s is s whatever runs before it,
// so skipping a scale never changes the bits of another.

import type { Gpu } from '../engine/device.js';
import type { Tensor } from '../engine/tensor.js';
import { sampleBits, cfgWeights, type LogitMix } from '../kernels/sample.js';
import type { Generation, RowRange } from '../model/infinity/generation.js';
import { BitLatent } from '../model/infinity/latent.js';
import type { InfinityModel } from '../model/infinity/model.js';
import type { TextInput } from '../model/infinity/text.js';
import { needsGuidance, validatePlans, type ScalePlan } from './plan.js';
import { ropeGrid, type Grid } from './schedule.js';
import { driveScales, type ScaleStats } from './scale_driver.js';
import { TokenRunner } from './stagevar.js';

/** Philox stream word of scale s's bit draws (other draws, e.g. StageVAR's projections, use streams ≥ 2¹⁶). */
export const bitStream = (scale: number): number => scale;

export interface LoopOptions {
  model: InfinityModel;
  /** Text of the B images (one packed entry per image); `guidance` is decided by the plans. */
  text: Omit<TextInput, 'guidance'>;
  schedule: readonly Grid[];
  /** h/w template whose 1M final grid holds the RoPE positions. */
  template: number;
  plans: readonly ScalePlan[];
  /** One Philox key per image. */
  seeds: readonly number[];
  topK?: number;
  topP?: number;
  signal?: AbortSignal;
  /** Read back every run scale's bits ([B, h·w, bits] each; empty for skipped scales). */
  keepBits?: boolean;
  /** Called after each scale (run or skipped), once its work is done on the GPU. */
  onScale?: (stats: ScaleStats) => void;
  /** Called after each run scale with the summed latent so far (for `--trace`); the tensor is live only during the call. */
  onLatent?: (scale: number, latent: Tensor) => void | Promise<void>;
}

export type { ScaleStats } from './scale_driver.js';

export interface LoopResult {
  /** The decoder's input F [B, d, p·H, p·W]; the caller disposes it. */
  latent: BitLatent;
  stats: ScaleStats[];
  /** Time to compute the per-generation text constants (pooling, cross-attention K/V, AdaLN vectors). */
  conditioningMs: number;
  /** Time spent in `onLatent` (trace decodes), part of the loop's wall time but of no scale's. */
  traceMs: number;
  bits?: Int32Array[];
}

const now = () => performance.now();

export async function runNextScaleLoop(gpu: Gpu, o: LoopOptions): Promise<LoopResult> {
  const { model, schedule, plans } = o;
  const { config } = model;
  validatePlans(plans, schedule);
  const batch = o.text.lens.length;
  if (o.seeds.length !== batch) throw new Error(`${o.seeds.length} seeds for ${batch} images`);
  if (schedule.length > config.levels) {
    throw new Error(`the schedule has ${schedule.length} scales but the model has level embeddings for ${config.levels}`);
  }
  o.signal?.throwIfAborted();

  const t0 = now();
  const gen = model.begin({ text: { ...o.text, guidance: needsGuidance(plans) }, schedule, ropeGrid: ropeGrid(o.template) });
  const runner = new TokenRunner({ model, plans, seeds: o.seeds, ...(o.signal ? { signal: o.signal } : {}) });
  let latent: BitLatent | null = null;
  try {
    await gpu.sync();
    const conditioningMs = now() - t0;
    const F = new BitLatent(gpu, { batch, channels: config.vaeChannels, patch: config.patch, finalGrid: schedule[schedule.length - 1] });
    latent = F;
    const bits: Int32Array[] = [];
    const { stats, traceMs } = await driveScales(gpu, plans, {
      ...(o.signal ? { signal: o.signal } : {}),
      ...(o.onScale ? { onScale: o.onScale } : {}),
      skip: () => {
        if (o.keepBits) bits.push(new Int32Array(0));
      },
      run: async (plan) => {
        const drawn = runScale(gpu, o, gen, F, plan, runner);
        F.addBits(drawn.bits, plan.grid);
        if (o.keepBits) bits.push((await drawn.bits.read()) as Int32Array);
        drawn.bits.dispose();
        return drawn.rows;
      },
      ...(o.onLatent ? { trace: (plan: ScalePlan) => o.onLatent!(plan.scale, F.latent) } : {}),
    });
    const result: LoopResult = { latent, stats, conditioningMs, traceMs };
    if (o.keepBits) result.bits = bits;
    return result;
  } catch (err) {
    latent?.dispose();
    throw err;
  } finally {
    runner.dispose();
    gen.dispose();
  }
}

/** Forward of one scale on the plan's rows and the draw of its bits (recorded, not awaited). */
function runScale(gpu: Gpu, o: LoopOptions, gen: Generation, latent: BitLatent, plan: ScalePlan, runner: TokenRunner): { bits: Tensor; rows: number } {
  const { model } = o;
  const groups = rowGroups(gen, plan);
  // The next-scale input is built once per image and shared by both branches (upstream duplicates it).
  const input = plan.scale === 0 ? null : latent.nextInput(plan.grid);
  const logits: Tensor[] = [];
  try {
    for (const rows of groups) logits.push(forwardRows(o, gen, plan, rows, input, runner));
  } catch (err) {
    for (const t of logits) t.dispose();
    throw err;
  } finally {
    input?.dispose();
  }
  const batch = gen.batch;
  const tokens = plan.grid[0] * plan.grid[1];
  let mix: LogitMix;
  if (plan.branches === 'both') {
    const { wa, wb } = cfgWeights(plan.cfg, plan.tau);
    // One group holds [cond rows; uncond rows]; two groups hold one branch each.
    mix = logits.length === 1 ? { a: logits[0], aBase: 0, b: logits[0], bBase: batch * tokens, wa, wb } : { a: logits[0], b: logits[1], wa, wb };
  } else {
    mix = { a: logits[0], wa: 1 / plan.tau, wb: 0 };
  }
  const bits = sampleBits(gpu, mix, {
    images: batch,
    tokens,
    bits: model.config.bitsPerToken,
    seeds: o.seeds,
    stream: bitStream(plan.scale),
    topK: o.topK ?? 0,
    topP: o.topP ?? 1,
  });
  for (const t of logits) t.dispose();
  return { bits, rows: groups.reduce((n, g) => n + g.count, 0) };
}

/** The row ranges that run together for a plan: both branches in one pass when their caches agree. */
function rowGroups(gen: Generation, plan: ScalePlan): RowRange[] {
  switch (plan.branches) {
    case 'cond':
      return [gen.condRows()];
    case 'uncond':
      return [gen.uncondRows()];
    case 'both':
      if (!gen.guidance) throw new Error(`scale ${plan.scale} asks for both branches but the generation has no unconditional rows`);
      // After an unconditional-only scale the branches' caches differ in length: run them one after the other.
      return sameHistory(gen) ? [gen.allRows()] : [gen.condRows(), gen.uncondRows()];
  }
}

function sameHistory(gen: Generation): boolean {
  return gen.cache.lengths.every((perRow) => perRow.every((len) => len === perRow[0]));
}

/** Scale input → level embedding → block chunks → head, for one row range. Returns logits [rows·T, 2·bits]. */
function forwardRows(o: LoopOptions, gen: Generation, plan: ScalePlan, rows: RowRange, input: Tensor | null, runner: TokenRunner): Tensor {
  const { model } = o;
  const step = gen.step(plan.scale, rows);
  const x = input ? model.embedTokens(gen, input, rows) : model.sosInput(gen, rows);
  let cur = model.addLevel(x, plan.scale);
  x.dispose();
  try {
    cur = runner.runChunks(gen, plan, step, cur);
    return model.head(cur, gen, step);
  } finally {
    cur.dispose();
  }
}
