// Buffer pool with size classes. Transient tensors (activations) come from here and go back on dispose;
// persistent ones (weights, caches) are allocated exactly. Live and peak byte counters cover both, so
// benchmarks can report peak GPU memory.

import { LimitError } from './errors.js';

const USAGE_STORAGE = 0x80 | 0x4 | 0x8; // STORAGE | COPY_SRC | COPY_DST (GPUBufferUsage, spelled out: no globals needed)

/** Size class: powers of two up to 64 KiB, then four steps per power of two (≤ 25% waste). */
export function sizeClass(bytes: number): number {
  const b = Math.max(256, Math.ceil(bytes / 16) * 16);
  if (b <= 65536) return 2 ** Math.ceil(Math.log2(b));
  const p = 2 ** Math.floor(Math.log2(b));
  const step = p / 4;
  return Math.ceil(b / step) * step;
}

export interface PoolStats {
  liveBytes: number;
  peakBytes: number;
  freeBytes: number;
  buffers: number;
}

export class BufferPool {
  private free = new Map<number, GPUBuffer[]>();
  private sizes = new WeakMap<GPUBuffer, number>();
  private live = 0;
  private peak = 0;
  private freeTotal = 0;
  private count = 0;

  constructor(
    private readonly device: GPUDevice,
    private readonly maxBufferSize: number,
    private readonly onDestroy: (buffer: GPUBuffer) => void,
  ) {}

  /** A pooled buffer of at least `bytes`; its real size is its size class. */
  acquire(bytes: number, label = 'pooled'): GPUBuffer {
    let size = sizeClass(bytes);
    if (size > this.maxBufferSize) size = Math.ceil(bytes / 16) * 16; // no headroom near the limit
    if (size > this.maxBufferSize) throw new LimitError(`buffer "${label}"`, 'maxBufferSize', size, this.maxBufferSize);
    const list = this.free.get(size);
    const reused = list?.pop();
    if (reused) {
      this.freeTotal -= size;
      this.track(size);
      return reused;
    }
    const buffer = this.create(size, label);
    return buffer;
  }

  /** An exactly-sized buffer outside the size classes (weights, KV caches). Release with `destroy`. */
  allocate(bytes: number, label: string): GPUBuffer {
    const size = Math.max(16, Math.ceil(bytes / 16) * 16);
    if (size > this.maxBufferSize) throw new LimitError(`buffer "${label}"`, 'maxBufferSize', size, this.maxBufferSize);
    return this.create(size, label);
  }

  /** Returns a pooled buffer for reuse. */
  release(buffer: GPUBuffer): void {
    const size = this.sizes.get(buffer);
    if (size === undefined) throw new Error('BufferPool.release: buffer was not allocated by this pool');
    this.live -= size;
    this.freeTotal += size;
    let list = this.free.get(size);
    if (!list) this.free.set(size, (list = []));
    list.push(buffer);
  }

  /** Frees a buffer for good (persistent allocations, or pool trimming). */
  destroy(buffer: GPUBuffer): void {
    const size = this.sizes.get(buffer);
    if (size === undefined) return;
    this.sizes.delete(buffer);
    this.live -= size;
    this.count--;
    this.onDestroy(buffer);
    buffer.destroy();
  }

  /** Destroys every cached free buffer. */
  trim(): void {
    for (const list of this.free.values()) {
      for (const b of list) {
        this.sizes.delete(b);
        this.count--;
        this.onDestroy(b);
        b.destroy();
      }
    }
    this.free.clear();
    this.freeTotal = 0;
  }

  resetPeak(): void {
    this.peak = this.live;
  }

  stats(): PoolStats {
    return { liveBytes: this.live, peakBytes: this.peak, freeBytes: this.freeTotal, buffers: this.count };
  }

  private create(size: number, label: string): GPUBuffer {
    const buffer = this.device.createBuffer({ size, usage: USAGE_STORAGE, label });
    this.sizes.set(buffer, size);
    this.count++;
    this.track(size);
    return buffer;
  }

  private track(size: number): void {
    this.live += size;
    if (this.live > this.peak) this.peak = this.live;
  }
}
