// What every benchmark returns, and the small helpers they share (timing, data, rows).
import type { Gpu } from '../engine/device.js';

export interface BenchRow { kernel: string; shape: string; dtype: string; ms: number; gflops: number; gbps: number }

export const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

/** Median wall time of `runs` launches after `warmup`, each followed by gpu.sync(). */
export async function timeRuns(gpu: Gpu, launch: () => void, warmup: number, runs: number): Promise<number> {
  const times: number[] = [];
  for (let i = 0; i < warmup + runs; i++) {
    const t0 = performance.now();
    launch();
    await gpu.sync();
    if (i >= warmup) times.push(performance.now() - t0);
  }
  return median(times);
}

export function row(kernel: string, shape: string, dtype: string, ms: number, flops: number, bytes: number): BenchRow {
  return { kernel, shape, dtype, ms, gflops: flops / ms / 1e6, gbps: bytes / ms / 1e6 };
}

/** Deterministic values in [−0.5, 0.5) (an LCG: benchmarks need data, not statistics). */
export function randomF32(n: number, seed: number): Float32Array {
  const out = new Float32Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = s / 2 ** 32 - 0.5;
  }
  return out;
}

/** Runs `fn` with a kernel family's test hook (`matmulTesting`, `attentionTesting`) forcing `kernel`; restores it after. */
export async function withKernel<K extends string, T>(hook: { kernel: K }, kernel: K, fn: () => Promise<T>): Promise<T> {
  const before = hook.kernel;
  hook.kernel = kernel;
  try {
    return await fn();
  } finally {
    hook.kernel = before;
  }
}
