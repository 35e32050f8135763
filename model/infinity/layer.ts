// One Infinity transformer layer (upstream CrossAttnBlock, fused-norm inference path), in place on the
// residual stream x [n·L, C] of the step's n sequence rows × L tokens:
//
//   x += γ1 ⊙ proj(attn(cos-q, cos-k with RoPE, over the KV cache + this step))   on LN(x)·(1+s1)+b1
//   x += proj(attn_varlen(q(ca_norm(x)), the row's text K/V))                      no modulation, no gate
//   x += γ2 ⊙ fc2(GELU_tanh(fc1(LN(x)·(1+s2)+b2)))
//
// Cosine attention: q and k L2-normalised per head, q times exp(min(scale_mul, ln 100)), softmax scale 1,
// RoPE after the normalisation; q and v have biases, k only the optional zero buffer.
//
// Activation dtype (gen.activations): with 'f16' the norm outputs, q/k/v, the attention outputs and the
// FFN hidden are f16 tensors (normalised and rotated in place, statistics in f32); the linears that write
// into the residual stream (proj, ca proj, fc2) output f32, so x and the gated adds stay f32.

import type { Gpu } from '../../engine/device.js';
import type { Tensor } from '../../engine/tensor.js';
import { attentionVarlen } from '../../kernels/attention.js';
import { linear } from '../../kernels/matmul.js';
import { adaLayerNorm, gatedResidual, l2NormalizeHeads, layerNorm } from '../../kernels/norms.js';
import { applyRope } from '../../kernels/rope.js';
import type { InfinityConfig } from './config.js';
import type { ActivationDType, Generation, RowRange, ScaleStep } from './generation.js';
import { release, rowsView } from './views.js';
import type { LayerWeights } from './weights.js';

export function runLayer(gpu: Gpu, config: InfinityConfig, w: LayerWeights, layer: number, x: Tensor, gen: Generation, step: ScaleStep): void {
  const C = config.width;
  const m = gen.conditioning.mods[layer];
  const { rows, tokens: L } = step;
  const n = rows.count;
  if (x.numel !== n * L * C) throw new Error(`x ${x} does not hold ${n} rows × ${L} tokens × ${C} channels`);
  const xs = x.reshape([n * L, C]);
  const sel = (t: Tensor) => rowsView(gpu, t, rows.start, n);
  const group = { rowsPerGroup: L };
  const views = [m.scale1, m.shift1, m.gamma1, m.scale2, m.shift2, m.gamma2].map(sel);
  const [s1, b1, g1, s2, b2, g2] = views.map((v) => v.tensor);

  // Self-attention over the cache of previous steps plus this one.
  const y = selfAttentionBranch(gpu, config, w, layer, xs, gen, step, { scale: s1, shift: b1 }, L, stepRope(gen, step, L));
  gatedResidual(gpu, xs, y, g1, group);
  y.dispose();

  // Cross-attention to each row's own text.
  const yc = crossAttentionBranch(gpu, config, w, layer, xs, gen, rows, L);
  gatedResidual(gpu, xs, yc, null);
  yc.dispose();

  // FFN.
  const y2 = ffnBranch(gpu, config, w, xs, { scale: s2, shift: b2 }, L, gen.activations);
  gatedResidual(gpu, xs, y2, g2, group);
  y2.dispose();
  for (const view of views) release(view);
}

/** The RoPE table and placement for a step's rows (L tokens each). */
export interface RopeArgs {
  table: Tensor;
  rowsPerBatch: number;
  tableOffset?: number;
}

/** The step's own RoPE: its table (or the schedule's), L tokens per row, from the step's offset. */
export function stepRope(gen: Generation, step: ScaleStep, L: number): RopeArgs {
  return { table: step.ropeTable ?? gen.rope, rowsPerBatch: L, tableOffset: step.ropeOffset };
}

/** AdaLN scale/shift rows of the step's sequence rows ([n, C] each, one per row of L tokens). */
export interface Modulation {
  scale: Tensor;
  shift: Tensor;
}

/**
 * The self-attention branch on xs [n·L, C] before γ1 and the residual add: AdaLN, q/k/v, cosine
 * normalisation, RoPE, this step's keys appended to the layer's cache, attention over the cache, proj.
 */
export function selfAttentionBranch(
  gpu: Gpu, config: InfinityConfig, w: LayerWeights, layer: number, xs: Tensor, gen: Generation, step: ScaleStep,
  mod: Modulation, L: number, rope: RopeArgs,
): Tensor {
  const C = config.width;
  const H = config.heads;
  const { rows } = step;
  const n = rows.count;
  const act = gen.activations;
  const h = adaLayerNorm(gpu, xs, mod.scale, mod.shift, { eps: config.eps, rowsPerGroup: L, outDtype: act });
  const q = linear(gpu, h, w.wq, w.qBias, { outDtype: act });
  const k = linear(gpu, h, w.wk, w.kBias, { outDtype: act });
  const v = linear(gpu, h, w.wv, w.vBias, { outDtype: act });
  h.dispose();
  l2NormalizeHeads(gpu, q, { heads: H, scale: w.qScale, out: q });
  l2NormalizeHeads(gpu, k, { heads: H, out: k });
  const placement = { heads: H, rowsPerBatch: rope.rowsPerBatch, ...(rope.tableOffset !== undefined ? { tableOffset: rope.tableOffset } : {}) };
  applyRope(gpu, q, rope.table, placement);
  applyRope(gpu, k, rope.table, placement);
  const o = gen.cache.attend(layer, rows, q, k, v, L, H);
  for (const t of [q, k, v]) t.dispose();
  const y = linear(gpu, o.reshape([n * L, C]), w.projW, w.projB);
  o.dispose();
  return y;
}

/** The cross-attention branch on xs [n·L, C] before the residual add: affine LN, q, attention to each row's own text, proj. */
export function crossAttentionBranch(gpu: Gpu, config: InfinityConfig, w: LayerWeights, layer: number, xs: Tensor, gen: Generation, rows: RowRange, L: number): Tensor {
  const n = rows.count;
  const act = gen.activations;
  const hc = layerNorm(gpu, xs, { weight: w.caNormW, bias: w.caNormB, eps: config.eps, outDtype: act });
  const qc = linear(gpu, hc, w.caQW, w.caQB, { outDtype: act });
  hc.dispose();
  const text = textRows(gpu, gen, layer, rows);
  const oc = attentionVarlen(gpu, qc, text.k.tensor, text.v.tensor, {
    heads: config.heads,
    scale: 1 / Math.sqrt(config.headDim),
    qStarts: Array.from({ length: n + 1 }, (_, i) => i * L),
    kStarts: text.starts,
  });
  release(text.k);
  release(text.v);
  qc.dispose();
  const y = linear(gpu, oc, w.caProjW, w.caProjB);
  oc.dispose();
  return y;
}

/**
 * The FFN branch on xs [n·L, C] before γ2 and the residual add: AdaLN, fc1 with GELU-tanh, fc2. `act`: the
 * dtype of the AdaLN output and the hidden (pass `gen.activations`; default f32). Returns f32.
 */
export function ffnBranch(gpu: Gpu, config: InfinityConfig, w: LayerWeights, xs: Tensor, mod: Modulation, L: number, act: ActivationDType): Tensor {
  const h2 = adaLayerNorm(gpu, xs, mod.scale, mod.shift, { eps: config.eps, rowsPerGroup: L, outDtype: act });
  const f = linear(gpu, h2, w.fc1W, w.fc1B, { activation: 'gelu_tanh', outDtype: act });
  h2.dispose();
  const y = linear(gpu, f, w.fc2W, w.fc2B);
  f.dispose();
  return y;
}

/** Text K/V rows of a contiguous range of sequence rows, with key offsets rebased to 0. */
function textRows(gpu: Gpu, gen: Generation, layer: number, rows: RowRange) {
  const starts = gen.conditioning.textStarts;
  const first = starts[rows.start];
  const count = starts[rows.start + rows.count] - first;
  return {
    k: rowsView(gpu, gen.conditioning.textK[layer], first, count),
    v: rowsView(gpu, gen.conditioning.textV[layer], first, count),
    starts: starts.slice(rows.start, rows.start + rows.count + 1).map((s) => s - first),
  };
}
