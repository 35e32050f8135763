// The text path, run once per generation: everything in it depends only on the prompts, so every
// per-layer constant (cross-attention K/V, the six AdaLN vectors, the head's scale/shift) is computed
// here and reused by every scale.
//
//   kv      = text_norm(features)                          RMSNorm with weight, packed rows of all sequences
//   cond    = proj(attn_pool(mat_q; kv·Wkᵀ, kv·Wvᵀ + bv))   one learned query per pool head, varlen per sequence
//   sos     = cond + pos_start                              the single token of scale 0
//   memory  = L2(GELU_tanh(L1(kv)))                         cross-attention memory (text_proj_for_ca)
//   mods[l] = ada_gss[l] + shared_ada_lin(SiLU(cond))       six C-vectors γ1, γ2, s1, s2, b1, b2 per row
//   head    = head_nm.ada_lin(SiLU(cond))                   scale, shift per row
//
// Sequence rows: 0..B-1 are the prompts, B..2B-1 (with guidance) the unconditional branch, whose text is
// `cfg_uncond[0:len_i]` (the learned null prompt cut to the prompt's length) or a negative prompt.

import type { Gpu } from '../../engine/device.js';
import type { Tensor } from '../../engine/tensor.js';
import { attentionVarlen } from '../../kernels/attention.js';
import { add, silu } from '../../kernels/elementwise.js';
import { copyRows } from '../../kernels/layout.js';
import { linear } from '../../kernels/matmul.js';
import { rmsNorm } from '../../kernels/norms.js';
import type { InfinityConfig } from './config.js';
import type { InfinityWeights } from './weights.js';

/** The six AdaLN vectors of one layer, each [rows, C], in upstream's order. */
export interface LayerModulation {
  gamma1: Tensor;
  gamma2: Tensor;
  scale1: Tensor;
  scale2: Tensor;
  shift1: Tensor;
  shift2: Tensor;
}
const MOD_ORDER = ['gamma1', 'gamma2', 'scale1', 'scale2', 'shift1', 'shift2'] as const;

export interface TextInput {
  /** Packed text features of the B prompts, [Σ lens, textWidth] f32 (T5 output rows of real tokens only). */
  features: Tensor | Float32Array;
  lens: readonly number[];
  /** Run the unconditional branch too (CFG). */
  guidance: boolean;
  /** Negative prompts replacing `cfg_uncond` (same packing as `features`), used only with guidance. */
  negative?: { features: Tensor | Float32Array; lens: readonly number[] };
}

export interface Conditioning {
  /** Sequence rows: B, or 2B with guidance. */
  rows: number;
  /** Packed text row offsets per sequence row (rows + 1 entries). */
  textStarts: number[];
  /** Cross-attention K and V of every layer, [Σ text rows, C]. */
  textK: Tensor[];
  textV: Tensor[];
  mods: LayerModulation[];
  headScale: Tensor;
  headShift: Tensor;
  /** Pooled text (the AdaLN condition) [rows, C] and the scale-0 token cond + pos_start [rows, C]. */
  cond: Tensor;
  sos: Tensor;
}

function asTensor(gpu: Gpu, x: Tensor | Float32Array, cols: number, label: string): { t: Tensor; owned: boolean } {
  if (x instanceof Float32Array) {
    if (x.length % cols !== 0) throw new Error(`${label}: ${x.length} values are not rows of ${cols} features`);
    return { t: gpu.upload(x, [x.length / cols, cols], 'f32', label), owned: true };
  }
  if (x.dtype !== 'f32' || x.shape[x.rank - 1] !== cols) throw new Error(`${label}: ${x} must be f32 [N, ${cols}]`);
  return { t: x.reshape([-1, cols]), owned: false };
}

function checkLens(lens: readonly number[], rows: number, max: number, what: string): void {
  const total = lens.reduce((a, b) => a + b, 0);
  if (lens.length === 0 || lens.some((l) => !Number.isInteger(l) || l < 1 || l > max) || total !== rows) {
    throw new Error(`${what}: lengths [${lens.join(', ')}] must be 1..${max} each and sum to the ${rows} feature rows`);
  }
}

/** Packs the text of every sequence row: prompts, then (with guidance) their unconditional texts. */
function packText(gpu: Gpu, cfg: InfinityConfig, w: InfinityWeights, input: TextInput): { kv: Tensor; starts: number[] } {
  const T = cfg.textWidth;
  const prompts = asTensor(gpu, input.features, T, 'text features');
  checkLens(input.lens, prompts.t.shape[0], cfg.textMaxLen, 'text features');
  const starts = [0];
  for (const l of input.lens) starts.push(starts[starts.length - 1] + l);
  if (!input.guidance) {
    const kv = gpu.empty([prompts.t.shape[0], T], 'f32', 'text-kv');
    copyRows(gpu, prompts.t, kv);
    if (prompts.owned) prompts.t.dispose();
    return { kv, starts };
  }
  const neg = input.negative ? asTensor(gpu, input.negative.features, T, 'negative text features') : null;
  const uncondLens = input.negative ? input.negative.lens : input.lens;
  if (neg) {
    checkLens(uncondLens, neg.t.shape[0], cfg.textMaxLen, 'negative text features');
    if (uncondLens.length !== input.lens.length) throw new Error(`${uncondLens.length} negative prompts for ${input.lens.length} prompts`);
  }
  const nCond = prompts.t.shape[0];
  const nUncond = uncondLens.reduce((a, b) => a + b, 0);
  const kv = gpu.empty([nCond + nUncond, T], 'f32', 'text-kv');
  copyRows(gpu, prompts.t, kv);
  if (neg) copyRows(gpu, neg.t, kv, { dstRow: nCond });
  for (const l of uncondLens) {
    const at = starts[starts.length - 1];
    // upstream: kv_compact_un[total:total+le] = cfg_uncond[:le]
    if (!neg) copyRows(gpu, w.cfgUncond, kv, { srcRow: 0, dstRow: at, rows: l });
    starts.push(at + l);
  }
  if (prompts.owned) prompts.t.dispose();
  if (neg?.owned) neg.t.dispose();
  return { kv, starts };
}

export function encodeText(gpu: Gpu, cfg: InfinityConfig, w: InfinityWeights, input: TextInput): Conditioning {
  const C = cfg.width;
  const packed = packText(gpu, cfg, w, input);
  const rows = packed.starts.length - 1;
  const kv = rmsNorm(gpu, packed.kv, { weight: w.textNormW, eps: cfg.eps });
  packed.kv.dispose();

  // Attentive pooling: the learned query, repeated once per sequence row, attends to that row's text.
  const query = new Float32Array(rows * C);
  for (let r = 0; r < rows; r++) query.set(w.poolQuery, r * C);
  const q = gpu.upload(query, [rows, C], 'f32', 'pool-query');
  const pk = linear(gpu, kv, w.poolKW, w.poolKBias);
  const pv = linear(gpu, kv, w.poolVW, w.poolVBias);
  const qStarts = Array.from({ length: rows + 1 }, (_, i) => i);
  const pooled = attentionVarlen(gpu, q, pk, pv, {
    heads: cfg.poolHeads,
    scale: 1 / Math.sqrt(cfg.poolHeadDim),
    qStarts,
    kStarts: packed.starts,
  });
  const cond = linear(gpu, pooled, w.poolProjW, w.poolProjB);
  for (const t of [q, pk, pv, pooled]) t.dispose();
  const sos = add(gpu, cond, w.posStart);

  // Cross-attention memory and every layer's text K/V.
  const hidden = linear(gpu, kv, w.textCa0W, w.textCa0B, { activation: 'gelu_tanh' });
  const memory = linear(gpu, hidden, w.textCa2W, w.textCa2B);
  hidden.dispose();
  kv.dispose();
  const textK: Tensor[] = [];
  const textV: Tensor[] = [];
  for (const layer of w.layers) {
    textK.push(linear(gpu, memory, layer.caKW, layer.caKBias));
    textV.push(linear(gpu, memory, layer.caVW, layer.caVBias));
  }
  memory.dispose();

  // AdaLN: the shared projection split into its six C-blocks, plus each layer's own ada_gss row.
  const act = silu(gpu, cond);
  const shared = w.sharedAda.map(({ w: weight, b }) => linear(gpu, act, weight, b));
  const mods = w.layers.map((layer) => {
    const m = {} as LayerModulation;
    MOD_ORDER.forEach((name, k) => {
      m[name] = add(gpu, shared[k], layer.adaGss[k]);
    });
    return m;
  });
  for (const t of shared) t.dispose();
  const headScale = linear(gpu, act, w.headAdaScale.w, w.headAdaScale.b);
  const headShift = linear(gpu, act, w.headAdaShift.w, w.headAdaShift.b);
  act.dispose();

  return { rows, textStarts: packed.starts, textK, textV, mods, headScale, headShift, cond, sos };
}

export function disposeConditioning(c: Conditioning): void {
  for (const t of [...c.textK, ...c.textV, c.headScale, c.headShift, c.cond, c.sos]) t.dispose();
  for (const m of c.mods) for (const k of MOD_ORDER) m[k].dispose();
}
