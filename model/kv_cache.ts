// The self-attention KV cache across scales, shared by Infinity and STAR: per layer one K and one V tensor
// [rows, capacity, C], batch-major, so that any contiguous range of sequence rows (both CFG branches, or the
// unconditional one alone) is a plain view the attention kernel takes as its [n, Lmax, C] cache. Lengths are
// kept per (layer, row): a policy may stop appending to some rows (a scale run on the unconditional branch
// only) and append another number of tokens than the scale has (StageVAR's projected rows). Both models cache
// the post-RoPE, L2-normalised k and the raw v.
// f32 (default) or f16: f16 halves the cache (Infinity-2B at 1M with CFG: 2 rows × 10,521 tokens × 32 layers ×
// 2 × 2048 values = 11 GB in f32, 5.5 GB in f16) and needs no shader-f16 feature (the attention kernel reads
// halves through packed loads). Keys and values of the other dtype are converted on append.

import type { Gpu } from '../engine/device.js';
import type { Tensor } from '../engine/tensor.js';
import { attention } from '../kernels/attention.js';
import { cast } from '../kernels/elementwise.js';
import { copyRows } from '../kernels/layout.js';

export type KvDType = 'f32' | 'f16';

/** A contiguous range of sequence rows: [start, start + count). */
export interface RowRange {
  start: number;
  count: number;
}

export class KvCache {
  readonly k: Tensor[] = [];
  readonly v: Tensor[] = [];
  /** Valid tokens per layer per sequence row. */
  readonly lengths: number[][];
  /**
   * Tokens allocated per row: a multiple of 64, so that a row's view starts at a multiple of 64·C elements —
   * 256-byte aligned for any even C (widths are multiples of 4·heads), i.e. bindable on every device.
   */
  readonly capacity: number;

  constructor(
    private readonly gpu: Gpu,
    readonly layers: number,
    readonly rows: number,
    readonly width: number,
    tokens: number,
    readonly dtype: KvDType = 'f32',
    label = 'kv-cache',
  ) {
    if (dtype !== 'f32' && dtype !== 'f16') throw new Error(`KV cache dtype must be 'f32' or 'f16', got ${String(dtype)}`);
    if (width % 2 !== 0) throw new Error(`KV cache width ${width} must be even (row views must stay 256-byte aligned)`);
    this.capacity = Math.max(64, Math.ceil(tokens / 64) * 64);
    for (let l = 0; l < layers; l++) {
      this.k.push(gpu.persistent([rows, this.capacity, width], dtype, `${label}-k${l}`));
      this.v.push(gpu.persistent([rows, this.capacity, width], dtype, `${label}-v${l}`));
    }
    this.lengths = Array.from({ length: layers }, () => new Array<number>(rows).fill(0));
  }

  /** The common length of a row range at a layer (rows that run together must share their history). */
  length(layer: number, rows: RowRange): number {
    const lens = this.lengths[layer].slice(rows.start, rows.start + rows.count);
    if (lens.length !== rows.count || rows.count === 0) throw new Error(`KV cache: rows [${rows.start}, ${rows.start + rows.count}) outside ${this.rows} rows`);
    if (lens.some((x) => x !== lens[0])) {
      throw new Error(`KV cache layer ${layer}: rows [${rows.start}, ${rows.start + rows.count}) have different lengths ${lens.join(', ')}; run them separately`);
    }
    return lens[0];
  }

  /**
   * Appends `tokens` new keys and values per row: k, v are [count·tokens, C] (row-major by sequence row),
   * f32 or f16 (converted to the cache's dtype). Returns the valid length after the append.
   */
  append(layer: number, rows: RowRange, k: Tensor, v: Tensor, tokens: number): number {
    const len = this.length(layer, rows);
    if (len + tokens > this.capacity) {
      throw new Error(`KV cache layer ${layer}: ${len} + ${tokens} tokens exceed the capacity ${this.capacity} (allocate for the whole schedule)`);
    }
    const C = this.width;
    const kFlat = this.k[layer].reshape([-1, C]);
    const vFlat = this.v[layer].reshape([-1, C]);
    const ks = k.dtype === this.dtype ? k : cast(this.gpu, k, this.dtype);
    const vs = v.dtype === this.dtype ? v : cast(this.gpu, v, this.dtype);
    for (let r = 0; r < rows.count; r++) {
      const dstRow = (rows.start + r) * this.capacity + len;
      copyRows(this.gpu, ks, kFlat, { srcRow: r * tokens, dstRow, rows: tokens });
      copyRows(this.gpu, vs, vFlat, { srcRow: r * tokens, dstRow, rows: tokens });
    }
    if (ks !== k) ks.dispose();
    if (vs !== v) vs.dispose();
    for (let r = rows.start; r < rows.start + rows.count; r++) this.lengths[layer][r] = len + tokens;
    return len + tokens;
  }

  /** K and V of a row range as [count, capacity, C] views (the first `length` tokens are valid). */
  view(layer: number, rows: RowRange): { k: Tensor; v: Tensor } {
    return { k: this.k[layer].rows(rows.start, rows.count), v: this.v[layer].rows(rows.start, rows.count) };
  }

  /**
   * A self-attention step of both models: appends the step's keys and values (k, v [n·tokens, C]) to the rows'
   * cache, then attends q [n·tokens, C] over everything cached → [n, tokens, C] (q's dtype). k and v stay the
   * caller's. The attention is cosine (q and k already normalised and scaled): softmax scale 1.
   */
  attend(layer: number, rows: RowRange, q: Tensor, k: Tensor, v: Tensor, tokens: number, heads: number): Tensor {
    const kvLen = this.append(layer, rows, k, v, tokens);
    const cached = this.view(layer, rows);
    return attention(this.gpu, q.reshape([rows.count, tokens, this.width]), cached.k, cached.v, { heads, scale: 1, kvLen });
  }

  /** Cuts rows back to `length` tokens in every layer (e.g. to drop a scale and run it again another way). */
  truncate(rows: RowRange, length: number): void {
    for (const lens of this.lengths) {
      for (let r = rows.start; r < rows.start + rows.count; r++) lens[r] = Math.min(lens[r], length);
    }
  }

  /** Forgets every cached token (the buffers stay allocated for the next generation). */
  reset(): void {
    for (const lens of this.lengths) lens.fill(0);
  }

  dispose(): void {
    this.gpu.flush(); // recorded attention may still read the cache: submit it before destroying
    for (const t of [...this.k, ...this.v]) t.dispose();
    this.k.length = 0;
    this.v.length = 0;
  }
}
