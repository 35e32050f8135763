// Inputs, tolerances and checks shared by the GEMM kernel tests (matmul.test.ts, matmul_gpu.test.ts).

import type { Gpu } from '../../engine/device.js';
import { f32ToBf16Array, f32ToF16Array, roundThrough } from '../../engine/dtype.js';
import type { Tensor } from '../../engine/tensor.js';
import { linear, linearRef, matmul, matmulRef } from '../../kernels/matmul.js';
import { expectClose, poisoned, randomArray } from '../helpers.js';

export type WDtype = 'f32' | 'f16' | 'bf16';

// Tolerances. Inputs are rounded to their storage dtype on the host first, so the float64 reference sees
// exactly the values the GPU reads; the only error left is f32 accumulation (plus output rounding for f16 out).
// The kernel sums the K products one at a time into an f32 accumulator; each addition rounds by ≤ ε/2 of a
// partial sum that grows like √k, so the error is a random walk that grows faster than √K. Measured over many
// seeds the worst excess is ≈ 6 units of √K·X·W·ε at K = 1000 and ≈ 10 at K = 4096 (ε = 2⁻²³), so 32 units
// leaves ≥ 3× margin for every K used here (K ≤ 2048: ≥ 5×). The 1e-5 relative term covers the final
// roundings of large outputs and the activations' own ≤ 2e-7 approximation error.
const EPS32 = 2 ** -23;
export function dotTol(K: number, maxX: number, maxW: number) {
  return { rtol: 1e-5, atol: 32 * Math.sqrt(K) * maxX * maxW * EPS32 + 1e-7 };
}

export function uploadAs(gpu: Gpu, values: Float32Array, shape: number[], dtype: WDtype): Tensor {
  if (dtype === 'f32') return gpu.upload(values, shape, 'f32');
  return gpu.upload(dtype === 'f16' ? f32ToF16Array(values) : f32ToBf16Array(values), shape, dtype);
}

/**
 * linear(x, w, bias) on x ∈ [−1, 1) [M, K] f32, w ∈ [−wMax, wMax) [N, K] stored as `dtype`, bias ∈ [−biasMax,
 * biasMax) [N], into a poisoned output, against the float64 reference within dotTol(K, 1, wMax).
 */
export async function checkLinear(
  gpu: Gpu,
  s: { M: number; K: number; N: number; dtype: WDtype },
  rand: () => number,
  what: string,
  ranges: { wMax: number; biasMax: number } = { wMax: 1, biasMax: 1 },
): Promise<void> {
  const { M, K, N, dtype } = s;
  const x = randomArray(M * K, rand);
  const w = roundThrough(dtype, randomArray(N * K, rand, -ranges.wMax, ranges.wMax));
  const b = randomArray(N, rand, -ranges.biasMax, ranges.biasMax);
  const out = poisoned(gpu, [M, N]);
  linear(gpu, gpu.upload(x, [M, K], 'f32'), uploadAs(gpu, w, [N, K], dtype), gpu.upload(b, [N], 'f32'), { out });
  expectClose(await out.read(), linearRef(x, w, b, M, N, K), { what, ...dotTol(K, 1, ranges.wMax) });
}

/** matmul of batched a and b in [−1, 1) with the given transposes, into a poisoned output, against float64. */
export async function checkBatchedMatmul(
  gpu: Gpu,
  s: { batch: number; M: number; K: number; N: number; transA: boolean; transB: boolean },
  rand: () => number,
  what: string,
): Promise<void> {
  const { batch, M, K, N, transA, transB } = s;
  const a = randomArray(batch * M * K, rand);
  const b = randomArray(batch * K * N, rand);
  const out = poisoned(gpu, [batch, M, N]);
  const aShape = transA ? [batch, K, M] : [batch, M, K];
  const bShape = transB ? [batch, N, K] : [batch, K, N];
  matmul(gpu, gpu.upload(a, aShape, 'f32'), gpu.upload(b, bShape, 'f32'), { transA, transB, out });
  const want = matmulRef(a, b, { batch, M, N, K, transA, transB, aBatched: true, bBatched: true });
  expectClose(await out.read(), want, { what, ...dotTol(K, 1, 1) });
}
