// Rank calibration (`stagevar calibrate`): the offline statistic behind the official rank table (spec
// stagevar.md §2.4). For a block chunk's input X [M, C] at a refinement scale, the commented-out official
// path runs pca_lowrank(X, q = min(M, C), center = True) and keeps the smallest k whose σ² hold ≥ α of the
// energy; the table stores k / min(M, C). Here σ² are the eigenvalues of the centered Gram matrix, exactly
// (no randomized PCA): the M×M token Gram when M ≤ C, else the C×C channel Gram, formed on the GPU in f32
// and solved in float64 (eigen.ts). Ratios are averaged over the images (and prompts) of the run, like the
// official table's prompt average; `calibratedPolicy` turns them into a policy file with per-chunk ratios.

import type { Gpu } from '../engine/device.js';
import type { Tensor } from '../engine/tensor.js';
import { copyRows } from '../kernels/layout.js';
import { matmul } from '../kernels/matmul.js';
import type { InfinityModel } from '../model/infinity/model.js';
import { energyRank, symmetricEigenvalues } from './eigen.js';
import type { Branches, ScalePlan } from './plan.js';
import type { Policy, ScaleRule } from './policy.js';
import { runPolicyForced } from './policy_forced.js';
import type { Grid } from './schedule.js';
import type { ChunkEvent } from './stagevar.js';

/** GPU parts of one centered Gram: G (XXᵀ or XᵀX), the mean token μ and, for the token Gram, v = Xμ. */
interface GramParts {
  side: 'tokens' | 'channels';
  M: number;
  C: number;
  gram: Tensor;
  mean: Tensor;
  xmu: Tensor | null;
}

/** Records the Gram parts of x [M, C] (recorded, not awaited; x may be freed afterwards). */
export function gramParts(gpu: Gpu, x: Tensor): GramParts {
  const [M, C] = x.shape;
  const avg = gpu.upload(new Float32Array(M).fill(1 / M), [1, M], 'f32', 'calib-avg');
  const mean = matmul(gpu, avg, x); // [1, C]
  avg.dispose();
  if (M <= C) {
    return { side: 'tokens', M, C, gram: matmul(gpu, x, x, { transB: true }), mean, xmu: matmul(gpu, x, mean, { transB: true }) };
  }
  return { side: 'channels', M, C, gram: matmul(gpu, x, x, { transA: true }), mean, xmu: null };
}

/** σ² of the centered X, descending (min(M, C) of them). Frees the parts. */
export async function centeredSpectrum(p: GramParts): Promise<Float64Array> {
  const g = Float64Array.from(await p.gram.readF32());
  const mu = await p.mean.readF32();
  if (p.side === 'tokens') {
    // (X − 1μᵀ)(X − 1μᵀ)ᵀ = XXᵀ − v1ᵀ − 1vᵀ + (μᵀμ)11ᵀ with v = Xμ.
    const v = await p.xmu!.readF32();
    let mm = 0;
    for (const m of mu) mm += m * m;
    for (let i = 0; i < p.M; i++) for (let j = 0; j < p.M; j++) g[i * p.M + j] += mm - v[i] - v[j];
  } else {
    // (X − 1μᵀ)ᵀ(X − 1μᵀ) = XᵀX − M μμᵀ.
    for (let i = 0; i < p.C; i++) for (let j = 0; j < p.C; j++) g[i * p.C + j] -= p.M * mu[i] * mu[j];
  }
  for (const t of [p.gram, p.mean, p.xmu]) t?.dispose();
  const n = p.side === 'tokens' ? p.M : p.C;
  // Symmetrise what f32 rounding left asymmetric.
  for (let i = 0; i < n; i++) for (let j = 0; j < i; j++) g[i * n + j] = g[j * n + i] = 0.5 * (g[i * n + j] + g[j * n + i]);
  return symmetricEigenvalues(g, n);
}

/** The table's statistic: k(α) / min(M, C). */
export function energyRatio(spectrum: ArrayLike<number>, alpha: number): number {
  return energyRank(spectrum, alpha) / spectrum.length;
}

export interface CalibrateOptions {
  model: InfinityModel;
  text: { features: Float32Array; lens: readonly number[] };
  schedule: readonly Grid[];
  template: number;
  /** The vanilla plans the bits were drawn with (every scale runs every token). */
  plans: readonly ScalePlan[];
  /** Bits per scale [B, h·w, bits] (e.g. from a sampled vanilla run with keepBits). */
  bits: ReadonlyArray<Int32Array>;
  /** Scale indices to calibrate (e.g. 10, 11, 12). */
  scales: readonly number[];
  alphas: readonly number[];
  /** Rows whose chunk inputs are measured: the branch the accelerated scale will run (StageVAR: 'uncond'). */
  branch: Exclude<Branches, 'both'>;
}

export interface Calibration {
  /** ratio[α][scale][chunk], averaged over the images. */
  ratios: Record<string, Record<number, number[]>>;
  /** Images measured per (scale, chunk). */
  images: number;
}

/** Replays the bits through the model, measures every chunk input of `scales`, returns the energy ratios. */
export async function calibrate(gpu: Gpu, o: CalibrateOptions): Promise<Calibration> {
  const { model } = o;
  const C = model.config.width;
  const pending: Array<{ scale: number; chunk: number; parts: GramParts }> = [];
  const B = o.text.lens.length;
  for (const s of o.scales) if (!o.plans[s]?.run) throw new Error(`calibrate: scale ${s} is not a scale of this schedule that runs`);
  await runPolicyForced(gpu, {
    model,
    text: o.text,
    schedule: o.schedule,
    template: o.template,
    plans: o.plans,
    bits: o.bits,
    seeds: Array.from({ length: B }, (_, i) => i),
    observe: (e: ChunkEvent) => {
      if (e.what !== 'chunk_in' || !o.scales.includes(e.scale)) return;
      const [h, w] = o.schedule[e.scale];
      const M = h * w;
      // Sequence rows of the measured branch within this step's rows (B..2B−1 unconditional, 0..B−1 conditional).
      const first = o.branch === 'uncond' ? B : 0;
      for (let r = 0; r < e.rows.count; r++) {
        const row = e.rows.start + r;
        if (row < first || row >= first + B) continue;
        const x = gpu.empty([M, C], 'f32', 'calib-x');
        copyRows(gpu, e.x.reshape([-1, C]), x, { srcRow: r * M, rows: M });
        pending.push({ scale: e.scale, chunk: e.chunk, parts: gramParts(gpu, x) });
        x.dispose();
      }
    },
  });
  const sums: Record<string, Record<number, number[]>> = {};
  const counts: Record<number, number[]> = {};
  for (const { scale, chunk, parts } of pending) {
    const spectrum = await centeredSpectrum(parts);
    (counts[scale] ??= new Array<number>(model.config.chunks).fill(0))[chunk]++;
    for (const a of o.alphas) ((sums[String(a)] ??= {})[scale] ??= new Array<number>(model.config.chunks).fill(0))[chunk] += energyRatio(spectrum, a);
  }
  for (const a of Object.keys(sums)) for (const s of Object.keys(sums[a])) sums[a][Number(s)] = sums[a][Number(s)].map((v, c) => v / counts[Number(s)][c]);
  return { ratios: sums, images: B };
}

/**
 * A policy file from a calibration: the calibrated scales get `cfg` (StageVAR: 0) and RP with the ratios of
 * α; `skip` scales are skipped. Usable as `--policy FILE.json`.
 */
export function calibratedPolicy(c: Calibration, alpha: number, o: { name?: string; cfg?: number; skip?: readonly number[] } = {}): Policy {
  const table = c.ratios[String(alpha)];
  if (!table) throw new Error(`calibration has no α ${alpha} (has ${Object.keys(c.ratios).join(', ')})`);
  const scales: Record<number, ScaleRule> = {};
  for (const [s, ratios] of Object.entries(table)) {
    const rule: ScaleRule = { tokens: { kind: 'rp', ratios: ratios.map((r) => Math.min(r, 1 - 1e-9)) } };
    if (o.cfg !== undefined) rule.cfg = o.cfg;
    scales[Number(s)] = rule;
  }
  for (const s of o.skip ?? []) scales[s] = { run: false };
  return { name: o.name ?? `calibrated-${alpha}`, description: `ranks calibrated at energy α = ${alpha} over ${c.images} image(s)`, scales };
}
