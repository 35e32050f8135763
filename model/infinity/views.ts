// Row views that kernels can bind. A view shares its parent's buffer, but WebGPU binds storage only at
// offsets aligned to minStorageBufferOffsetAlignment; widths whose rows are not a multiple of it (rare:
// C·4 bytes with C not a multiple of 64 on 256-byte devices) get a copy instead.

import type { Gpu } from '../../engine/device.js';
import type { Tensor } from '../../engine/tensor.js';
import { copyRows } from '../../kernels/layout.js';

export interface RowsView {
  tensor: Tensor;
  /** True when `tensor` is a copy that the caller must dispose. */
  copied: boolean;
}

export function isBindable(gpu: Gpu, t: Tensor): boolean {
  return t.byteOffset % gpu.limits.minStorageBufferOffsetAlignment === 0;
}

/** Rows [start, start + count) of t along dim 0: a view when bindable, else a pooled copy. */
export function rowsView(gpu: Gpu, t: Tensor, start: number, count: number): RowsView {
  const view = t.rows(start, count);
  if (isBindable(gpu, view)) return { tensor: view, copied: false };
  const copy = gpu.empty(view.shape, t.dtype, `${t.label}-rows`);
  copyRowRange(gpu, t, copy, start, count);
  return { tensor: copy, copied: true };
}

/** A persistent (exactly sized, never pooled) bindable copy of rows when the view is not bindable. */
export function persistentRows(gpu: Gpu, t: Tensor, start: number, count: number, owned: Tensor[]): Tensor {
  const view = t.rows(start, count);
  if (isBindable(gpu, view)) return view;
  const copy = gpu.persistent(view.shape, t.dtype, `${t.label}-rows`);
  copyRowRange(gpu, t, copy, start, count);
  owned.push(copy);
  return copy;
}

/** Copies rows [start, start + count) of t (along dim 0, any rank) into dst. */
function copyRowRange(gpu: Gpu, t: Tensor, dst: Tensor, start: number, count: number): void {
  const cols = t.rank === 1 ? 1 : t.shape[t.rank - 1];
  const perRow = t.rank === 1 ? 1 : t.rowSize / cols;
  copyRows(gpu, t.reshape([-1, cols]), dst.reshape([-1, cols]), { srcRow: start * perRow, rows: count * perRow });
}

export function release(v: RowsView): void {
  if (v.copied) v.tensor.dispose();
}
