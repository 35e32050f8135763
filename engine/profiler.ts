// Per-kernel GPU time from timestamp queries. When enabled, every dispatch runs in its own compute pass
// with begin/end timestamps; times are resolved after each submit and summed per kernel name.

export interface KernelTiming {
  kernel: string;
  calls: number;
  totalMs: number;
}

export class Profiler {
  private readonly querySet: GPUQuerySet;
  private readonly resolveBuffer: GPUBuffer;
  private names: string[] = [];
  private totals = new Map<string, KernelTiming>();
  private pending: Promise<void>[] = [];

  constructor(
    private readonly device: GPUDevice,
    readonly capacity: number,
  ) {
    this.querySet = device.createQuerySet({ type: 'timestamp', count: capacity * 2, label: 'profiler' });
    this.resolveBuffer = device.createBuffer({
      size: capacity * 16,
      usage: 0x200 | 0x4, // QUERY_RESOLVE | COPY_SRC
      label: 'profiler-resolve',
    });
  }

  get full(): boolean {
    return this.names.length >= this.capacity;
  }

  /** Timestamp writes for the next dispatch's pass. */
  passWrites(kernel: string): GPUComputePassTimestampWrites {
    const i = this.names.length;
    this.names.push(kernel);
    return { querySet: this.querySet, beginningOfPassWriteIndex: 2 * i, endOfPassWriteIndex: 2 * i + 1 };
  }

  /** Records the resolve of this batch's queries; call `collect` after submitting the encoder. */
  resolve(encoder: GPUCommandEncoder): (() => void) | null {
    const n = this.names.length;
    if (n === 0) return null;
    const names = this.names;
    this.names = [];
    const staging = this.device.createBuffer({ size: n * 16, usage: 0x1 | 0x8, label: 'profiler-read' }); // MAP_READ | COPY_DST
    encoder.resolveQuerySet(this.querySet, 0, 2 * n, this.resolveBuffer, 0);
    encoder.copyBufferToBuffer(this.resolveBuffer, 0, staging, 0, n * 16);
    return () => {
      this.pending.push(
        staging.mapAsync(1 /* READ */).then(() => {
          const t = new BigUint64Array(staging.getMappedRange());
          for (let i = 0; i < n; i++) {
            const ms = Number(t[2 * i + 1] - t[2 * i]) / 1e6;
            const entry = this.totals.get(names[i]) ?? { kernel: names[i], calls: 0, totalMs: 0 };
            entry.calls++;
            entry.totalMs += ms > 0 ? ms : 0;
            this.totals.set(names[i], entry);
          }
          staging.unmap();
          staging.destroy();
        }),
      );
    };
  }

  async results(): Promise<KernelTiming[]> {
    await Promise.all(this.pending);
    this.pending = [];
    return [...this.totals.values()].sort((a, b) => b.totalMs - a.totalMs);
  }

  reset(): void {
    this.totals.clear();
  }

  static table(rows: KernelTiming[]): string {
    const total = rows.reduce((s, r) => s + r.totalMs, 0);
    const lines = ['kernel                              calls    total ms     mean ms      %'];
    for (const r of rows) {
      lines.push(
        `${r.kernel.padEnd(34)} ${String(r.calls).padStart(6)} ${r.totalMs.toFixed(3).padStart(11)} ` +
          `${(r.totalMs / r.calls).toFixed(4).padStart(11)} ${((100 * r.totalMs) / (total || 1)).toFixed(1).padStart(6)}`,
      );
    }
    lines.push(`${'total'.padEnd(34)} ${''.padStart(6)} ${total.toFixed(3).padStart(11)}`);
    return lines.join('\n');
  }

  destroy(): void {
    this.querySet.destroy();
    this.resolveBuffer.destroy();
  }
}
