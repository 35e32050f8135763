// matmul / linear benchmark: the square 1024³ f32 GEMM, and Infinity-2B-shaped linears (width 2048, qkv 6144,
// FFN 8192) with f16 and f32 weights. Real K and N; M (tokens × CFG batch) is scaled to the adapter: 512 rows on
// a CPU adapter (lavapipe), 4096 on a GPU; plus the 2B qkv at M = 32 and M = 2, the skinny early-scale cases.
// ms = median wall time of `runs` launches after warm-up, each followed by gpu.sync().
// Kernels: the adapter's own choice ('auto': tiled on GPUs, register-blocked on CPU adapters), and the other
// kernel beside it (the square GEMM on every adapter, the linears on GPUs), so one run compares them.
//
// Measured on lavapipe (Mesa 25.0, 2 Zen 4 cores, other processes present): 1024³ f32 21 GFLOP/s (102 ms);
// 2B linears at M = 512: f16 weights 15–30 GFLOP/s, f32 weights 21–24 GFLOP/s; qkv at M = 32 (f16) 23 GFLOP/s.

import type { Gpu } from '../engine/device.js';
import { f32ToF16Array } from '../engine/dtype.js';
import type { Tensor } from '../engine/tensor.js';
import { type Activation, gemmFlops, linear, matmul, matmulTesting } from '../kernels/matmul.js';
import { type BenchRow, randomF32, row, timeRuns, withKernel } from './types.js';

interface LinearCase {
  name: string;
  M: number;
  K: number;
  N: number;
  act: Activation;
}

export async function benchMatmul(gpu: Gpu, opts: { warmup?: number; runs?: number } = {}): Promise<BenchRow[]> {
  const warmup = opts.warmup ?? 1;
  const runs = opts.runs ?? 3;
  const cpu = gpu.adapter.software;
  const rows: BenchRow[] = [];

  // Square f32 GEMM.
  {
    const S = 1024;
    const a = gpu.upload(randomF32(S * S, 1), [S, S], 'f32');
    const b = gpu.upload(randomF32(S * S, 2), [S, S], 'f32');
    const out = gpu.empty([S, S], 'f32');
    for (const kernel of ['auto', cpu ? 'big' : 'register'] as const) {
      const ms = await withKernel(matmulTesting, kernel, () => timeRuns(gpu, () => matmul(gpu, a, b, { out }), warmup, runs));
      rows.push(row(`matmul${label(kernel)}`, `${S}x${S}x${S}`, 'f32', ms, gemmFlops(S, S, S), 3 * S * S * 4));
    }
    for (const t of [a, b, out]) t.dispose();
  }

  // Infinity-2B linears: x [M, K] f32 · W[N, K]ᵀ + bias.
  const M = cpu ? 512 : 4096;
  const cases: LinearCase[] = [
    { name: 'qkv', M, K: 2048, N: 6144, act: 'none' },
    { name: 'proj', M, K: 2048, N: 2048, act: 'none' },
    { name: 'fc1+gelu', M, K: 2048, N: 8192, act: 'gelu_tanh' },
    { name: 'fc2', M, K: 8192, N: 2048, act: 'none' },
    { name: 'qkv', M: 32, K: 2048, N: 6144, act: 'none' },
    { name: 'qkv', M: 2, K: 2048, N: 6144, act: 'none' }, // the first scale with CFG: a matrix-vector product
  ];
  for (const dtype of ['f16', 'f32'] as const) {
    for (const c of cases) {
      if (c.M <= 32 && dtype === 'f32') continue;
      const x = gpu.upload(randomF32(c.M * c.K, 3), [c.M, c.K], 'f32');
      const wf = randomF32(c.N * c.K, 4);
      const w: Tensor = dtype === 'f32' ? gpu.upload(wf, [c.N, c.K], 'f32') : gpu.upload(f32ToF16Array(wf), [c.N, c.K], 'f16');
      const bias = gpu.upload(randomF32(c.N, 5), [c.N], 'f32');
      const out = gpu.empty([c.M, c.N], 'f32');
      const bytes = c.M * c.K * 4 + c.N * c.K * (dtype === 'f32' ? 4 : 2) + c.M * c.N * 4;
      for (const kernel of cpu ? (['auto'] as const) : (['auto', 'register'] as const)) {
        const ms = await withKernel(matmulTesting, kernel, () => timeRuns(gpu, () => linear(gpu, x, w, bias, { out, activation: c.act }), warmup, runs));
        rows.push(row(`linear ${c.name}${label(kernel)}`, `${c.M}x${c.K}x${c.N}`, dtype, ms, gemmFlops(c.M, c.N, c.K), bytes));
      }
      for (const t of [x, w, bias, out]) t.dispose();
    }
  }
  return rows;
}

type KernelChoice = typeof matmulTesting.kernel;

const label = (kernel: KernelChoice) => (kernel === 'auto' ? '' : ` [${kernel === 'register' ? 'register kernel' : 'tiled kernel'}]`);
