// conv2d benchmark: a VAE-decoder-shaped 3×3 conv (128 → 128 channels, padding 1), scaled to 64×64 so it
// runs in seconds on lavapipe; plus the f16-weight variant and the decoder's 1×1 shortcut and RGB conv_out;
// each with the direct kernel and with im2col + GEMM.
// Measured on lavapipe (one run, side by side, direct → GEMM): 128 → 128 3×3 at 64² f32 5.9 → 13.7 GFLOP/s,
// f16 weights 5.6 → 14.1; 1×1 256 → 128 4.7 → 5.9; conv_out 128 → 3 at 128² 0.47 → 1.14.
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
  method?: 'direct' | 'gemm';
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
    conv2d(gpu, x, w, bias, { padding: pad, out, tile: c.tile, method: c.method });
    await gpu.sync();
    if (i >= warmup) times.push(performance.now() - t0);
  }
  for (const t of [x, w, bias, out]) t.dispose();
  times.sort((a, b) => a - b);
  const ms = times[Math.floor(times.length / 2)];
  const flops = conv2dFlops(c.n, c.cin, c.cout, c.h, c.w, c.k);
  const bytes = 4 * c.n * (c.cin + c.cout) * c.h * c.w + (c.dtype === 'f32' ? 4 : 2) * c.cout * c.cin * c.k * c.k;
  return {
    kernel: `conv2d${c.tile ? `_${c.tile}` : ''}${c.method ? ` [${c.method}]` : ''}`,
    shape: `${c.n}×${c.cin}×${c.h}×${c.w} → ${c.cout}, k${c.k}`,
    dtype: c.dtype,
    ms,
    gflops: flops / (ms * 1e6),
    gbps: bytes / (ms * 1e6),
  };
}

export async function benchConv(gpu: Gpu, opts: { warmup?: number; runs?: number; cases?: ConvCase[] } = {}): Promise<BenchRow[]> {
  // Each shape with both methods side by side: the direct kernel (GPUs' default) and im2col + GEMM (CPU adapters').
  const shapes: ConvCase[] = [
    { n: 1, cin: 128, cout: 128, h: 64, w: 64, k: 3, dtype: 'f32' },
    { n: 1, cin: 128, cout: 128, h: 64, w: 64, k: 3, dtype: 'f16' },
    { n: 1, cin: 256, cout: 128, h: 64, w: 64, k: 1, dtype: 'f16' },
    { n: 1, cin: 128, cout: 3, h: 128, w: 128, k: 3, dtype: 'f16' },
  ];
  const cases: ConvCase[] = opts.cases ?? shapes.flatMap((c) => [{ ...c, method: 'direct' as const }, { ...c, method: 'gemm' as const }]);
  const rows: BenchRow[] = [];
  for (const c of cases) rows.push(await benchOne(gpu, c, opts.warmup ?? 1, opts.runs ?? 5));
  return rows;
}
