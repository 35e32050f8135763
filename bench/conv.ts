// conv2d benchmark: a VAE-decoder-shaped 3×3 conv (128 → 128 channels, padding 1), scaled to 64×64 so it
// runs in seconds on lavapipe; plus the f16-weight variant and the decoder's 1×1 shortcut and RGB conv_out.
// ms = median wall time of `runs` launches after warm-up, each followed by gpu.sync().

import type { Gpu } from '../engine/device.js';
import type { DType } from '../engine/dtype.js';
import { f32ToF16Bits } from '../engine/dtype.js';
import { conv2d, conv2dFlops, type ConvTileName } from '../kernels/conv.js';
import { type BenchRow, randomF32 } from './types.js';

interface ConvCase {
  n: number;
  cin: number;
  cout: number;
  h: number;
  w: number;
  k: number;
  dtype: DType;
  tile?: ConvTileName;
}

async function benchOne(gpu: Gpu, c: ConvCase, warmup: number, runs: number): Promise<BenchRow> {
  const pad = (c.k - 1) / 2;
  const x = gpu.upload(randomF32(c.n * c.cin * c.h * c.w, 1), [c.n, c.cin, c.h, c.w], 'f32');
  const wf = randomF32(c.cout * c.cin * c.k * c.k, 2);
  const wShape = [c.cout, c.cin, c.k, c.k];
  const w = c.dtype === 'f32' ? gpu.upload(wf, wShape, 'f32') : gpu.upload(Uint16Array.from(wf, f32ToF16Bits), wShape, 'f16');
  const bias = gpu.upload(randomF32(c.cout, 3), [c.cout], 'f32');
  const out = gpu.empty([c.n, c.cout, c.h, c.w], 'f32');
  const times: number[] = [];
  for (let i = 0; i < warmup + runs; i++) {
    const t0 = performance.now();
    conv2d(gpu, x, w, bias, { padding: pad, out, tile: c.tile });
    await gpu.sync();
    if (i >= warmup) times.push(performance.now() - t0);
  }
  for (const t of [x, w, bias, out]) t.dispose();
  times.sort((a, b) => a - b);
  const ms = times[Math.floor(times.length / 2)];
  const flops = conv2dFlops(c.n, c.cin, c.cout, c.h, c.w, c.k);
  const bytes = 4 * c.n * (c.cin + c.cout) * c.h * c.w + (c.dtype === 'f32' ? 4 : 2) * c.cout * c.cin * c.k * c.k;
  return {
    kernel: `conv2d${c.tile ? `_${c.tile}` : ''}`,
    shape: `${c.n}×${c.cin}×${c.h}×${c.w} → ${c.cout}, k${c.k}`,
    dtype: c.dtype,
    ms,
    gflops: flops / (ms * 1e6),
    gbps: bytes / (ms * 1e6),
  };
}

export async function benchConv(gpu: Gpu, opts: { warmup?: number; runs?: number; cases?: ConvCase[] } = {}): Promise<BenchRow[]> {
  const cases: ConvCase[] = opts.cases ?? [
    { n: 1, cin: 128, cout: 128, h: 64, w: 64, k: 3, dtype: 'f32' },
    { n: 1, cin: 128, cout: 128, h: 64, w: 64, k: 3, dtype: 'f16' },
    { n: 1, cin: 256, cout: 128, h: 64, w: 64, k: 1, dtype: 'f16' },
    { n: 1, cin: 128, cout: 3, h: 128, w: 128, k: 3, dtype: 'f16' },
  ];
  const rows: BenchRow[] = [];
  for (const c of cases) rows.push(await benchOne(gpu, c, opts.warmup ?? 1, opts.runs ?? 5));
  return rows;
}
