// Shared test utilities: one validated GPU per test file, seeded-per-run random data, NaN poisoning,
// float64 comparisons with stated tolerances, and fixture paths that fail loudly when missing.

import { existsSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect } from 'vitest';
import { Gpu, type GpuOptions } from '../engine/device.js';
import type { DType } from '../engine/dtype.js';
import type { Tensor } from '../engine/tensor.js';

export const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..');

/** A folder of ../shared/fixtures; throws (never skips) when it is missing. */
export function fixture(...parts: string[]): string {
  const p = resolve(repoRoot, '..', 'shared', 'fixtures', ...parts);
  if (!existsSync(p)) throw new Error(`fixture missing: ${p} (tests read ../shared/fixtures beside the repository)`);
  return p;
}

let shared: Promise<Gpu> | null = null;
/** The test GPU (validating every dispatch so that errors name their kernel). */
export function testGpu(options: GpuOptions = {}): Promise<Gpu> {
  shared ??= Gpu.create({ validate: true, ...options });
  return shared;
}

export async function releaseTestGpu(): Promise<void> {
  if (shared) (await shared).destroy();
  shared = null;
}

/** Runs `fn` on a validating GPU tuned for GPUs (`tuning: 'gpu'`: the kernels a real GPU picks), destroyed after. */
export async function withGpuTuning<T>(fn: (gpu: Gpu) => Promise<T>): Promise<T> {
  const gpu = await Gpu.create({ validate: true, tuning: 'gpu' });
  try {
    return await fn(gpu);
  } finally {
    gpu.destroy();
  }
}

/** A random seed per run (printed on failure through the test name), overridable with STAGEVAR_TEST_SEED. */
export const runSeed = Number(process.env.STAGEVAR_TEST_SEED ?? Math.floor(Math.random() * 2 ** 31));

/** Small, fast, seedable PRNG (mulberry32) for test data. */
export function rng(seed = runSeed): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Uniform values in [lo, hi), never all zero. */
export function randomArray(n: number, rand: () => number, lo = -1, hi = 1): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = lo + (hi - lo) * rand();
  return out;
}

/** Standard normal values (Box–Muller). */
export function randn(n: number, rand: () => number, std = 1): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i += 2) {
    const u = Math.max(rand(), 1e-12);
    const v = rand();
    const r = Math.sqrt(-2 * Math.log(u)) * std;
    out[i] = r * Math.cos(2 * Math.PI * v);
    if (i + 1 < n) out[i + 1] = r * Math.sin(2 * Math.PI * v);
  }
  return out;
}

/** Fills a tensor with NaN (or 0x7fc0 halves / -1 integers) so elements a kernel fails to write are caught. */
export function poison(t: Tensor): Tensor {
  const n = t.numel;
  const data =
    t.dtype === 'f32'
      ? new Float32Array(n).fill(NaN)
      : t.dtype === 'i32'
        ? new Int32Array(n).fill(-123456789)
        : t.dtype === 'u32'
          ? new Uint32Array(n).fill(0xdeadbeef)
          : new Uint16Array(n).fill(0x7fc1);
  t.write(data);
  return t;
}

/** A pooled output tensor, poisoned. */
export function poisoned(gpu: Gpu, shape: number[], dtype: DType = 'f32'): Tensor {
  return poison(gpu.empty(shape, dtype, 'poisoned-out'));
}

export interface CompareResult {
  maxAbs: number;
  maxRel: number;
  worst: number;
}

/**
 * Asserts |got − want| ≤ atol + rtol·|want| everywhere (NaN fails). Default rtol/atol fit f32 arithmetic;
 * callers pass wider ones for f16 and explain why.
 */
export function expectClose(
  got: ArrayLike<number>,
  want: ArrayLike<number>,
  { rtol = 1e-5, atol = 1e-6, what = 'values' }: { rtol?: number; atol?: number; what?: string } = {},
): CompareResult {
  expect(got.length, `${what}: length`).toBe(want.length);
  let maxAbs = 0;
  let maxRel = 0;
  let worst = -1;
  let worstExcess = -Infinity;
  for (let i = 0; i < want.length; i++) {
    const g = got[i];
    const w = want[i];
    const err = Math.abs(g - w);
    const excess = Number.isNaN(err) ? Infinity : err - (atol + rtol * Math.abs(w));
    if (excess > worstExcess) {
      worstExcess = excess;
      worst = i;
    }
    if (err > maxAbs || Number.isNaN(err)) maxAbs = Number.isNaN(err) ? NaN : err;
    const rel = err / Math.max(Math.abs(w), 1e-30);
    if (rel > maxRel) maxRel = rel;
  }
  if (worstExcess > 0) {
    expect.fail(
      `${what}: element ${worst} is ${got[worst]}, expected ${want[worst]} (|err| ${Math.abs(got[worst] - want[worst]).toExponential(3)} > ` +
        `atol ${atol} + rtol ${rtol}·|want|); max abs err ${maxAbs}, seed ${runSeed}`,
    );
  }
  return { maxAbs, maxRel, worst };
}

/** The fixtures' parity measure (max|a − b| / max|b|), shared with the parity runners. */
export { relMaxError } from '../model/parity/measure.js';
