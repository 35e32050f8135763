// `stagevar demo`: the whole pipeline on a built-in random-weight Infinity (tiny sizes, weights drawn from
// a seeded Philox stream in memory, a toy text encoder and a small BSQ-VAE decoder): no downloads, a PNG
// in seconds, to see that the GPU path works on this machine.
import { resolve } from 'node:path';
import type { Command } from 'commander';
import { Engine, WarningEvent, type GenerateResult } from '../../sampler/engine.js';
import { parseNumberList, resolveShape } from '../../sampler/options.js';
import { checkCfg, checkTopP } from '../../sampler/plan.js';
import { progressPrinter, writeOutputs } from './generate.js';

export interface DemoFlags {
  out: string;
  prompt: string;
  seed: string;
  size: string;
  ratio: string;
  cfg: string;
  topP: string;
  quiet?: boolean;
}

export function register(program: Command): void {
  program
    .command('demo')
    .description('generate an image with a built-in tiny random-weight Infinity (no downloads; checks the GPU path)')
    .option('--out <file.png>', 'output PNG', 'stagevar-demo.png')
    .option('--prompt <text>', 'prompt for the toy text encoder', 'a lighthouse at dawn')
    .option('--seed <n>', 'seed', '0')
    .option('--size <n>', 'image size class (256, 512, 768, 1024)', '256')
    .option('--ratio <H:W>', 'aspect ratio height:width', '1:1')
    .option('--cfg <x>', 'guidance', '3')
    .option('--top-p <x>', 'per-bit nucleus mass', '0.97')
    .option('--quiet', 'no progress output')
    .action(async (flags: DemoFlags) => {
      await demoCommand(flags);
    });
}

export async function demoCommand(flags: DemoFlags): Promise<GenerateResult> {
  const seed = Number(flags.seed);
  if (!/^\d+$/.test(flags.seed) || !Number.isSafeInteger(seed)) throw new Error(`--seed "${flags.seed}" must be a non-negative integer`);
  const size = Number(flags.size);
  resolveShape(size, flags.ratio);
  const cfg = parseNumberList('--cfg', flags.cfg);
  for (const c of [cfg].flat()) checkCfg(c, '--cfg');
  const topP = Number(flags.topP);
  checkTopP(topP);
  const out = resolve(flags.out);
  const log = (line: string) => {
    if (!flags.quiet) process.stderr.write(`${line}\n`);
  };
  const t0 = performance.now();
  const engine = await Engine.create();
  engine.addEventListener('warning', (e) => process.stderr.write(`warning: ${(e as WarningEvent).message}\n`));
  try {
    const info = await engine.loadDemo();
    log(`demo: random-weight Infinity (${info.depth} layers, width ${info.width}, ${info.bitsPerToken} bits/token) on ${engine.gpu.adapter.description || engine.gpu.adapter.device}`);
    const result = await engine.generate({
      prompt: flags.prompt,
      seed,
      size,
      ratio: flags.ratio,
      cfg,
      topP,
      ...(flags.quiet ? {} : { onProgress: progressPrinter() }),
    });
    await writeOutputs(result, [out], null);
    const img = result.images[0];
    log(`wrote ${flags.out} (${img.width}×${img.height}, seed ${seed}) in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    return result;
  } finally {
    engine.dispose();
  }
}
