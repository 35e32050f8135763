// `npm run bench`: kernel benchmarks on the adapter in use (time, GFLOP/s, GB/s, peak buffer bytes).
// `npm run bench -- --json` prints one JSON array of rows; `--only matmul,attention,conv,load,e2e,policies` picks families;
// `--e2e [--size N] [--model M --vae V --text-encoder T | --synthetic 2b|8b [--full]]` runs vanilla vs
// stagevar vs fastvar side by side (transformer and whole-generation times, both speed-ups, PSNR);
// `--profile` adds a per-kernel GPU time table from timestamp queries.
// `--only infinity [--family 2b|8b --width C --depth L --heads H --size 256|512|768|1024 …]`: the transformer
// per scale from random weights, then the VAE decoder (bench/infinity.ts); `--only load8b [--chunks N]`:
// loading a synthetic sharded Infinity-8B checkpoint (bench/load8b.ts). Their flags: bench/family_options.ts.
// Numbers are medians of several runs after warm-up, timed around gpu.sync(); on lavapipe they are CPU
// numbers — compare ratios measured side by side, and quote absolute times only from a real GPU.

import { Gpu } from '../engine/device.js';
import { Profiler } from '../engine/profiler.js';
import { arg } from './args.js';
import { benchAttention } from './attention.js';
import { benchConv } from './conv.js';
import { benchE2E } from './e2e.js';
import { benchLoad } from './load.js';
import { infinityOptions, load8bOptions, policiesOptions } from './family_options.js';
import { benchInfinity } from './infinity.js';
import { benchLoad8b } from './load8b.js';
import { benchPolicies } from './policies.js';
import { benchStar } from './star.js';
import { benchMatmul } from './matmul.js';
import type { BenchRow } from './types.js';

const FAMILIES: Record<string, (gpu: Gpu) => Promise<BenchRow[]>> = {
  matmul: (gpu) => benchMatmul(gpu),
  attention: (gpu) => benchAttention(gpu),
  conv: (gpu) => benchConv(gpu),
  load: (gpu) => benchLoad(gpu),
  e2e: (gpu) => benchE2E(gpu),
  // Transformer per scale + VAE decoder from random weights at any size; sharded 8B checkpoint loading.
  infinity: (gpu) => benchInfinity(gpu, infinityOptions()),
  load8b: (gpu) => benchLoad8b(gpu, load8bOptions()),
  // STAR vanilla vs StageVAR's STAR port, one random model, text and seed (--only star [--size --width --depth --heads --vae]).
  star: (gpu) => benchStar(gpu),
  // The paper's headline side by side: vanilla, stagevar, fastvar on one model, text and seed (--e2e):
  // the demo, files (--model --vae) or random weights at the released sizes (--synthetic 2b --full).
  policies: (gpu) => benchPolicies(gpu, policiesOptions()),
};

async function main(): Promise<void> {
  const json = process.argv.includes('--json');
  // --e2e: the policy comparison alone; otherwise every kernel family (policies and e2e run on request).
  const only = process.argv.includes('--e2e') ? ['policies'] : (arg('--only')?.split(',') ?? ['matmul', 'attention', 'conv', 'load']);
  for (const f of only) if (!FAMILIES[f]) throw new Error(`bench: unknown family "${f}" (allowed: ${Object.keys(FAMILIES).join(', ')})`);
  const profile = process.argv.includes('--profile');
  const gpu = await Gpu.create({ profile });
  try {
    const rows: BenchRow[] = [];
    if (!json) process.stderr.write(`adapter: ${gpu.adapter.description || gpu.adapter.device} (${gpu.adapter.backend})\n`);
    for (const f of only) {
      const got = await FAMILIES[f](gpu);
      rows.push(...got);
      if (!json) for (const r of got) process.stdout.write(formatRow(r) + '\n');
    }
    const peak = gpu.stats().peakBytes;
    if (profile) {
      if (!gpu.profiling) process.stderr.write('bench: --profile needs an adapter with timestamp-query\n');
      else process.stderr.write(`\nGPU time per kernel (timestamp queries; one pass per dispatch):\n${Profiler.table(await gpu.timings())}\n`);
    }
    if (json) process.stdout.write(JSON.stringify(rows) + '\n');
    else process.stdout.write(`peak GPU buffer bytes: ${peak} (${(peak / 2 ** 20).toFixed(1)} MiB)\n`);
  } finally {
    gpu.destroy();
  }
}

function formatRow(r: BenchRow): string {
  const extra = r as BenchRow & { speedup?: number; totalSpeedup?: number; transformerMs?: number; psnr?: number; policy?: string; note?: string };
  if (extra.note !== undefined) return `${r.kernel.padEnd(12)} ${r.shape.padEnd(28)} ${extra.note}`;
  if (extra.totalSpeedup !== undefined && extra.transformerMs !== undefined) {
    // Policy rows: the whole generation (ms) and the transformer alone, each with its speed-up over vanilla.
    return `${r.kernel.padEnd(12)} ${r.shape.padEnd(28)} total ${r.ms.toFixed(1).padStart(9)} ms ×${extra.totalSpeedup.toFixed(2)}  transformer ${extra.transformerMs.toFixed(1).padStart(9)} ms ×${extra.speedup?.toFixed(2)}  PSNR vs vanilla ${extra.psnr?.toFixed(1)} dB`;
  }
  const tail = extra.speedup !== undefined ? `  speedup ${extra.speedup.toFixed(2)}×  PSNR vs vanilla ${extra.psnr?.toFixed(1)} dB` : '';
  return `${r.kernel.padEnd(12)} ${r.shape.padEnd(28)} ${r.dtype.padEnd(10)} ${r.ms.toFixed(2).padStart(10)} ms ${r.gflops.toFixed(2).padStart(9)} GFLOP/s ${r.gbps.toFixed(2).padStart(8)} GB/s${tail}`;
}

main().catch((err) => {
  const message = err instanceof Error ? err.message : String(err);
  process.stderr.write(`${message.startsWith('bench:') ? '' : 'bench: '}${message}\n`);
  process.exit(1);
});
