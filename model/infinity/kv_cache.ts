// Self-attention KV cache across scales: per layer one K and one V tensor [rows, capacity, C], batch-major,
// so that any contiguous range of sequence rows (e.g. only the unconditional CFG branch) is a plain view
// the attention kernel can take as its [B, Lmax, C] cache. Each (layer, row) keeps its own length: a
// policy may stop appending to some rows (a scale run on the unconditional branch only) and append a
// different number of tokens than the scale has (projected rows).
// The cache is f32 (default) or f16: f16 halves it (Infinity-2B at 1M with CFG: 2 rows × 10,521 tokens ×
// 32 layers × 2 × 2048 values = 11 GB in f32, 5.5 GB in f16) and needs no shader-f16 feature (the
// attention kernel reads halves through packed loads). Keys and values of another dtype than the cache's
// are converted on append, so the cache dtype is independent of the activation dtype.

import type { Gpu } from '../../engine/device.js';
import type { Tensor } from '../../engine/tensor.js';
import { cast } from '../../kernels/elementwise.js';
import { copyRows } from '../../kernels/layout.js';
import { release, rowsView, type RowsView } from './views.js';

/** A contiguous range of sequence rows: [start, start + count). */
export interface RowRange {
  start: number;
  count: number;
}

export type KvDType = 'f32' | 'f16';

export class KvCache {
  readonly k: Tensor[] = [];
  readonly v: Tensor[] = [];
  /** Valid tokens per layer per sequence row. */
  readonly lengths: number[][];
  /** Allocated tokens per row; a multiple of 64 so that every row range of the cache binds at an aligned offset. */
  readonly capacity: number;

  constructor(
    private readonly gpu: Gpu,
    readonly layers: number,
    readonly rows: number,
    readonly width: number,
    tokens: number,
    readonly dtype: KvDType = 'f32',
  ) {
    if (dtype !== 'f32' && dtype !== 'f16') throw new Error(`KV cache dtype must be 'f32' or 'f16', got ${String(dtype)}`);
    this.capacity = Math.ceil(tokens / 64) * 64;
    for (let l = 0; l < layers; l++) {
      this.k.push(gpu.persistent([rows, this.capacity, width], dtype, `kv-cache-k${l}`));
      this.v.push(gpu.persistent([rows, this.capacity, width], dtype, `kv-cache-v${l}`));
    }
    this.lengths = Array.from({ length: layers }, () => new Array<number>(rows).fill(0));
  }

  /** The common length of a row range at a layer (rows run together must have equal histories). */
  length(layer: number, rows: RowRange): number {
    const lens = this.lengths[layer].slice(rows.start, rows.start + rows.count);
    if (lens.length !== rows.count) throw new Error(`KV cache: rows [${rows.start}, ${rows.start + rows.count}) outside ${this.rows} rows`);
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

  /** K and V of a row range as [count, capacity, C] (views; copies only on unaligned devices). */
  view(layer: number, rows: RowRange): { k: RowsView; v: RowsView } {
    return {
      k: rowsView(this.gpu, this.k[layer], rows.start, rows.count),
      v: rowsView(this.gpu, this.v[layer], rows.start, rows.count),
    };
  }

  releaseView(view: { k: RowsView; v: RowsView }): void {
    release(view.k);
    release(view.v);
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
