// Attention benchmark, Infinity-shaped: head dim 128, cosine self-attention (softmax scale 1) of one
// scale's queries against the KV cache of all scales so far (f32 and f16 caches), an early scale with few
// queries, and cross-attention to two prompts of different lengths (varlen, scale 1/√128). Sizes are scaled
// to the adapter: 2 heads, Lq 256–1024, Lk ≤ 4096, batch 1 on a CPU adapter (lavapipe); 16 heads, CFG
// batch 2 and the 1024² last scale (4096 queries against 10521 keys) on a GPU.
// ms = median wall time of `runs` launches after warm-up, each followed by gpu.sync().
// gflops counts 4·B·H·Lq·Lk·D (q·kᵀ and p·v, multiply-adds as 2); gbps counts one read of q and of the
// valid k/v rows and one write of the output, the least traffic the operation needs.
//
// The f32 self-attention rows run with the device's choice (GPU: the tiled kernel; lavapipe: the two-GEMM path
// from 64 queries and keys, attention_gemm.ts) and again with the portable flash kernel ('[portable kernel]'),
// so one run compares them; on a CPU adapter the largest case also runs the GPU's tiled kernel.
//
// Measured on lavapipe (2 cores, one run, side by side): Lq 1024 × Lk 4096 f32 — two-GEMM path 12.8 GFLOP/s
// (335 ms), portable flash kernel 2.9 (1502 ms), GPU tiled kernel 2.8; Lq 256 × Lk 1024: 6.6 vs 2.9 GFLOP/s.

import type { Gpu } from '../engine/device.js';
import { f32ToF16Array } from '../engine/dtype.js';
import type { Tensor } from '../engine/tensor.js';
import { attention, attentionTesting, attentionVarlen } from '../kernels/attention.js';
import { type BenchRow, randomF32, row, timeRuns, withKernel } from './types.js';

/** Unit vectors per head, times `mul`: cosine-attention inputs (logits bounded by mul). */
function unitHeads(x: Float32Array, d: number, mul: number): Float32Array {
  for (let o = 0; o < x.length; o += d) {
    let ss = 0;
    for (let i = 0; i < d; i++) ss += x[o + i] ** 2;
    const f = mul / Math.sqrt(ss);
    for (let i = 0; i < d; i++) x[o + i] *= f;
  }
  return x;
}

export async function benchAttention(gpu: Gpu, opts: { warmup?: number; runs?: number } = {}): Promise<BenchRow[]> {
  const warmup = opts.warmup ?? 1;
  const runs = opts.runs ?? 3;
  const cpu = gpu.adapter.software;
  const d = 128;
  const h = cpu ? 2 : 16;
  const b = cpu ? 1 : 2;
  const c = h * d;
  const rows: BenchRow[] = [];
  const owned: Tensor[] = [];
  const keep = (t: Tensor) => (owned.push(t), t);

  // Self-attention against the cache: [Lq, kvLen] per case; the cache is allocated at the largest length.
  const selfCases: [number, number][] = cpu
    ? [
        [256, 1024],
        [1024, 4096],
        [16, 4096],
      ]
    : [
        [1024, 4096],
        [4096, 10521],
        [144, 10521],
      ];
  const lmax = Math.max(...selfCases.map(([, lk]) => lk));
  const kf = unitHeads(randomF32(b * lmax * c, 1), d, 1);
  const vf = randomF32(b * lmax * c, 2);
  const caches = {
    f32: [keep(gpu.upload(kf, [b, lmax, c], 'f32')), keep(gpu.upload(vf, [b, lmax, c], 'f32'))],
    f16: [keep(gpu.upload(f32ToF16Array(kf), [b, lmax, c], 'f16')), keep(gpu.upload(f32ToF16Array(vf), [b, lmax, c], 'f16'))],
  };
  for (const dtype of ['f32', 'f16'] as const) {
    for (const [lq, kvLen] of selfCases) {
      if (dtype === 'f16' && lq !== selfCases[1][0]) continue; // one f16 row: the largest case
      const q = gpu.upload(unitHeads(randomF32(b * lq * c, 3), d, 20), [b, lq, c], 'f32');
      const out = gpu.empty([b, lq, c], 'f32');
      const [k, v] = caches[dtype];
      const flops = 4 * b * h * lq * kvLen * d;
      const bytes = 2 * b * lq * c * 4 + 2 * b * kvLen * c * (dtype === 'f32' ? 4 : 2);
      // Side by side: the portable kernel always (on lavapipe the device's choice for long runs is the two-GEMM
      // path), and on a CPU adapter the GPU's tiled kernel for the largest f32 case.
      const largest = lq === selfCases[1][0] && dtype === 'f32';
      const kernels = ['auto', ...(dtype === 'f32' || !cpu ? ['portable'] : []), ...(cpu && largest ? ['tiled'] : [])] as const;
      for (const kernel of kernels as readonly (typeof attentionTesting.kernel)[]) {
        const ms = await withKernel(attentionTesting, kernel, () => timeRuns(gpu, () => attention(gpu, q, k, v, { heads: h, scale: 1, kvLen, out }), warmup, runs));
        const name = kernel === 'auto' ? 'attention' : `attention [${kernel} kernel]`;
        rows.push(row(name, `B${b} H${h} D${d} Lq${lq} Lk${kvLen}`, `f32 q, ${dtype} kv`, ms, flops, bytes));
      }
      q.dispose();
      out.dispose();
    }
  }
  for (const t of owned) t.dispose();

  // Cross-attention: every image row attends its own prompt (varlen keys).
  {
    const lq = selfCases[1][0];
    const texts = [77, 33];
    const nq = texts.length * lq;
    const nk = texts.reduce((a, x) => a + x, 0);
    const q = gpu.upload(randomF32(nq * c, 4), [nq, c], 'f32');
    const k = gpu.upload(randomF32(nk * c, 5), [nk, c], 'f32');
    const v = gpu.upload(randomF32(nk * c, 6), [nk, c], 'f32');
    const out = gpu.empty([nq, c], 'f32');
    const qStarts = [0, lq, 2 * lq];
    const kStarts = [0, texts[0], nk];
    const launch = () => attentionVarlen(gpu, q, k, v, { heads: h, scale: 1 / Math.sqrt(d), qStarts, kStarts, out });
    const ms = await timeRuns(gpu, launch, warmup, runs);
    const flops = 4 * h * lq * nk * d;
    const bytes = 2 * nq * c * 4 + 2 * nk * c * 4;
    rows.push(row('attentionVarlen', `2 seqs H${h} D${d} Lq${lq} Lk${texts.join('/')}`, 'f32', ms, flops, bytes));
    for (const t of [q, k, v, out]) t.dispose();
  }
  return rows;
}
