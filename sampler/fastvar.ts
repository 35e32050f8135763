// FastVAR's cached token pruning (csguoh/FastVAR, spec stagevar.md §3), the peer baseline of StageVAR, on
// one Infinity layer. The layer's three sub-modules (self-attention, cross-attention, FFN) are those of
// model/infinity/layer.ts, one at a time, so that each can run on a subset of the tokens:
//   pivotal tokens: before each sub-module, on the current residual stream x of each sequence row,
//                   s_i = ‖x_i − x̄‖² (x̄ = the row's mean token); keep the K = M − floor(prune·M) largest
//   run:            the sub-module on the kept tokens only (RoPE of their true positions; only their K/V
//                   appended to the cache)
//   restore:        y = area_resize(the sub-module's output at the cache scale, h×w); y[kept] = computed;
//                   x += γ ⊙ y (γ1, 1, γ2 as in the layer: γ is per row, so it commutes with the merge)
// Run without pruning (`keep` null) this is the vanilla layer, and it can hand each sub-module's output to
// `record` — how the cache scale's outputs are kept. s_i is ranked as ‖x_i‖² − 2·x_i·x̄ (the constant ‖x̄‖²
// dropped); ties, rare, go to the lower index (upstream's argsort order is unspecified for ties).

import type { Gpu } from '../engine/device.js';
import type { Tensor } from '../engine/tensor.js';
import { binary } from '../kernels/elementwise.js';
import { gatherRows, scatterRows } from '../kernels/layout.js';
import { matmul } from '../kernels/matmul.js';
import { gatedResidual, rowReduce } from '../kernels/norms.js';
import { resize } from '../kernels/resize.js';
import type { Generation, ScaleStep } from '../model/infinity/generation.js';
import { crossAttentionBranch, ffnBranch, selfAttentionBranch, stepRope } from '../model/infinity/layer.js';
import type { InfinityModel } from '../model/infinity/model.js';
import { release, rowsView } from '../model/infinity/views.js';
import { rankSelect } from './rp_kernels.js';
import type { Grid } from './schedule.js';

export type SubModule = 'attn' | 'cross' | 'ffn';
export const SUB_MODULES: readonly SubModule[] = ['attn', 'cross', 'ffn'];

export interface FastVarLayerOptions {
  /** Tokens kept per row (K), or null for every token. */
  keep: number | null;
  grid: Grid;
  /** With keep: the sub-module's output at the cache scale on these rows, [n·h'·w', C], and that grid. */
  cached?: (part: SubModule) => Tensor;
  cachedGrid?: Grid;
  /** Sees each sub-module's output on all tokens (keep null), [n·M, C], live during the call. */
  record?: (part: SubModule, y: Tensor) => void;
}

/** Pivotal tokens of x [n·M, C]: the K rows of each sequence row farthest from its mean token. */
export function pivotalTokens(gpu: Gpu, x: Tensor, n: number, M: number, K: number): { index: Tensor; slots: Tensor } {
  const C = x.shape[x.rank - 1];
  const x3 = x.reshape([n, M, C]);
  const avg = gpu.upload(new Float32Array(M).fill(1 / M), [1, M], 'f32', 'fastvar-avg');
  const mean = matmul(gpu, avg, x3); // [n, 1, C]
  avg.dispose();
  const dot = matmul(gpu, x3, mean, { transB: true }); // [n, M, 1]: x_i · x̄
  mean.dispose();
  const sq = rowReduce(gpu, x.reshape([n * M, C]), 'sumsq');
  // rankSelect keeps the smallest: 2·x_i·x̄ − ‖x_i‖² = ‖x̄‖² − s_i.
  const key = binary(gpu, 'add', dot.reshape([n * M]), sq, { alpha: 2, beta: -1 });
  dot.dispose();
  sq.dispose();
  const sel = rankSelect(gpu, key.reshape([n, M]), K);
  key.dispose();
  return sel;
}

/** One Infinity layer in place on x [n·M, C] with FastVAR pruning (or none, recording the sub-module outputs). */
export function fastVarLayer(model: InfinityModel, layer: number, x3: Tensor, gen: Generation, step: ScaleStep, o: FastVarLayerOptions): void {
  const { gpu } = model;
  const C = model.config.width;
  const n = step.rows.count;
  const M = step.tokens;
  if (x3.numel !== n * M * C) throw new Error(`x ${x3} does not hold ${n} rows × ${M} tokens × ${C} channels`);
  const x = x3.reshape([n * M, C]); // a view: the layer stays in place
  const m = gen.conditioning.mods[layer];
  const views: Array<ReturnType<typeof rowsView>> = [];
  const sel = (t: Tensor) => {
    const v = rowsView(gpu, t, step.rows.start, n);
    views.push(v);
    return v.tensor;
  };
  const gammas: Record<SubModule, Tensor | null> = { attn: sel(m.gamma1), cross: null, ffn: sel(m.gamma2) };
  for (const part of SUB_MODULES) {
    let y: Tensor;
    if (o.keep === null) {
      y = subModule(model, part, layer, x, gen, step, M, null);
      o.record?.(part, y);
    } else {
      const { index, slots } = pivotalTokens(gpu, x, n, M, o.keep);
      const xs = gatherRows(gpu, x, slots);
      const ys = subModule(model, part, layer, xs, gen, step, o.keep, index);
      xs.dispose();
      const cached = o.cached!(part);
      const [ch, cw] = o.cachedGrid!;
      y = resize(gpu, cached.reshape([n, ch, cw, C]), o.grid[0], o.grid[1], 'area', { layout: 'nhwc' }).as([n * M, C]);
      scatterRows(gpu, ys, slots, y);
      ys.dispose();
      index.dispose();
      slots.dispose();
    }
    gatedResidual(gpu, x, y, gammas[part], { rowsPerGroup: M });
    y.dispose();
  }
  for (const v of views) release(v);
}

/**
 * One sub-module's branch output (before γ and the residual add) on xs [n·L, C], L tokens per row; `index`
 * [n, L] gives the kept tokens' slots in the scale (their RoPE positions), null for all tokens in order.
 */
function subModule(model: InfinityModel, part: SubModule, layer: number, xs: Tensor, gen: Generation, step: ScaleStep, L: number, index: Tensor | null): Tensor {
  const { gpu, config } = model;
  const w = model.weights.layers[layer];
  const m = gen.conditioning.mods[layer];
  const rows = step.rows;
  const n = rows.count;
  const own: Array<ReturnType<typeof rowsView>> = [];
  const sel = (t: Tensor) => {
    const v = rowsView(gpu, t, rows.start, n);
    own.push(v);
    return v.tensor;
  };
  try {
    if (part === 'attn') {
      let rope = stepRope(gen, step, L);
      let table: Tensor | null = null;
      if (index) {
        // Kept tokens keep their true positions: one table row per kept token of every row.
        const hd = config.headDim;
        table = gatherRows(gpu, gen.rope.reshape([-1, hd]).rows(step.ropeOffset, step.tokens), index.reshape([n * L])).as([n * L, hd / 2, 2]);
        rope = { table, rowsPerBatch: n * L };
      }
      const y = selfAttentionBranch(gpu, config, w, layer, xs, gen, step, { scale: sel(m.scale1), shift: sel(m.shift1) }, L, rope);
      table?.dispose();
      return y;
    }
    if (part === 'cross') return crossAttentionBranch(gpu, config, w, layer, xs, gen, rows, L);
    return ffnBranch(gpu, config, w, xs, { scale: sel(m.scale2), shift: sel(m.shift2) }, L, gen.activations);
  } finally {
    for (const v of own) release(v);
  }
}
