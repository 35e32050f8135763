// The Infinity transformer as building blocks, not one forward: a sampler (or the StageVAR policy) decides
// per scale which rows run, chunk by chunk, and can read every chunk's input and output.
//
//   model.begin(...)                   → Generation (text constants, RoPE table, KV cache)
//   model.sosInput(gen, rows)          → x [n, 1, C] for scale 0
//   model.embedTokens(gen, tok, rows)  → x [n, h·w, C] from a next-scale input [B, h·w, bits]
//   model.addLevel(x, si)              → x + lvl_embed[si] (before chunk 0)
//   model.runChunk(c, x, gen, step)    → x after block chunk c (appends the step's K/V to the cache)
//   model.runLayer(l, x, gen, step)    in place, one transformer layer
//   model.head(x, gen, step)           → logits [n·tokens, 2·bits] (pair 2j, 2j+1 = bit j is 0, 1)
//
// x is [rows·tokens, C] f32 (any leading shape with those rows), rows ordered as step.rows.
//
// Precision (load options, overridable per generation in `begin`):
//   activations 'f32' (default) — the reference path, every intermediate f32.
//   activations 'f16' — what feeds and leaves the linears of the layers is stored as f16: the LN/AdaLN
//     outputs, q/k/v (normalised and rotated in place), the attention outputs and the FFN hidden. The
//     residual stream, every norm/softmax statistic and accumulator, the RoPE table, the text path, the
//     head and its logits stay f32 (upstream runs its blocks under autocast with fp32 norms and head).
//     Needs shader-f16: without it `load`/`begin` throw instead of silently running f32 — a fallback would
//     make memory and parity figures lie about which path ran; check `gpu.hasF16` to choose.
//   cacheDtype 'f32' (default) or 'f16' — the KV cache's storage, independent of the activations and
//     portable (no feature needed): f16 halves the cache (11 GB → 5.5 GB for 2B at 1M with CFG).

import type { Gpu } from '../../engine/device.js';
import type { Tensor } from '../../engine/tensor.js';
import { add } from '../../kernels/elementwise.js';
import { copyRows } from '../../kernels/layout.js';
import { linear } from '../../kernels/matmul.js';
import { adaLayerNorm } from '../../kernels/norms.js';
import { Checkpoint } from '../weights/checkpoint.js';
import type { TensorSource } from '../weights/gpu_load.js';
import { scaleStarts, type Grid } from '../../sampler/schedule.js';
import type { InfinityConfig } from './config.js';
import { Generation, ropeTensor, type RowRange, type ScaleStep } from './generation.js';
import { KvCache } from '../kv_cache.js';
import { resolvePrecision, type Precision } from '../precision.js';
import { runLayer } from './layer.js';
import { ropeTable } from './rope.js';
import { encodeText, type TextInput } from './text.js';
import { release, rowsView } from './views.js';
import { loadInfinityWeights, type InfinityWeights, type LoadOptions } from './weights.js';

export type { Precision } from '../precision.js';

export interface InfinityModelOptions extends LoadOptions, Partial<Precision> {}

export interface BeginOptions extends Partial<Precision> {
  text: TextInput;
  schedule: readonly Grid[];
  /** Final grid of the aspect template's 1M schedule (`ropeGrid(template)`): RoPE positions live on it. */
  ropeGrid: Grid;
  /** Tokens per row the KV cache must hold; default: every token of the schedule. */
  cacheTokens?: number;
}

export class InfinityModel {
  private constructor(
    readonly gpu: Gpu,
    readonly config: InfinityConfig,
    readonly weights: InfinityWeights,
    /** Default precision of `begin` (each generation may override it). */
    readonly precision: Precision,
  ) {}

  /**
   * Loads a checkpoint (file, folder, index or an open source); the architecture comes from its tensors.
   * `activations` and `cacheDtype` set the default precision of generations (validated before loading).
   */
  static async load(gpu: Gpu, from: string | (TensorSource & { names(): string[] }), options: InfinityModelOptions = {}): Promise<InfinityModel> {
    const { activations, cacheDtype, ...loadOptions } = options;
    const precision = resolvePrecision(gpu, 'Infinity', { activations, cacheDtype });
    if (typeof from !== 'string') {
      const { config, weights } = await loadInfinityWeights(gpu, from, loadOptions);
      return new InfinityModel(gpu, config, weights, precision);
    }
    const checkpoint = await Checkpoint.open(from);
    try {
      const { config, weights } = await loadInfinityWeights(gpu, checkpoint, loadOptions);
      return new InfinityModel(gpu, config, weights, precision);
    } finally {
      await checkpoint.close();
    }
  }

  /** Layers of block chunk c: global indices c·layersPerChunk … (c+1)·layersPerChunk − 1. */
  chunkLayers(c: number): number[] {
    const n = this.config.layersPerChunk;
    if (!Number.isInteger(c) || c < 0 || c >= this.config.chunks) throw new Error(`block chunk ${c} outside 0..${this.config.chunks - 1}`);
    return Array.from({ length: n }, (_, j) => c * n + j);
  }

  /** Computes the per-generation constants and allocates the KV cache (precision: the model's unless given). */
  begin(options: BeginOptions): Generation {
    const { gpu, config } = this;
    const precision = resolvePrecision(gpu, 'Infinity', options, this.precision);
    const cond = encodeText(gpu, config, this.weights, options.text);
    const tokens = options.cacheTokens ?? scaleStarts(options.schedule).at(-1)!;
    const cache = new KvCache(gpu, config.depth, cond.rows, config.width, tokens, precision.cacheDtype);
    const rope = ropeTensor(gpu, options.schedule, options.ropeGrid, config.headDim);
    return new Generation(gpu, options.text.lens.length, cond, options.schedule, rope, cache, precision.activations);
  }

  /** A RoPE table for arbitrary token positions ((row, col) pairs on the template's final 1M grid). */
  ropeTableFor(positions: Int32Array): Tensor {
    const hd = this.config.headDim;
    return this.gpu.upload(ropeTable(positions, hd), [positions.length / 2, hd / 2, 2], 'f32', 'rope-table');
  }

  /** Scale 0's input: the sos token (pooled text + pos_start) of each row, [n, 1, C]. */
  sosInput(gen: Generation, rows: RowRange = gen.allRows()): Tensor {
    const C = this.config.width;
    const x = this.gpu.empty([rows.count, 1, C], 'f32', 'infinity-x');
    copyRows(this.gpu, gen.conditioning.sos, x.reshape([rows.count, C]), { srcRow: rows.start, rows: rows.count });
    return x;
  }

  /**
   * word_embed of a next-scale input: tokens [B, L, bits] (one per prompt, shared by both branches, as
   * upstream duplicates it) → x [n, L, C] for the given rows.
   */
  embedTokens(gen: Generation, tokens: Tensor, rows: RowRange = gen.allRows()): Tensor {
    const { gpu, config } = this;
    const [b, L, bits] = tokens.shape;
    if (tokens.rank !== 3 || b !== gen.batch || bits !== config.bitsPerToken) {
      throw new Error(`next-scale input ${tokens} must be [${gen.batch}, L, ${config.bitsPerToken}]`);
    }
    const embedded = linear(gpu, tokens.reshape([b * L, bits]), this.weights.wordEmbedW, this.weights.wordEmbedB);
    const x = gpu.empty([rows.count, L, config.width], 'f32', 'infinity-x');
    const flat = x.reshape([rows.count * L, config.width]);
    for (let r = 0; r < rows.count; r++) {
      copyRows(gpu, embedded, flat, { srcRow: gen.promptOf(rows.start + r) * L, dstRow: r * L, rows: L });
    }
    embedded.dispose();
    return x;
  }

  /** x + lvl_embed[si] on every token (a new tensor). */
  addLevel(x: Tensor, si: number): Tensor {
    if (!Number.isInteger(si) || si < 0 || si >= this.config.levels) throw new Error(`scale ${si} has no level embedding (0..${this.config.levels - 1})`);
    const row = rowsView(this.gpu, this.weights.lvlEmbed, si, 1);
    const out = add(this.gpu, x, row.tensor.reshape([this.config.width]));
    release(row);
    return out;
  }

  /**
   * Block chunk c on a copy of x (x itself is left as the chunk's input). `onLayer` sees the residual
   * stream after each layer (a live tensor: copy it to keep it).
   */
  runChunk(c: number, x: Tensor, gen: Generation, step: ScaleStep, onLayer?: (layer: number, x: Tensor) => void): Tensor {
    const out = this.gpu.empty(x.shape, 'f32', 'infinity-x');
    this.gpu.copy(x, out);
    for (const l of this.chunkLayers(c)) {
      this.runLayer(l, out, gen, step);
      onLayer?.(l, out);
    }
    return out;
  }

  /** One transformer layer, in place on x [n·tokens, C]. */
  runLayer(layer: number, x: Tensor, gen: Generation, step: ScaleStep): void {
    runLayer(this.gpu, this.config, this.weights.layers[layer], layer, x, gen, step);
  }

  /** AdaLN head (the row's own condition) → logits [n·tokens, 2·bits]. */
  head(x: Tensor, gen: Generation, step: ScaleStep): Tensor {
    const { gpu, config } = this;
    const n = step.rows.count;
    if (x.numel !== n * step.tokens * config.width) throw new Error(`x ${x} does not hold ${n} rows × ${step.tokens} tokens × ${config.width} channels`);
    const xs = x.reshape([n * step.tokens, config.width]);
    const scale = rowsView(gpu, gen.conditioning.headScale, step.rows.start, n);
    const shift = rowsView(gpu, gen.conditioning.headShift, step.rows.start, n);
    const h = adaLayerNorm(gpu, xs, scale.tensor, shift.tensor, { eps: config.eps, rowsPerGroup: step.tokens });
    release(scale);
    release(shift);
    const logits = linear(gpu, h, this.weights.headW, this.weights.headB);
    h.dispose();
    return logits;
  }

  dispose(): void {
    this.gpu.flush(); // persistent weights are destroyed at once: submit recorded work that reads them first
    for (const t of this.weights.owned) t.dispose();
    this.weights.owned.length = 0;
  }
}
