// Side-by-side end-to-end benchmark of the acceleration policies: vanilla, stagevar and fastvar (or any
// policy files) on the same model, text and seed, through the Engine's generate() and its plan hook. Per
// policy: median time of the transformer (the next-scale loop) and of the whole generation (text, loop,
// decode), both speed-ups over vanilla (the paper's 2.2 s → 0.64 s is the whole generation), and the
// same-seed similarity to the vanilla image (PSNR over 8-bit RGB; spec stagevar.md §5's cheap proxy).
// Per-scale times of every policy go to stderr, as does each policy's line as soon as it is measured (a
// run cut short by a time limit still leaves what it measured).
//
// The model: the built-in demo (default), real files (--model/--vae/--text-encoder), or random weights at
// the released sizes (--synthetic 2b|8b [--full | --width --depth --heads]) with random text features of a
// realistic length. The default size is 1024 (13 scales: the refinement stage the policies act on exists
// only there). On lavapipe the times are CPU times — compare the ratios, not the absolute numbers.

import type { Gpu } from '../engine/device.js';
import { Engine, type GenerateOptions, type GenerateResult, type ModelInfo } from '../sampler/engine.js';
import type { ScalePlan } from '../sampler/plan.js';
import { loadPolicy } from '../sampler/policy.js';
import { policyPlanHook } from '../sampler/policy_plan.js';
import type { RgbImage } from '../sampler/png.js';
import { loadSyntheticPipeline, type SyntheticPipelineOptions } from './synthetic_pipeline.js';
import { median, type BenchRow } from './types.js';

export interface PolicyBenchOptions {
  model?: string;
  vae?: string;
  textEncoder?: string;
  /** Random weights at this shape instead of the demo or files (bench/synthetic_pipeline.ts). */
  synthetic?: SyntheticPipelineOptions;
  prompt?: string;
  size?: number;
  ratio?: string;
  seed?: number;
  /** Guidance and temperature; default: the Engine's (cfg 3; τ 0.5 for 2B, 1 for 8B). */
  cfg?: number;
  tau?: number;
  /** Preset names or policy files; default vanilla, stagevar, fastvar (vanilla is always measured first). */
  policies?: string[];
  alpha?: string;
  warmup?: number;
  runs?: number;
  /** Time budget of all the generations (ms): fewer timed runs (at least 1) when vanilla's first generation
   *  says that warmup + runs per policy would not fit. For device runs with a hard time limit. */
  budgetMs?: number;
  /** Where per-scale tables and progress lines go (default stderr). */
  log?: (line: string) => void;
}

export interface PolicyRow extends BenchRow {
  policy: string;
  /** Medians: the next-scale loop (conditioning + scales), the decode, and (in `ms`) the whole generation. */
  transformerMs: number;
  decodeMs: number;
  /** Vanilla's transformer time over this policy's. */
  speedup: number;
  /** Vanilla's whole-generation time over this policy's. */
  totalSpeedup: number;
  /** Median wall time of every scale (0 for a skipped one). */
  scaleMs: number[];
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

/** Loads what the options name; returns the model's info and how each generation gets its text. */
async function loadModel(gpu: Gpu, engine: Engine, o: PolicyBenchOptions, log: (line: string) => void): Promise<{ info: ModelInfo; text: Pick<GenerateOptions, 'prompt' | 'textFeatures'> }> {
  const prompt = { prompt: o.prompt ?? 'a lighthouse on a cliff at dawn, oil painting' };
  if (o.synthetic) {
    const s = await loadSyntheticPipeline(gpu, o.synthetic);
    let info: ModelInfo;
    try {
      info = engine.loadParts(s.parts);
    } catch (err) {
      s.parts.model.dispose();
      s.parts.decoder.dispose();
      throw err;
    }
    log(`policies: ${s.label}: ${(s.parameters / 1e9).toFixed(3)} G params, loaded in ${(s.loadMs / 1000).toFixed(1)} s; text ${s.text.lens[0]}×${s.text.width} random features`);
    return { info, text: { textFeatures: s.text } };
  }
  if (o.model) {
    if (!o.vae) throw new Error('bench policies: --model needs --vae');
    const info = await engine.loadInfinity({ model: o.model, vae: o.vae, ...(o.textEncoder ? { textEncoder: o.textEncoder } : {}) });
    return { info, text: prompt };
  }
  return { info: await engine.loadDemo(), text: prompt };
}

export async function benchPolicies(gpu: Gpu, o: PolicyBenchOptions = {}): Promise<PolicyRow[]> {
  const log = o.log ?? ((line: string) => void process.stderr.write(line + '\n'));
  const engine = await Engine.create({ gpu });
  try {
    const { info, text } = await loadModel(gpu, engine, o, log);
    const names = ['vanilla', ...(o.policies ?? ['stagevar', 'fastvar']).filter((p) => p !== 'vanilla')];
    const size = o.size ?? 1024;
    const warmup = o.warmup ?? 1;
    let runs = o.runs ?? 3;
    const rows: PolicyRow[] = [];
    const measured: Array<{ name: string; results: GenerateResult[] }> = [];
    let reference: { image: RgbImage; transformerMs: number; ms: number } | null = null;
    for (const name of names) {
      const policy = await loadPolicy(name);
      // policyPlanHook returns the policy's plans (FastVAR tokens included once plan.ts lists them).
      const plan = policyPlanHook(policy, { chunks: info.chunks, depth: info.depth, ...(o.alpha ? { alpha: o.alpha } : {}) }) as (plans: ScalePlan[]) => ScalePlan[];
      const request: GenerateOptions = {
        ...text,
        seed: o.seed ?? 1,
        size,
        ratio: o.ratio ?? '1:1',
        plan,
        ...(o.cfg !== undefined ? { cfg: o.cfg } : {}),
        ...(o.tau !== undefined ? { tau: o.tau } : {}),
      };
      const results: GenerateResult[] = [];
      for (let i = 0; i < warmup + runs; i++) {
        const t0 = performance.now();
        const r = await engine.generate(request);
        if (i >= warmup) results.push(r);
        if (o.budgetMs !== undefined && measured.length === 0 && i === 0) runs = fitRuns(o.budgetMs, performance.now() - t0, names.length, warmup, runs, log);
      }
      const ms = median(results.map((r) => r.stats.totalMs));
      const transformerMs = median(results.map((r) => r.stats.transformerMs));
      const decodeMs = median(results.map((r) => r.stats.decodeMs));
      reference ??= { image: results[0].images[0], transformerMs, ms };
      const row: PolicyRow = {
        kernel: 'policies',
        shape: `${info.name} ${size} ${name}`,
        dtype: 'f32',
        ms,
        gflops: 0,
        gbps: 0,
        policy: name,
        transformerMs,
        decodeMs,
        speedup: reference.transformerMs / transformerMs,
        totalSpeedup: reference.ms / ms,
        scaleMs: results[0].stats.scales.map((_, si) => median(results.map((r) => r.stats.scales[si].ms))),
        psnr: psnr(results[0].images[0], reference.image),
      };
      rows.push(row);
      measured.push({ name, results });
      log(
        `policies: ${name.padEnd(9)} total ${row.ms.toFixed(1)} ms (×${row.totalSpeedup.toFixed(2)}), transformer ${row.transformerMs.toFixed(1)} ms (×${row.speedup.toFixed(2)}), ` +
          `decode ${row.decodeMs.toFixed(1)} ms, PSNR vs vanilla ${row.psnr.toFixed(1)} dB; peak GPU ${(results[0].stats.peakBytes / 1e9).toFixed(2)} GB`,
      );
    }
    log(scaleTable(measured, rows));
    return rows;
  } finally {
    engine.dispose();
  }
}

/** Timed runs per policy that fit `budgetMs`, from one generation's time (the first: compiles too, so an over-estimate). */
function fitRuns(budgetMs: number, generationMs: number, policies: number, warmup: number, runs: number, log: (line: string) => void): number {
  const fit = Math.max(1, Math.min(runs, Math.floor(budgetMs / (policies * generationMs)) - warmup));
  if (fit < runs) log(`policies: a generation takes up to ${(generationMs / 1000).toFixed(1)} s; ${runs} timed runs per policy would not fit ${(budgetMs / 1000).toFixed(0)} s, running ${fit}`);
  return fit;
}

/** Per-scale medians side by side: scale, grid, then ms (and sequence rows) per policy. */
function scaleTable(measured: ReadonlyArray<{ name: string; results: GenerateResult[] }>, rows: readonly PolicyRow[]): string {
  const first = measured[0].results[0];
  const head = `scale  grid     ` + measured.map((m) => m.name.padStart(16)).join('');
  const lines = first.schedule.map(([h, w], si) => {
    const cells = measured.map((m, k) => {
      const s = m.results[0].stats.scales[si];
      return (s.run ? `${rows[k].scaleMs[si].toFixed(1)} ms ×${s.rows}` : 'skipped').padStart(16);
    });
    return `${String(si).padStart(5)}  ${`${h}×${w}`.padEnd(7)}  ${cells.join('')}`;
  });
  const sum = (label: string, pick: (r: PolicyRow) => number) => `${label.padEnd(15)}${rows.map((r) => `${pick(r).toFixed(1)} ms`.padStart(16)).join('')}`;
  return [`per-scale wall time (median; ×rows = sequence rows that ran):`, head, ...lines, sum('transformer', (r) => r.transformerMs), sum('decode', (r) => r.decodeMs), sum('total', (r) => r.ms)].join('\n');
}
