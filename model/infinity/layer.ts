// One Infinity transformer layer (upstream CrossAttnBlock, fused-norm inference path), in place on the
// residual stream x [n·L, C] of the step's n sequence rows × L tokens:
//
//   x += γ1 ⊙ proj(attn(cos-q, cos-k with RoPE, over the KV cache + this step))   on LN(x)·(1+s1)+b1
//   x += proj(attn_varlen(q(ca_norm(x)), the row's text K/V))                      no modulation, no gate
//   x += γ2 ⊙ fc2(GELU_tanh(fc1(LN(x)·(1+s2)+b2)))
//
// Cosine attention: q and k L2-normalised per head, q times exp(min(scale_mul, ln 100)), softmax scale 1,
// RoPE after the normalisation; q and v have biases, k only the optional zero buffer.

import type { Gpu } from '../../engine/device.js';
import type { Tensor } from '../../engine/tensor.js';
import { attention, attentionVarlen } from '../../kernels/attention.js';
import { linear } from '../../kernels/matmul.js';
import { adaLayerNorm, gatedResidual, l2NormalizeHeads, layerNorm } from '../../kernels/norms.js';
import { applyRope } from '../../kernels/rope.js';
import type { InfinityConfig } from './config.js';
import type { Generation, RowRange, ScaleStep } from './generation.js';
import { release, rowsView } from './views.js';
import type { LayerWeights } from './weights.js';

export function runLayer(gpu: Gpu, config: InfinityConfig, w: LayerWeights, layer: number, x: Tensor, gen: Generation, step: ScaleStep): void {
  const C = config.width;
  const H = config.heads;
  const m = gen.conditioning.mods[layer];
  const { rows, tokens: L } = step;
  const n = rows.count;
  if (x.numel !== n * L * C) throw new Error(`x ${x} does not hold ${n} rows × ${L} tokens × ${C} channels`);
  const xs = x.reshape([n * L, C]);
  const sel = (t: Tensor) => rowsView(gpu, t, rows.start, n);
  const group = { rowsPerGroup: L };

  // Self-attention over the cache of previous steps plus this one.
  const s1 = sel(m.scale1);
  const b1 = sel(m.shift1);
  const h = adaLayerNorm(gpu, xs, s1.tensor, b1.tensor, { eps: config.eps, ...group });
  const q = linear(gpu, h, w.wq, w.qBias);
  const k = linear(gpu, h, w.wk, w.kBias);
  const v = linear(gpu, h, w.wv, w.vBias);
  h.dispose();
  l2NormalizeHeads(gpu, q, { heads: H, scale: w.qScale, out: q });
  l2NormalizeHeads(gpu, k, { heads: H, out: k });
  const table = step.ropeTable ?? gen.rope;
  const rope = { heads: H, rowsPerBatch: L, tableOffset: step.ropeOffset };
  applyRope(gpu, q, table, rope);
  applyRope(gpu, k, table, rope);
  const kvLen = gen.cache.append(layer, rows, k, v, L);
  k.dispose();
  v.dispose();
  const cached = gen.cache.view(layer, rows);
  const o = attention(gpu, q.reshape([n, L, C]), cached.k.tensor, cached.v.tensor, { heads: H, scale: 1, kvLen });
  gen.cache.releaseView(cached);
  q.dispose();
  const y = linear(gpu, o.reshape([n * L, C]), w.projW, w.projB);
  o.dispose();
  const g1 = sel(m.gamma1);
  gatedResidual(gpu, xs, y, g1.tensor, group);
  y.dispose();

  // Cross-attention to each row's own text.
  const hc = layerNorm(gpu, xs, { weight: w.caNormW, bias: w.caNormB, eps: config.eps });
  const qc = linear(gpu, hc, w.caQW, w.caQB);
  hc.dispose();
  const text = textRows(gpu, gen, layer, rows);
  const oc = attentionVarlen(gpu, qc, text.k.tensor, text.v.tensor, {
    heads: H,
    scale: 1 / Math.sqrt(config.headDim),
    qStarts: Array.from({ length: n + 1 }, (_, i) => i * L),
    kStarts: text.starts,
  });
  release(text.k);
  release(text.v);
  qc.dispose();
  const yc = linear(gpu, oc, w.caProjW, w.caProjB);
  oc.dispose();
  gatedResidual(gpu, xs, yc, null);
  yc.dispose();

  // FFN.
  const s2 = sel(m.scale2);
  const b2 = sel(m.shift2);
  const h2 = adaLayerNorm(gpu, xs, s2.tensor, b2.tensor, { eps: config.eps, ...group });
  const f = linear(gpu, h2, w.fc1W, w.fc1B, { activation: 'gelu_tanh' });
  h2.dispose();
  const y2 = linear(gpu, f, w.fc2W, w.fc2B);
  f.dispose();
  const g2 = sel(m.gamma2);
  gatedResidual(gpu, xs, y2, g2.tensor, group);
  y2.dispose();
  for (const view of [s1, b1, g1, s2, b2, g2]) release(view);
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
