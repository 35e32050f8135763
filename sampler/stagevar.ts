// The token-policy hook of the next-scale loop: which tokens of a scale go through which block chunks.
// One TokenRunner per generation; the loop calls `runChunks` once per scale and row group instead of
// running the chunks itself. It does what the plan's `tokens` says:
//   'all'                every token through every chunk (vanilla). When the next scale that runs uses random
//                        projection, each chunk's output is also kept (only the rows that scale will read):
//                        it is what RTR restores from (spec stagevar.md §2.7: "the previous processed scale").
//   'random-projection'  StageVAR per block chunk c (§2.3–2.7, fixture stagevar-tiny):
//                          X = chunk input (chunk 0: after the level embedding; c > 0: restored output of c−1)
//                          I, Q = draw (or the recorded draws of a fixture);  X̂ = QᵀX   [n, r, C]
//                          Ŷ = chunk c on the r rows: each layer appends r keys to its cache; RoPE phases of
//                              raster cells 0..r−1 of the scale ('first-rows', official) or of I ('sampled-slots')
//                          Y = area_resize(chunk c's output at the previous scale that ran);  Y[I[k]] = Ŷ[k]
//                        The restored Y is the next chunk's input, and is kept in turn when a later scale
//                        projects again.
//   'fastvar'            FastVAR (fastvar.ts): layers in the plan's range prune before each sub-module and
//                        restore from that sub-module's output at the cache scale, which was recorded when the
//                        cache scale ran (its layers then run sub-module by sub-module, with the same math).
// CFG 0 needs nothing here: the loop runs such a scale on the unconditional rows only (step.rows), whose
// caches, AdaLN and text K/V the model's building blocks already select by row.

import type { Gpu } from '../engine/device.js';
import type { Tensor } from '../engine/tensor.js';
import { copyRows } from '../kernels/layout.js';
import type { Generation, RowRange, ScaleStep } from '../model/infinity/generation.js';
import type { InfinityModel } from '../model/infinity/model.js';
import type { Branches, ProjectedTokens } from './plan.js';
import { fastVarLayer, type SubModule } from './fastvar.js';
import { restoreSource, type FastVarTokens, type PolicyPlan } from './policy_plan.js';
import { disposeDraw, drawRp, project, restore, slotRopeTable, type RpDraw } from './rp.js';
import type { Grid } from './schedule.js';

/** What the runner shows an observer (parity, calibration). `x` is live only during the call: copy it to keep it.
 *  Every scale shows chunk_in and chunk_out per chunk; a projected scale also rp_out and chunk_prev. */
export interface ChunkEvent {
  scale: number;
  chunk: number;
  /** chunk_in: X; rp_out: Ŷ [n·r, C]; chunk_prev: the previous scale's output of the chunk; chunk_out: restored Y. */
  what: 'chunk_in' | 'rp_out' | 'chunk_prev' | 'chunk_out';
  rows: RowRange;
  x: Tensor;
}

/** Supplies the draws of (scale, chunk) instead of the Philox streams (null: draw as usual). */
export type DrawSource = (scale: number, chunk: number, rows: RowRange, tokens: number, rank: number) => RpDraw | null;

export interface TokenRunnerOptions {
  model: InfinityModel;
  plans: readonly PolicyPlan[];
  /** One seed per image: the Philox key of its draws. */
  seeds: readonly number[];
  draws?: DrawSource;
  observe?: (e: ChunkEvent) => void;
  signal?: AbortSignal;
}

/** Ranks used at one projected scale (for --trace). */
export interface RankTrace {
  scale: number;
  grid: Grid;
  rows: RowRange;
  ranks: number[];
  rope: ProjectedTokens['rope'];
}

interface ScaleRecord {
  scale: number;
  grid: Grid;
  /** Per row group that ran: the kept rows and each chunk's output on them [count·h·w, C]. */
  groups: Array<{ rows: RowRange; outs: Tensor[] }>;
}

const intersect = (a: RowRange, b: RowRange): RowRange | null => {
  const start = Math.max(a.start, b.start);
  const end = Math.min(a.start + a.count, b.start + b.count);
  return end > start ? { start, count: end - start } : null;
};

export class TokenRunner {
  private readonly gpu: Gpu;
  private prev: ScaleRecord | null = null;
  private cur: ScaleRecord | null = null;
  private readonly fvNeeds = new Map<number, { from: number; to: number; branches: Set<Branches> }>();
  /** FastVAR's kept sub-module outputs: scale → row groups → `${layer}.${part}` → [count·h·w, C]. */
  private readonly fvKept = new Map<number, { grid: Grid; groups: Array<{ rows: RowRange; parts: Map<string, Tensor> }> }>();
  readonly trace: RankTrace[] = [];

  constructor(private readonly o: TokenRunnerOptions) {
    this.gpu = o.model.gpu;
    // FastVAR caches: for each scale some later FastVAR scale restores from, the layers and rows to keep.
    for (const p of o.plans) {
      if (!p.run || p.tokens === 'all' || p.tokens.kind !== 'fastvar') continue;
      const need = this.fvNeeds.get(p.tokens.cacheScale) ?? { from: Infinity, to: 0, branches: new Set<Branches>() };
      need.from = Math.min(need.from, p.tokens.layers[0]);
      need.to = Math.max(need.to, p.tokens.layers[1]);
      need.branches.add(p.branches);
      this.fvNeeds.set(p.tokens.cacheScale, need);
    }
  }

  /** Runs the block chunks of one scale on x [n·tokens, C] (consumed) → the last chunk's full output. */
  runChunks(gen: Generation, plan: PolicyPlan, step: ScaleStep, x: Tensor): Tensor {
    if (this.cur?.scale !== plan.scale) {
      this.release(this.prev);
      this.prev = this.cur;
      this.cur = { scale: plan.scale, grid: plan.grid, groups: [] };
    }
    const keep = this.rowsToKeep(gen, plan, step.rows);
    const outs: Tensor[] = [];
    if (keep) this.cur!.groups.push({ rows: keep, outs });
    const record = (y: Tensor) => {
      if (!keep) return;
      const T = step.tokens;
      const C = y.shape[y.rank - 1];
      const copy = this.gpu.empty([keep.count * T, C], 'f32', 'rtr-source');
      copyRows(this.gpu, y.reshape([-1, C]), copy, { srcRow: (keep.start - step.rows.start) * T, rows: keep.count * T });
      outs.push(copy);
    };
    if (plan.tokens === 'all') {
      return this.fvNeeds.has(plan.scale) ? this.layerByLayer(gen, plan, step, x, record, null) : this.allTokens(gen, plan, step, x, record);
    }
    if (plan.tokens.kind === 'fastvar') return this.layerByLayer(gen, plan, step, x, record, plan.tokens);
    return this.projected(gen, plan, plan.tokens, step, x, record);
  }

  /** Frees the kept chunk outputs. */
  dispose(): void {
    this.release(this.prev);
    this.release(this.cur);
    this.prev = this.cur = null;
    for (const k of this.fvKept.values()) for (const g of k.groups) for (const t of g.parts.values()) t.dispose();
    this.fvKept.clear();
  }

  private release(r: ScaleRecord | null): void {
    for (const g of r?.groups ?? []) for (const t of g.outs) t.dispose();
  }

  /** Rows of this step the next run scale will restore from (null when it does not project). */
  private rowsToKeep(gen: Generation, plan: PolicyPlan, rows: RowRange): RowRange | null {
    const next = this.o.plans.find((p) => p.scale > plan.scale && p.run);
    if (!next || next.tokens === 'all' || next.tokens.kind !== 'random-projection') return null;
    return intersect(rows, branchRows(gen, next.branches));
  }

  private show(plan: PolicyPlan, rows: RowRange, chunk: number, what: ChunkEvent['what'], x: Tensor): void {
    this.o.observe?.({ scale: plan.scale, chunk, what, rows, x });
  }

  private checkAbort(cur: Tensor): void {
    if (this.o.signal?.aborted) {
      cur.dispose();
      this.o.signal.throwIfAborted();
    }
  }

  private allTokens(gen: Generation, plan: PolicyPlan, step: ScaleStep, x: Tensor, record: (y: Tensor) => void): Tensor {
    let cur = x;
    for (let c = 0; c < this.o.model.config.chunks; c++) {
      this.checkAbort(cur);
      this.show(plan, step.rows, c, 'chunk_in', cur);
      const next = this.o.model.runChunk(c, cur, gen, step);
      cur.dispose();
      cur = next;
      this.show(plan, step.rows, c, 'chunk_out', cur);
      record(cur);
    }
    return cur;
  }

  private projected(gen: Generation, plan: PolicyPlan, t: ProjectedTokens, step: ScaleStep, x: Tensor, record: (y: Tensor) => void): Tensor {
    const { gpu } = this;
    const { model } = this.o;
    const M = step.tokens;
    const rows = step.rows;
    const source = restoreSource(this.o.plans, plan.scale);
    const prev = this.prev;
    if (!prev || prev.scale !== source) throw new Error(`scale ${plan.scale}: no chunk outputs of scale ${source} to restore from (was it run through this runner?)`);
    const keys = Array.from({ length: rows.count }, (_, i) => this.o.seeds[gen.promptOf(rows.start + i)]);
    this.trace.push({ scale: plan.scale, grid: plan.grid, rows, ranks: [...t.ranks], rope: t.rope });
    const show = (chunk: number, what: ChunkEvent['what'], y: Tensor) => this.show(plan, rows, chunk, what, y);
    let cur = x;
    for (let c = 0; c < model.config.chunks; c++) {
      this.checkAbort(cur);
      const r = t.ranks[c];
      show(c, 'chunk_in', cur);
      const draw = this.o.draws?.(plan.scale, c, rows, M, r) ?? drawRp(gpu, cur, { tokens: M, rank: r, keys, scale: plan.scale, chunk: c });
      const xh = project(gpu, draw.q, cur);
      const out = this.chunkOnRows(gen, c, xh, step, r, draw, t.rope);
      xh.dispose();
      show(c, 'rp_out', out);
      const from = this.kept(prev, c, rows);
      show(c, 'chunk_prev', from.tensor);
      const y = restore(gpu, from.tensor, prev.grid, plan.grid, out, draw.slots);
      if (from.copied) from.tensor.dispose();
      out.dispose();
      disposeDraw(draw);
      show(c, 'chunk_out', y);
      record(y);
      cur.dispose();
      cur = y;
    }
    return cur;
  }

  /**
   * The chunks layer by layer: FastVAR-pruned layers (fv), or at a FastVAR cache scale the recorded layers
   * sub-module by sub-module (fv null), every other layer as the model runs it.
   */
  private layerByLayer(gen: Generation, plan: PolicyPlan, step: ScaleStep, x: Tensor, record: (y: Tensor) => void, fv: FastVarTokens | null): Tensor {
    const { model } = this.o;
    const rows = step.rows;
    const need = fv ? null : this.fvNeeds.get(plan.scale)!;
    // Recording: keep the rows some later FastVAR scale restores (all it may ask for, intersected with this group).
    let keep: RowRange | null = null;
    let parts: Map<string, Tensor> | null = null;
    if (need) {
      for (const b of need.branches) {
        const r = intersect(rows, branchRows(gen, b));
        if (r) keep = keep ? { start: Math.min(keep.start, r.start), count: Math.max(keep.start + keep.count, r.start + r.count) - Math.min(keep.start, r.start) } : r;
      }
      if (keep) {
        const entry = this.fvKept.get(plan.scale) ?? { grid: plan.grid, groups: [] };
        parts = new Map();
        entry.groups.push({ rows: keep, parts });
        this.fvKept.set(plan.scale, entry);
      }
    }
    const source = fv ? this.fvKept.get(fv.cacheScale) : undefined;
    if (fv && !source) throw new Error(`scale ${plan.scale}: FastVAR's cache scale ${fv.cacheScale} kept nothing (was it run through this runner?)`);
    const T = step.tokens;
    const K = fv ? T - Math.floor(fv.prune * T) : null;
    let cur = x;
    for (let c = 0; c < model.config.chunks; c++) {
      this.checkAbort(cur);
      this.show(plan, rows, c, 'chunk_in', cur);
      const out = this.gpu.empty(cur.shape, 'f32', 'infinity-x');
      this.gpu.copy(cur, out);
      cur.dispose();
      cur = out;
      for (const l of model.chunkLayers(c)) {
        if (fv && l >= fv.layers[0] && l < fv.layers[1]) {
          const views: Tensor[] = [];
          fastVarLayer(model, l, cur, gen, step, {
            keep: K,
            grid: plan.grid,
            cachedGrid: source!.grid,
            cached: (part) => {
              const t = this.fvLookup(fv.cacheScale, l, part, rows);
              views.push(t);
              return t;
            },
          });
          for (const t of views) if (!this.isKept(t)) t.dispose();
        } else if (parts && keep && l >= need!.from && l < need!.to) {
          const k = keep;
          const into = parts;
          fastVarLayer(model, l, cur, gen, step, {
            keep: null,
            grid: plan.grid,
            record: (part: SubModule, y: Tensor) => into.set(`${l}.${part}`, this.copyRange(y, rows, k, T)),
          });
        } else {
          model.runLayer(l, cur, gen, step);
        }
      }
      this.show(plan, rows, c, 'chunk_out', cur);
      record(cur);
    }
    return cur;
  }

  /** Rows `want` of y [group.count·T, C] (y holds the rows of `group`) as a new tensor. */
  private copyRange(y: Tensor, group: RowRange, want: RowRange, T: number): Tensor {
    const C = y.shape[y.rank - 1];
    const copy = this.gpu.empty([want.count * T, C], 'f32', 'kept-rows');
    copyRows(this.gpu, y.reshape([-1, C]), copy, { srcRow: (want.start - group.start) * T, rows: want.count * T });
    return copy;
  }

  private isKept(t: Tensor): boolean {
    for (const k of this.fvKept.values()) for (const g of k.groups) for (const x of g.parts.values()) if (x === t) return true;
    return false;
  }

  /** FastVAR: sub-module `part` of layer l at the cache scale, on `rows` (the kept tensor, or a copy of its rows). */
  private fvLookup(scale: number, layer: number, part: SubModule, rows: RowRange): Tensor {
    const entry = this.fvKept.get(scale)!;
    const g = entry.groups.find((x) => intersect(x.rows, rows)?.count === rows.count);
    const t = g?.parts.get(`${layer}.${part}`);
    if (!g || !t) throw new Error(`FastVAR: layer ${layer}'s ${part} output at scale ${scale} was not kept for rows [${rows.start}, ${rows.start + rows.count})`);
    if (g.rows.start === rows.start && g.rows.count === rows.count) return t;
    return this.copyRange(t, g.rows, rows, entry.grid[0] * entry.grid[1]);
  }

  /** Chunk c on the r projected rows of each sequence row: xh [n, r, C] → [n·r, C]; the cache grows by r. */
  private chunkOnRows(gen: Generation, c: number, xh: Tensor, step: ScaleStep, r: number, draw: RpDraw, rope: ProjectedTokens['rope']): Tensor {
    const { model } = this.o;
    const n = step.rows.count;
    const C = xh.shape[2];
    if (rope === 'first-rows') {
      // Official: rope_cache[start : start + r], the phases of raster cells 0..r−1 of this scale.
      return model.runChunk(c, xh, gen, { rows: step.rows, tokens: r, ropeOffset: step.ropeOffset }).as([n * r, C]);
    }
    // Sampled slots: each row has its own positions, so its own table; one sequence row at a time.
    const out = this.gpu.empty([n * r, C], 'f32', 'rp-out');
    for (let b = 0; b < n; b++) {
      const table = slotRopeTable(this.gpu, gen.rope, step.ropeOffset, step.tokens, draw.index.rows(b, 1));
      const y = model.runChunk(c, xh.rows(b, 1), gen, { rows: { start: step.rows.start + b, count: 1 }, tokens: r, ropeOffset: 0, ropeTable: table });
      copyRows(this.gpu, y.reshape([r, C]), out, { dstRow: b * r, rows: r });
      y.dispose();
      table.dispose();
    }
    return out;
  }

  /** Chunk c's kept output of the previous scale for `rows` ([count·h'·w', C]; a view, or a copy to dispose). */
  private kept(prev: ScaleRecord, c: number, rows: RowRange): { tensor: Tensor; copied: boolean } {
    const g = prev.groups.find((x) => intersect(x.rows, rows)?.count === rows.count);
    if (!g || !g.outs[c]) throw new Error(`scale ${prev.scale}: chunk ${c}'s output was not kept for rows [${rows.start}, ${rows.start + rows.count})`);
    const T = prev.grid[0] * prev.grid[1];
    const t = g.outs[c];
    if (g.rows.start === rows.start && g.rows.count === rows.count) return { tensor: t, copied: false };
    const C = t.shape[1];
    const copy = this.gpu.empty([rows.count * T, C], 'f32', 'rtr-source-rows');
    copyRows(this.gpu, t, copy, { srcRow: (rows.start - g.rows.start) * T, rows: rows.count * T });
    return { tensor: copy, copied: true };
  }
}

/** The sequence rows a branch choice runs. */
export function branchRows(gen: Generation, branches: Branches): RowRange {
  return branches === 'uncond' ? gen.uncondRows() : branches === 'cond' ? gen.condRows() : gen.allRows();
}
