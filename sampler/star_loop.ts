// The next-scale loop of STAR (spec star.md §6.1), on the same per-scale plans, policy table and scale walk
// (scale_driver.ts) as Infinity's loop, and the same RP/RTR steps (rp.ts): each ScalePlan says whether the
// scale runs, which CFG rows run, and which tokens go through the layers. What differs from Infinity is the
// model's state (a VQ-VAE f_hat, one token index per position) and StageVAR's unit: STAR's port projects
// **per layer**, not per block chunk.
//
//   gen = model.begin(text)                                  start tokens, text K/V, RoPE, KV cache
//   f_hat = 0                                                [B, d, P, P]
//   for each scale s with plan.run:
//     x  = sos (s = 0) or word_embed(area(f_hat → pn_s)); x += lvl_embed[s]          for the plan's rows
//     for each layer l: x = block_l(x)                        or, under random projection (StageVAR):
//         I, Q = draw(x) ;  x̂ = QᵀX ;  x̂ = block_l(x̂) at the RoPE of I ;  x = area(y_l at the last run scale) ; x[I] = x̂
//     ℓ  = head((1+t)·LN x_c − t·LN x_u), t = cfg·s/(K−1)   (both rows; the head is linear)   or head(LN x)
//     idx = top-k → top-p → draw (seed per image, stream s) ;  f_hat += φ(bicubic(codebook[idx] → P))
// The loop is the paper's algorithm read per scale: the plan of a refinement scale drops the conditional
// rows (CFG 0: their caches stop, the cross-attention reads the "" text), and projects its tokens.

import type { Gpu } from '../engine/device.js';
import type { Tensor } from '../engine/tensor.js';
import { copyRows } from '../kernels/layout.js';
import { sampleTokens, type LogitMix } from '../kernels/sample.js';
import { cfgRamp } from '../model/star/config.js';
import type { RowRange, StarGeneration, StarTextInput } from '../model/star/generation.js';
import type { KvDType } from '../model/kv_cache.js';
import type { StarModel } from '../model/star/model.js';
import type { VarVqvae } from '../model/star/vqvae.js';
import { driveScales, type ScaleStats } from './scale_driver.js';
import { needsGuidance, perScale, validatePlans, type PerScale, type ProjectedTokens } from './plan.js';
import { checkPolicyPlans, restoreSource, type PolicyPlan } from './policy_plan.js';
import { disposeDraw, drawRp, project, restore, slotRopeTable, type RpDraw } from './rp.js';
import type { RankTrace } from './stagevar.js';
import type { Grid } from './schedule.js';

/** Supplies the draws of (scale, layer) instead of the Philox streams (tests; null: draw as usual). */
export type StarDrawSource = (scale: number, layer: number, rows: RowRange, tokens: number, rank: number) => RpDraw | null;

export interface StarLoopOptions {
  model: StarModel;
  vq: VarVqvae;
  /** Text rows: B prompts, then (when a plan uses the unconditional branch) B rows of the "" text. */
  text: StarTextInput;
  patchNums: readonly number[];
  plans: readonly PolicyPlan[];
  /** One Philox key per image (its token draws and StageVAR's projections). */
  seeds: readonly number[];
  /** Top-k (0 = off) and top-p (1 = off) of each token's distribution (STAR: 600 and 0.8). */
  topK: number;
  topP: number;
  /** KV cache dtype (default: the model's). */
  cacheDtype?: KvDType;
  signal?: AbortSignal;
  /** Read back every run scale's token indices ([B·pn²] each; empty for skipped scales). */
  keepTokens?: boolean;
  draws?: StarDrawSource;
  onScale?: (stats: ScaleStats) => void;
  /** Called after each run scale with f_hat so far (for `--trace`); the tensor is live only during the call. */
  onLatent?: (scale: number, fhat: Tensor) => void | Promise<void>;
}

export interface StarLoopResult {
  /** The decoder's input f_hat [B, d, P, P]; the caller disposes it. */
  fhat: Tensor;
  stats: ScaleStats[];
  conditioningMs: number;
  /** Time spent in `onLatent` (trace decodes), part of the loop's wall time but of no scale's. */
  traceMs: number;
  /** Ranks used at each projected scale (for --trace). */
  ranks: RankTrace[];
  tokens?: Int32Array[];
}

/** Philox stream word of scale s's token draws (StageVAR's projections use streams ≥ 2¹⁶, rp.ts). */
export const tokenStream = (scale: number): number => scale;

const now = () => performance.now();

/** STAR's schedule as grids. */
export const starGrids = (patchNums: readonly number[]): Grid[] => patchNums.map((pn) => [pn, pn] as const);

/**
 * Upstream STAR's sampler as plans: every scale on both rows with the guidance ramp t = cfg·s/(K−1), τ 1 (STAR
 * has no temperature; another τ divides the mixed logits). A cfg of 0 is STAR's own meaning, t = 0: the
 * conditional logits (with 0 on every scale the "" rows are not run at all). StageVAR's other meaning of 0 —
 * that scale on the "" rows alone (`cfg[si] == 0 → x = x[B:]` in its port) — comes only from a policy's rule.
 */
export function starVanillaPlan(patchNums: readonly number[], o: { cfg: PerScale; tau?: PerScale }): PolicyPlan[] {
  const K = patchNums.length;
  const cfg = perScale('cfg', o.cfg, K);
  const tau = perScale('tau', o.tau ?? 1, K);
  const guidance = cfg.some((c) => c !== 0);
  return patchNums.map((pn, scale) => ({
    scale,
    grid: [pn, pn] as const,
    run: true,
    branches: guidance ? ('both' as const) : ('cond' as const),
    cfg: cfg[scale],
    tau: tau[scale],
    tokens: 'all' as const,
  }));
}

/** Checks plans against a STAR schedule: square grids of the patch sides, no FastVAR, and the policy rules. */
export function checkStarPlans(plans: readonly PolicyPlan[], patchNums: readonly number[], depth: number): void {
  validatePlans(plans, starGrids(patchNums));
  for (const p of plans) {
    if (p.tokens !== 'all' && p.tokens.kind === 'fastvar') throw new RangeError(`scale ${p.scale}: FastVAR token pruning is implemented for Infinity only`);
  }
  checkPolicyPlans(plans, { chunks: depth, depth, unit: 'layer' });
}

export async function runStarLoop(gpu: Gpu, o: StarLoopOptions): Promise<StarLoopResult> {
  const { model, vq, patchNums, plans } = o;
  const { config } = model;
  checkStarPlans(plans, patchNums, config.depth);
  const batch = o.seeds.length;
  const guidance = needsGuidance(plans);
  const rows = o.text.hidden.shape[0];
  if (rows !== (guidance ? 2 * batch : batch)) {
    throw new Error(`${rows} text rows for ${batch} images ${guidance ? 'with guidance (needs 2B: prompts, then the "" rows)' : 'without guidance (needs B)'}`);
  }
  if (vq.config.codeDim !== config.codeDim || vq.config.codebookSize !== config.vocab) {
    throw new Error(`the VQ-VAE has ${vq.config.codebookSize} codes of ${vq.config.codeDim} channels but the transformer predicts ${config.vocab} codes embedded from ${config.codeDim}`);
  }
  o.signal?.throwIfAborted();

  const t0 = now();
  const gen = model.begin({ text: o.text, patchNums, batch, ...(o.cacheDtype ? { cacheDtype: o.cacheDtype } : {}) });
  const layers = new LayerRecorder(gpu, plans);
  const P = patchNums[patchNums.length - 1];
  let fhat: Tensor | null = null;
  try {
    await gpu.sync();
    const conditioningMs = now() - t0;
    const F = vq.newFhat(batch, P);
    fhat = F;
    const tokens: Int32Array[] = [];
    const ranks: RankTrace[] = [];
    const { stats, traceMs } = await driveScales(gpu, plans, {
      ...(o.signal ? { signal: o.signal } : {}),
      ...(o.onScale ? { onScale: o.onScale } : {}),
      skip: () => {
        if (o.keepTokens) tokens.push(new Int32Array(0));
      },
      run: async (plan) => {
        const pn = patchNums[plan.scale];
        const rows = branchRows(gen, plan);
        const next = plan.scale === 0 ? null : vq.nextInput(F, pn);
        let x: Tensor;
        try {
          x = model.scaleInput(gen, plan.scale, next, rows);
        } finally {
          next?.dispose();
        }
        let idx: Tensor;
        try {
          x = runLayers(o, gen, plan, rows, x, layers, ranks);
          idx = sampleScale(gpu, o, gen, plan, x, batch);
        } finally {
          x.dispose();
        }
        try {
          const h = vq.codes(idx, batch, pn);
          try {
            vq.accumulate(F, plan.scale, patchNums, h);
          } finally {
            h.dispose();
          }
          if (o.keepTokens) tokens.push((await idx.read()) as Int32Array);
        } finally {
          idx.dispose();
        }
        return rows.count;
      },
      ...(o.onLatent ? { trace: (plan: PolicyPlan) => o.onLatent!(plan.scale, F) } : {}),
    });
    const result: StarLoopResult = { fhat, stats, conditioningMs, traceMs, ranks };
    if (o.keepTokens) result.tokens = tokens;
    return result;
  } catch (err) {
    fhat?.dispose();
    throw err;
  } finally {
    layers.dispose();
    gen.dispose();
  }
}

/** The sequence rows a plan runs: both branches (one pass: the policy rules keep their caches equal), or one. */
function branchRows(gen: StarGeneration, plan: PolicyPlan): RowRange {
  switch (plan.branches) {
    case 'both':
      return gen.allRows();
    case 'uncond':
      return gen.uncondRows();
    case 'cond':
      return gen.condRows();
  }
}

/** The layers of one scale on x [n, T, C] (the caller disposes x, also on an error) → the last layer's full
 *  output (x itself, or a new tensor once a projected layer replaced it; x is then already freed). */
function runLayers(o: StarLoopOptions, gen: StarGeneration, plan: PolicyPlan, rows: RowRange, x: Tensor, layers: LayerRecorder, ranks: RankTrace[]): Tensor {
  const { model } = o;
  const T = plan.grid[0] * plan.grid[1];
  const tokens = plan.tokens;
  layers.begin(plan, rows);
  if (tokens === 'all') {
    const step = gen.step(plan.scale, rows);
    for (let l = 0; l < model.config.depth; l++) {
      o.signal?.throwIfAborted();
      model.runLayer(l, x, gen, step);
      layers.record(l, x, rows, T);
    }
    return x;
  }
  if (tokens.kind !== 'random-projection') throw new Error(`scale ${plan.scale}: token policy ${tokens.kind} is not available for STAR`);
  ranks.push({ scale: plan.scale, grid: plan.grid, rows, ranks: [...tokens.ranks], rope: tokens.rope });
  const scale: ProjectedScale = {
    o,
    gen,
    plan,
    rows,
    tokens,
    keys: Array.from({ length: rows.count }, (_, i) => o.seeds[gen.promptOf(rows.start + i)]),
    table: gen.scaleRope(plan.scale),
    source: layers.source(plan.scale),
    layers,
  };
  let cur = x;
  try {
    for (let l = 0; l < model.config.depth; l++) cur = projectedLayer(scale, l, cur);
  } catch (err) {
    if (cur !== x) cur.dispose();
    throw err;
  }
  return cur;
}

/** What every layer of one projected scale shares. */
interface ProjectedScale {
  o: StarLoopOptions;
  gen: StarGeneration;
  plan: PolicyPlan;
  rows: RowRange;
  tokens: ProjectedTokens;
  /** Philox key of each row (its image's seed). */
  keys: number[];
  /** The scale's RoPE table [T, D/2, 2]. */
  table: Tensor;
  source: ReturnType<LayerRecorder['source']>;
  layers: LayerRecorder;
}

/** Layer l on the r projected rows of cur [n, T, C], restored to the T tokens: returns the new map (cur freed). */
function projectedLayer(p: ProjectedScale, l: number, cur: Tensor): Tensor {
  const { o, gen, plan, rows, tokens, table } = p;
  const gpu = o.model.gpu;
  const T = plan.grid[0] * plan.grid[1];
  const C = o.model.config.width;
  o.signal?.throwIfAborted();
  const r = tokens.ranks[l];
  const draw = o.draws?.(plan.scale, l, rows, T, r) ?? drawRp(gpu, cur, { tokens: T, rank: r, keys: p.keys, scale: plan.scale, chunk: l });
  let projected: Tensor | null = null;
  let rope: Tensor | null = null;
  try {
    projected = project(gpu, draw.q, cur);
    // The official port rotates row k by the phase of its slot I[k]; 'first-rows' (Infinity's port) by cell k.
    rope = tokens.rope === 'sampled-slots' ? slotRopeTable(gpu, table, 0, T, draw.index) : null;
    o.model.runLayer(l, projected, gen, gen.customStep(rows, rope ?? table.rows(0, r), r));
    const prev = p.source.output(l, rows);
    let restored: Tensor;
    try {
      restored = restore(gpu, prev.tensor, p.source.grid, plan.grid, projected.reshape([rows.count * r, C]), draw.slots).as([rows.count, T, C]);
    } finally {
      prev.release();
    }
    p.layers.record(l, restored, rows, T);
    cur.dispose();
    return restored;
  } finally {
    projected?.dispose();
    rope?.dispose();
    disposeDraw(draw);
  }
}

/** Logits of the scale (CFG-mixed before the head when both rows ran) and the draw of one token per position. */
function sampleScale(gpu: Gpu, o: StarLoopOptions, gen: StarGeneration, plan: PolicyPlan, x: Tensor, batch: number): Tensor {
  const { model } = o;
  const T = plan.grid[0] * plan.grid[1];
  // t = cfg·s/(K−1) on raw logits: (1+t)·ℓc − t·ℓu. A CFG-0 scale runs the "" rows alone and uses their logits.
  const logits = plan.branches === 'both' ? model.guidedHead(x, cfgRamp(plan.cfg, plan.scale, gen.scales)) : model.head(x);
  try {
    const mix: LogitMix = { a: logits, wa: 1 / plan.tau, wb: 0 };
    return sampleTokens(gpu, mix, { images: batch, tokens: T, vocab: model.config.vocab, seeds: o.seeds, stream: tokenStream(plan.scale), topK: o.topK, topP: o.topP });
  } finally {
    logits.dispose();
  }
}

const isProjected = (p: PolicyPlan): boolean => p.run && p.tokens !== 'all' && p.tokens.kind === 'random-projection';

/**
 * Per-layer outputs of the scales a later projected scale restores from (RTR: "the previous scale's per-layer
 * outputs"), kept only for the rows that scale runs, and released once no later scale needs them.
 */
class LayerRecorder {
  /** Scales some projected scale restores from. */
  private readonly sources = new Set<number>();
  private readonly kept = new Map<number, { grid: Grid; rows: RowRange; outs: Tensor[] }>();
  private current: { scale: number; keep: boolean } | null = null;

  constructor(
    private readonly gpu: Gpu,
    private readonly plans: readonly PolicyPlan[],
  ) {
    for (const p of plans) if (isProjected(p)) this.sources.add(restoreSource(plans, p.scale));
  }

  /** Starts scale `plan.scale` on `rows`; frees the outputs no scale from this one on restores from. */
  begin(plan: PolicyPlan, rows: RowRange): void {
    for (const [s, k] of this.kept) {
      if (this.plans.some((p) => p.scale >= plan.scale && isProjected(p) && restoreSource(this.plans, p.scale) === s)) continue;
      for (const t of k.outs) t.dispose();
      this.kept.delete(s);
    }
    const keep = this.sources.has(plan.scale);
    this.current = { scale: plan.scale, keep };
    if (keep) this.kept.set(plan.scale, { grid: plan.grid, rows, outs: [] });
  }

  /** Keeps layer l's output x [n·T, C] of the current scale when a later scale restores from it. */
  record(layer: number, x: Tensor, rows: RowRange, T: number): void {
    if (!this.current?.keep) return;
    this.kept.get(this.current.scale)!.outs[layer]?.dispose();
    const C = x.shape[x.rank - 1];
    const copy = this.gpu.empty([rows.count * T, C], 'f32', 'star-rtr-source');
    copyRows(this.gpu, x.reshape([rows.count * T, C]), copy, { rows: rows.count * T });
    this.kept.get(this.current.scale)!.outs[layer] = copy;
  }

  /** The kept outputs a projected scale restores from. */
  source(scale: number): { grid: Grid; output: (layer: number, rows: RowRange) => { tensor: Tensor; release: () => void } } {
    const src = restoreSource(this.plans, scale);
    const k = this.kept.get(src);
    if (!k) throw new Error(`scale ${scale}: no recorded outputs of scale ${src} to restore from`);
    const T = k.grid[0] * k.grid[1];
    return {
      grid: k.grid,
      output: (layer, rows) => {
        const out = k.outs[layer];
        const offset = rows.start - k.rows.start;
        if (!out || offset < 0 || offset + rows.count > k.rows.count) {
          throw new Error(`scale ${scale}: rows ${rows.start}…${rows.start + rows.count - 1} were not recorded at scale ${src}`);
        }
        if (offset === 0 && rows.count === k.rows.count) return { tensor: out, release: () => {} };
        const C = out.shape[1];
        const part = copyRows(this.gpu, out, this.gpu.empty([rows.count * T, C], 'f32', 'star-rtr-rows'), { srcRow: offset * T, rows: rows.count * T });
        return { tensor: part, release: () => part.dispose() };
      },
    };
  }

  dispose(): void {
    for (const k of this.kept.values()) for (const t of k.outs) t.dispose();
    this.kept.clear();
  }
}
