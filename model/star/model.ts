// The STAR transformer as building blocks, so that a sampler (or a StageVAR policy) decides per scale which
// rows run and can read every layer's input and output:
//
//   model.begin({ text, patchNums })        → StarGeneration (start tokens, text K/V, RoPE tables, KV cache)
//   model.scaleInput(gen, si, next, rows)   → x [n, pn², C]: start token (si = 0) or word_embed(next), + lvl_embed[si]
//   model.forward(x, gen, step, hooks)      → x after every block (x itself is left as the input)
//   model.runLayer(l, x, gen, step)         in place, one block
//   model.head(x) / model.guidedHead(...)   → logits (raw, or CFG-mixed before the head: it is linear)
//
// A block (models/basic_var.py AttnBlock with shared_aln=False): non-affine pre-LN everywhere (eps 1e-6),
//   x += SelfAttn(LN x)        cosine attention: RoPE, L2-norm of q and k, q·exp(min(s, ln 100)), scale 1
//   x += CrossAttn(LN x)[0]    the output of the step's first row is added to every row (upstream's bug)
//   x += FFN(LN x)             GELU-tanh
// x is [n·tokens, C] f32 (any leading shape with that many elements), rows ordered as step.rows.

import type { Gpu } from '../../engine/device.js';
import type { Tensor } from '../../engine/tensor.js';
import { attention } from '../../kernels/attention.js';
import { add, binary } from '../../kernels/elementwise.js';
import { copyRows, gatherRows, transpose2d } from '../../kernels/layout.js';
import { linear } from '../../kernels/matmul.js';
import { gatedResidual, l2NormalizeHeads, layerNorm } from '../../kernels/norms.js';
import { applyRope } from '../../kernels/rope.js';
import { Checkpoint, type OpenCheckpointOptions } from '../weights/checkpoint.js';
import { checkPatchNums, defaultPatchNums, scaleStarts, type StarConfig } from './config.js';
import { StarGeneration, type CrossText, type RowRange, type StarStep, type StarTextInput } from './generation.js';
import { KvCache, type KvDType } from '../kv_cache.js';
import { resolvePrecision, type Precision } from '../precision.js';
import { ropeTable } from './rope.js';
import { loadStarWeights, type StarLoadOptions, type StarWeightSource, type StarWeights } from './weights.js';
import type { StarArch } from '../arch.js';

export interface StarBeginOptions {
  text: StarTextInput;
  /** Scale sides; default: the 1024 model's list when the model has its 14 levels. */
  patchNums?: readonly number[];
  /** Prompts B; default rows/2 (rows = B prompts then B "" rows). Pass rows to run without guidance. */
  batch?: number;
  /** Tokens per row the KV cache holds; default every token of the schedule. */
  cacheTokens?: number;
  /** KV cache dtype (default: the model's; f16 halves it, attention reads it through packed loads). */
  cacheDtype?: KvDType;
  /** Activation dtype (default: the model's): 'f16' stores the LN outputs, q/k/v, attention outputs and the
   *  FFN hidden in f16 (needs shader-f16); the residual stream, statistics, RoPE and the head stay f32. */
  activations?: 'f32' | 'f16';
}

export interface ForwardHooks {
  /** The residual stream after block l (a live tensor: copy it to keep it). */
  onLayer?: (layer: number, x: Tensor) => void;
  /** Block l's cross-attention output [tokens, C] of the text row, before it is added to every row. */
  onCross?: (layer: number, y: Tensor) => void;
}

export type StarLoadFrom = string | StarWeightSource;

export interface StarModelOptions extends StarLoadOptions, OpenCheckpointOptions {
  /** Largest FFN hidden block in bytes (default 64 MiB); lower it on devices with small buffers. */
  ffnBlockBytes?: number;
  /** Default activation and KV cache dtypes of generations (each `begin` may override them). */
  activations?: 'f32' | 'f16';
  cacheDtype?: KvDType;
}

const DEFAULT_FFN_BLOCK_BYTES = 64 << 20;

function gcd(a: number, b: number): number {
  return b === 0 ? a : gcd(b, a % b);
}

export class StarModel {
  private constructor(
    readonly gpu: Gpu,
    readonly arch: StarArch,
    readonly config: StarConfig,
    readonly weights: StarWeights,
    /** Largest FFN hidden block in bytes (the FFN runs in row blocks under it). */
    readonly ffnBlockBytes: number,
    /** Default precision of `begin`. */
    readonly precision: Precision,
  ) {}

  /**
   * Loads a checkpoint (safetensors, sharded, .pth; a training snapshot with `key: 'trainer.var_wo_ddp'`
   * or found by its prefix) or an open tensor source. The architecture comes from the tensors alone.
   */
  static async load(gpu: Gpu, from: StarLoadFrom, options: StarModelOptions = {}): Promise<StarModel> {
    const precision = resolvePrecision(gpu, 'STAR', options);
    const ffn = options.ffnBlockBytes ?? DEFAULT_FFN_BLOCK_BYTES;
    if (typeof from !== 'string') {
      const { arch, config, weights } = await loadStarWeights(gpu, from, options);
      return new StarModel(gpu, arch, config, weights, ffn, precision);
    }
    const checkpoint = await Checkpoint.open(from, options);
    try {
      const { arch, config, weights } = await loadStarWeights(gpu, checkpoint, { file: from, ...options });
      return new StarModel(gpu, arch, config, weights, ffn, precision);
    } finally {
      await checkpoint.close();
    }
  }

  /** Start tokens, KV cache and RoPE tables of one generation. */
  begin(options: StarBeginOptions): StarGeneration {
    const { gpu, config } = this;
    const { text } = options;
    const patchNums = options.patchNums ?? defaultPatchNums(config.levels);
    checkPatchNums(patchNums, config.levels);
    const [rows, T, Dt] = text.hidden.shape;
    if (text.hidden.rank !== 3 || Dt !== config.textWidth) {
      throw new Error(`text states ${text.hidden} must be [rows, tokens, ${config.textWidth}]`);
    }
    if (text.pooled.rank !== 2 || text.pooled.shape[0] !== rows || text.pooled.shape[1] !== config.pooledWidth) {
      throw new Error(`pooled text ${text.pooled} must be [${rows}, ${config.pooledWidth}]`);
    }
    if (text.mask.length !== rows * T) throw new Error(`text mask has ${text.mask.length} entries, expected ${rows}·${T}`);
    const batch = options.batch ?? rows / 2;
    if (!Number.isInteger(batch) || batch < 1 || (rows !== batch && rows !== 2 * batch)) {
      throw new Error(`${rows} text rows do not fit ${batch} prompts (rows = B without guidance, 2B with)`);
    }
    const precision = resolvePrecision(gpu, 'STAR', options, this.precision);
    const sos = linear(gpu, text.pooled, this.weights.encoderProjW, this.weights.encoderProjB);
    const sosPos = add(gpu, sos, this.weights.posStart);
    sos.dispose();
    const tokens = options.cacheTokens ?? scaleStarts(patchNums).at(-1)!;
    const cache = new KvCache(gpu, config.depth, rows, config.width, tokens, precision.cacheDtype, 'star-kv');
    return new StarGeneration(gpu, batch, rows, patchNums, text, sosPos, cache, config.headDim, config.ropeTheta, config.ropeNormalize, precision.activations);
  }

  /** Scale 0's input without the level embedding: the start token of each row, [n, 1, C]. */
  sosInput(gen: StarGeneration, rows: RowRange = gen.allRows()): Tensor {
    const C = this.config.width;
    const x = this.gpu.empty([rows.count, 1, C], 'f32', 'star-x');
    copyRows(this.gpu, gen.sos, x.reshape([rows.count, C]), { srcRow: rows.start, rows: rows.count });
    return x;
  }

  /**
   * word_embed of a next-scale input next [B, codeDim, pn, pn] (one per prompt, shared by both branches as
   * upstream repeats it), tokens row-major → x [n, pn², C] for the given rows. No level embedding.
   */
  embedNext(gen: StarGeneration, next: Tensor, rows: RowRange = gen.allRows()): Tensor {
    const { gpu, config } = this;
    const [b, d, ph, pw] = next.shape;
    if (next.rank !== 4 || b !== gen.batch || d !== config.codeDim || ph !== pw) {
      throw new Error(`next-scale input ${next} must be [${gen.batch}, ${config.codeDim}, pn, pn]`);
    }
    const L = ph * pw;
    const tokens = transpose2d(gpu, next.reshape([b, d, L]));
    const embedded = linear(gpu, tokens, this.weights.wordEmbedW, this.weights.wordEmbedB);
    tokens.dispose();
    const x = gpu.empty([rows.count, L, config.width], 'f32', 'star-x');
    const flat = x.reshape([rows.count * L, config.width]);
    const src = embedded.reshape([b * L, config.width]);
    for (let r = 0; r < rows.count; r++) copyRows(gpu, src, flat, { srcRow: gen.promptOf(rows.start + r) * L, dstRow: r * L, rows: L });
    embedded.dispose();
    return x;
  }

  /** x + lvl_embed[si] on every token (a new tensor). */
  addLevel(x: Tensor, si: number): Tensor {
    const lvl = this.weights.levels[si];
    if (!lvl) throw new Error(`scale ${si} has no level embedding (0..${this.config.levels - 1})`);
    return add(this.gpu, x, lvl);
  }

  /** The input of block 0 at scale si: start token (si = 0) or word_embed(next), plus lvl_embed[si]. */
  scaleInput(gen: StarGeneration, si: number, next: Tensor | null, rows: RowRange = gen.allRows()): Tensor {
    if ((si === 0) !== (next === null)) throw new Error(`scale ${si}: ${si === 0 ? 'takes no next-scale input' : 'needs the next-scale input of the previous scale'}`);
    const raw = next ? this.embedNext(gen, next, rows) : this.sosInput(gen, rows);
    const x = this.addLevel(raw, si);
    raw.dispose();
    return x;
  }

  /** All blocks on a copy of x (x is left as the blocks' input). */
  forward(x: Tensor, gen: StarGeneration, step: StarStep, hooks: ForwardHooks = {}): Tensor {
    const out = this.gpu.empty(x.shape, 'f32', 'star-x');
    this.gpu.copy(x, out);
    for (let l = 0; l < this.config.depth; l++) {
      this.runLayer(l, out, gen, step, hooks);
      hooks.onLayer?.(l, out);
    }
    return out;
  }

  /** One block, in place on x [n·tokens, C]; appends the step's K/V to the layer's cache. */
  runLayer(layer: number, x: Tensor, gen: StarGeneration, step: StarStep, hooks: ForwardHooks = {}): void {
    const { gpu, config } = this;
    const w = this.weights.layers[layer];
    if (!w) throw new Error(`layer ${layer} outside 0..${config.depth - 1}`);
    const { width: C, heads: H, eps } = config;
    const { rows, tokens: L } = step;
    const n = rows.count;
    const xs = x.reshape([n * L, C]);
    // One table for every row ([L, …]) or one per row ([n·L, …]: projected rows at their own sampled slots).
    const ropeRows = step.rope.shape[0];
    if (ropeRows !== L && ropeRows !== n * L) throw new Error(`step RoPE table ${step.rope} has ${ropeRows} rows; the step needs ${L} (shared) or ${n}·${L} (one table per row)`);

    // Self-attention over the cache of earlier scales plus this step (no mask: all of this scale is visible).
    // `act` is the storage dtype of the linears' inputs and of q/k/v, the attention and FFN outputs; the
    // linears that write into the residual stream (proj, cross proj, fc2) give f32.
    const act = gen.activations;
    const h = layerNorm(gpu, xs, { eps, outDtype: act });
    const q = linear(gpu, h, w.wq, w.qBias, { outDtype: act });
    const k = linear(gpu, h, w.wk, w.kBias, { outDtype: act });
    const v = linear(gpu, h, w.wv, w.vBias, { outDtype: act });
    h.dispose();
    applyRope(gpu, q, step.rope, { heads: H, rowsPerBatch: ropeRows });
    applyRope(gpu, k, step.rope, { heads: H, rowsPerBatch: ropeRows });
    l2NormalizeHeads(gpu, q, { heads: H, scale: w.selfScale, out: q });
    l2NormalizeHeads(gpu, k, { heads: H, out: k });
    const o = gen.cache.attend(layer, rows, q, k, v, L, H);
    for (const t of [q, k, v]) t.dispose();
    const y = linear(gpu, o.reshape([n * L, C]), w.projW, w.projB);
    o.dispose();
    gatedResidual(gpu, xs, y, null);
    y.dispose();

    // Cross-attention of the step's first row only; its output goes to every row (upstream's `[0]`).
    const hc = layerNorm(gpu, xs.rows(0, L), { eps, outDtype: act });
    const qc = linear(gpu, hc, w.crossQW, w.crossQBias, { outDtype: act });
    hc.dispose();
    l2NormalizeHeads(gpu, qc, { heads: H, scale: w.crossScale, out: qc });
    const text = this.crossText(gen, step.textRow);
    const [tk, tv] = [text.k[layer], text.v[layer]];
    const oc = attention(gpu, qc.reshape([1, L, C]), tk.reshape([1, tk.shape[0], C]), tv.reshape([1, tv.shape[0], C]), { heads: H, scale: 1 });
    qc.dispose();
    const yc = linear(gpu, oc.reshape([L, C]), w.crossProjW, w.crossProjB);
    oc.dispose();
    hooks.onCross?.(layer, yc);
    if (n === 1) gatedResidual(gpu, xs, yc, null);
    else {
      const sum = add(gpu, xs.reshape([n, L, C]), yc);
      gpu.copy(sum, xs);
      sum.dispose();
    }
    yc.dispose();

    // FFN, in row blocks: the hidden layer of the 1024 model's last scale is 2·4096 × 7680 f32 (240 MiB),
    // at the maxBufferSize of many devices. Blocks are whole multiples of the rows that keep a view aligned.
    const align = gpu.limits.minStorageBufferOffsetAlignment;
    const unit = align / gcd(align, C * 4);
    const block = Math.max(unit, Math.floor(this.ffnBlockBytes / (config.ffnWidth * 4) / unit) * unit);
    for (let r0 = 0; r0 < n * L; r0 += block) {
      const xr = xs.rows(r0, Math.min(block, n * L - r0));
      const h2 = layerNorm(gpu, xr, { eps, outDtype: act });
      const f = linear(gpu, h2, w.fc1W, w.fc1B, { activation: 'gelu_tanh', outDtype: act });
      h2.dispose();
      const y2 = linear(gpu, f, w.fc2W, w.fc2B);
      f.dispose();
      gatedResidual(gpu, xr, y2, null);
      y2.dispose();
    }
  }

  /** head_logits(logit_norm(x)) → raw logits [rows·tokens, V]. */
  head(x: Tensor): Tensor {
    const C = this.config.width;
    const h = layerNorm(this.gpu, x.reshape([x.numel / C, C]), { eps: this.config.eps });
    const logits = linear(this.gpu, h, this.weights.headW, this.weights.headB);
    h.dispose();
    return logits;
  }

  /**
   * CFG logits (1+t)·head(LN x_c) − t·head(LN x_u), computed as head((1+t)·LN x_c − t·LN x_u): the head is
   * linear and its bias survives since (1+t) − t = 1. x holds the conditional rows, then as many
   * unconditional rows (upstream's logits[:B] and logits[B:]) → [rows/2 · tokens, V].
   */
  guidedHead(x: Tensor, t: number): Tensor {
    const { gpu, config } = this;
    const C = config.width;
    const n = x.numel / C;
    if (n % 2 !== 0) throw new Error(`guided head: ${x} must hold conditional then unconditional rows of equal count`);
    const h = layerNorm(gpu, x.reshape([n, C]), { eps: config.eps });
    const cond = h.rows(0, n / 2);
    let uncond = h.rows(n / 2, n / 2);
    let copied = false;
    if (uncond.byteOffset % gpu.limits.minStorageBufferOffsetAlignment !== 0) {
      uncond = copyRows(gpu, h, gpu.empty([n / 2, C], 'f32', 'star-uncond'), { srcRow: n / 2, rows: n / 2 });
      copied = true;
    }
    const mixed = binary(gpu, 'add', cond, uncond, { alpha: 1 + t, beta: -t });
    if (copied) uncond.dispose();
    h.dispose();
    const logits = linear(gpu, mixed, this.weights.headW, this.weights.headB);
    mixed.dispose();
    return logits;
  }

  /** A RoPE table for arbitrary token positions [L, 2] = (x = column, y = row), already normalised. */
  ropeTable(positions: ArrayLike<number>): Tensor {
    const { headDim, ropeTheta } = this.config;
    const L = positions.length / 2;
    return this.gpu.upload(ropeTable(positions, headDim, ropeTheta), [L, headDim / 2, 2], 'f32', 'star-rope');
  }

  /**
   * Text keys and values of one text row for every layer, computed on first use: only the valid tokens
   * (masking a key with −inf removes it from the softmax exactly), k L2-normalised, v with its bias.
   */
  crossText(gen: StarGeneration, textRow: number): CrossText {
    const hit = gen.crossTexts.get(textRow);
    if (hit) return hit;
    const { gpu, config } = this;
    const T = gen.textTokens;
    if (!Number.isInteger(textRow) || textRow < 0 || textRow >= gen.rows) throw new Error(`text row ${textRow} outside 0..${gen.rows - 1}`);
    const valid: number[] = [];
    for (let j = 0; j < T; j++) if (gen.text.mask[textRow * T + j]) valid.push(textRow * T + j);
    // All keys masked gives NaN upstream (softmax over −inf only); refuse instead.
    if (valid.length === 0) throw new Error(`text row ${textRow} has no valid token (its mask is all 0)`);
    const index = gpu.upload(Int32Array.from(valid), [valid.length], 'i32', 'star-text-index');
    const states = gatherRows(gpu, gen.text.hidden.reshape([gen.rows * T, config.textWidth]), index);
    index.dispose();
    const out: CrossText = { k: [], v: [] };
    for (const w of this.weights.layers) {
      const k = linear(gpu, states, w.crossKW, w.crossKBias);
      l2NormalizeHeads(gpu, k, { heads: config.heads, out: k });
      out.k.push(k);
      out.v.push(linear(gpu, states, w.crossVW, w.crossVBias));
    }
    states.dispose();
    gen.crossTexts.set(textRow, out);
    return out;
  }

  dispose(): void {
    for (const t of this.weights.owned) t.dispose();
    this.weights.owned.length = 0;
  }
}
