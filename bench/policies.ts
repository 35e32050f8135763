// Side-by-side end-to-end benchmark of the acceleration policies: vanilla, stagevar and fastvar (or any
// policy files) on the same prompt and seed, through the Engine's plan hook. Per policy: median time of the
// transformer and of the whole generation, the speed-up over vanilla, and the same-seed similarity to the
// vanilla image (PSNR over 8-bit RGB; spec stagevar.md §5's cheap proxy). With no model it runs the demo
// model at 1024 (13 scales, so the refinement stage exists); on lavapipe the times are CPU times — compare
// the ratios, not the absolute numbers.

import type { Gpu } from '../engine/device.js';
import { Engine, type GenerateResult } from '../sampler/engine.js';
import type { ScalePlan } from '../sampler/plan.js';
import { loadPolicy } from '../sampler/policy.js';
import { policyPlanHook } from '../sampler/policy_plan.js';
import type { RgbImage } from '../sampler/png.js';
import { median, type BenchRow } from './types.js';

export interface PolicyBenchOptions {
  model?: string;
  vae?: string;
  textEncoder?: string;
  prompt?: string;
  size?: number;
  ratio?: string;
  seed?: number;
  /** Preset names or policy files; default vanilla, stagevar, fastvar (vanilla is always measured first). */
  policies?: string[];
  alpha?: string;
  warmup?: number;
  runs?: number;
}

export interface PolicyRow extends BenchRow {
  policy: string;
  transformerMs: number;
  speedup: number;
  /** PSNR (dB) of the image against vanilla's, same seed; Infinity when identical. */
  psnr: number;
}


export function psnr(a: RgbImage, b: RgbImage): number {
  if (a.data.length !== b.data.length) throw new Error('psnr: images differ in size');
  let se = 0;
  for (let i = 0; i < a.data.length; i++) se += (a.data[i] - b.data[i]) ** 2;
  const mse = se / a.data.length;
  return mse === 0 ? Infinity : 10 * Math.log10((255 * 255) / mse);
}

export async function benchPolicies(gpu: Gpu, o: PolicyBenchOptions = {}): Promise<PolicyRow[]> {
  const engine = await Engine.create({ gpu });
  try {
    const info = o.model
      ? await engine.loadInfinity({ model: o.model, vae: o.vae!, ...(o.textEncoder ? { textEncoder: o.textEncoder } : {}) })
      : await engine.loadDemo();
    const names = ['vanilla', ...(o.policies ?? ['stagevar', 'fastvar']).filter((p) => p !== 'vanilla')];
    const size = o.size ?? 1024;
    const rows: PolicyRow[] = [];
    let reference: { image: RgbImage; ms: number } | null = null;
    for (const name of names) {
      const policy = await loadPolicy(name);
      // policyPlanHook returns the policy's plans (FastVAR tokens included once plan.ts lists them).
      const plan = policyPlanHook(policy, { chunks: info.chunks, depth: info.depth, ...(o.alpha ? { alpha: o.alpha } : {}) }) as (plans: ScalePlan[]) => ScalePlan[];
      const results: GenerateResult[] = [];
      for (let i = 0; i < (o.warmup ?? 1) + (o.runs ?? 3); i++) {
        const r = await engine.generate({ prompt: o.prompt ?? 'a lighthouse on a cliff at dawn, oil painting', seed: o.seed ?? 1, size, ratio: o.ratio ?? '1:1', plan });
        if (i >= (o.warmup ?? 1)) results.push(r);
      }
      const ms = median(results.map((r) => r.stats.totalMs));
      const transformerMs = median(results.map((r) => r.stats.transformerMs));
      reference ??= { image: results[0].images[0], ms: transformerMs };
      rows.push({
        kernel: 'policies',
        shape: `${info.name} ${size} ${name}`,
        dtype: 'f32',
        ms,
        gflops: 0,
        gbps: 0,
        policy: name,
        transformerMs,
        speedup: reference.ms / transformerMs,
        psnr: psnr(results[0].images[0], reference.image),
      });
    }
    return rows;
  } finally {
    engine.dispose();
  }
}
