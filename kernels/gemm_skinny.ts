// The skinny GEMM of the matmul family: y = x·wᵀ for few rows of x (the first scales of next-scale
// prediction: 1, 4, 16 tokens per image, times 2 with CFG), on devices tuned for GPUs. There a linear is a
// matrix-vector product bound by reading the weight once, and the tiled kernel (gemm_tiled.ts) would run
// N/64 workgroups that each walk all of K step by step with barriers: a few dozen workgroups on a GPU with
// a hundred-plus SMs, each waiting on memory latency. Here the work is split along K instead:
// - a workgroup of 256 threads owns 8 output columns × 8 rows; each column's weight row is read by 32
//   threads in interleaved vec4s (coalesced), each thread keeping 8 row accumulators in registers;
// - the 32 partial sums of each (row, column) are added in workgroup memory by a tree of 5 steps;
// - grid: N/8 column groups × ceil(M/8) row groups, so a 2048-wide layer gets 256 workgroups even for one row.
// Rows past M are clamped on load and never stored. A [M, K] and B [N, K] only (the `linear` layout, which is
// every model GEMM); other layouts take the tiled kernel. Used for M ≤ SKINNY_MAX_ROWS; each extra group of 8
// rows re-reads the weight, which stays cheaper than the tiled kernel's latency-bound loop up to there (and
// the re-reads of a layer's weight mostly hit a GPU's L2). Not yet measured on a GPU.

import type { KernelSpec } from '../engine/pipelines.js';
import { type GemmOperands, gemmKernelName, gemmPrelude, operandFlags } from './gemm_wgsl.js';

const THREADS = 256;
/** Threads splitting one column's K. */
const LANES = 32;
/** Output columns per workgroup (THREADS / LANES) and rows per workgroup. */
export const SKINNY_COLS = THREADS / LANES;
export const SKINNY_ROWS = 8;
/** The launcher picks this kernel for at most this many rows (8 row groups). */
export const SKINNY_MAX_ROWS = 64;

const specs = new Map<string, KernelSpec>();

export function skinnyGemmSpec(v: GemmOperands): KernelSpec {
  if (v.aTrans || v.bKN) throw new Error('gemm_skinny: only A [M, K] · B [N, K]ᵀ');
  const key = operandFlags(v);
  const hit = specs.get(key);
  if (hit) return hit;
  const R = SKINNY_ROWS;
  const rows = Array.from({ length: R }, (_, m) => m);
  const width = v.vec ? 4 : 1;
  const body = v.vec
    ? `for (var q = lane; q < p.K / 4u; q += ${LANES}u) {
    let w = ldb4(wb + 4u * q);
    ${rows.map((m) => `acc${m} += dot(lda4(xr${m} + 4u * q), w);`).join('\n    ')}
  }`
    : `for (var k = lane; k < p.K; k += ${LANES}u) {
    let w = ldb1(wb + k);
    ${rows.map((m) => `acc${m} = fma(lda1(xr${m} + k), w, acc${m});`).join('\n    ')}
  }`;
  const code = /* wgsl */ `${gemmPrelude(v, width, width)}
// skinny GEMM: ${SKINNY_COLS} columns × ${R} rows per workgroup, K split over ${LANES} threads per column
var<workgroup> red: array<f32, ${THREADS * R}>;
@compute @workgroup_size(${THREADS})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let lane = li % ${LANES}u;
  let col = wid.x * ${SKINNY_COLS}u + li / ${LANES}u;
  let row0 = wid.y * ${R}u;
  let aOff = p.aOff + wid.z * p.aBatch;
  let cb = p.cOff + wid.z * p.cBatch;
  let wb = p.bOff + wid.z * p.bBatch + min(col, p.N - 1u) * p.K;
  ${rows.map((m) => `let xr${m} = aOff + min(row0 + ${m}u, p.M - 1u) * p.K;`).join('\n  ')}
  ${rows.map((m) => `var acc${m} = 0.0;`).join(' ')}
  ${body}
  ${rows.map((m) => `red[li * ${R}u + ${m}u] = acc${m};`).join('\n  ')}
  workgroupBarrier();
  // Sum the ${LANES} partials of each column: lane l adds lane l + s, s = ${LANES / 2}, …, 1.
  for (var s = ${LANES / 2}u; s > 0u; s >>= 1u) {
    if (lane < s) {
      for (var m = 0u; m < ${R}u; m++) { red[li * ${R}u + m] += red[(li + s) * ${R}u + m]; }
    }
    workgroupBarrier();
  }
  // Lane m of each column stores row m.
  if (lane < ${R}u && row0 + lane < p.M) {
    emit(cb, row0 + lane, col, red[(li - lane) * ${R}u + lane]);
  }
}`;
  const spec: KernelSpec = { name: `${gemmKernelName(v)}_skinny`, bindings: ['read', 'read', 'read', 'write'], code };
  specs.set(key, spec);
  return spec;
}
