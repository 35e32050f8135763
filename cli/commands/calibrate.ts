// `stagevar calibrate`: ranks per block chunk from singular-value energy (sampler/calibrate.ts). Samples
// vanilla images for the given text features, replays their bits, measures every chunk input of the
// refinement scales on the branch StageVAR will run there, and writes the averaged k/min(M, C) ratios as a
// table (--table) and as a policy file for `generate --policy` (--out). Every flag is checked before the GPU.

import { writeFile } from 'node:fs/promises';
import type { Command } from 'commander';
import { Gpu } from '../../engine/device.js';
import { InfinityModel } from '../../model/infinity/model.js';
import { calibrate, calibratedPolicy } from '../../sampler/calibrate.js';
import { Engine } from '../../sampler/engine.js';
import { runNextScaleLoop } from '../../sampler/loop.js';
import { checkFeatures, checkLevels, parseNumberList, resolveShape } from '../../sampler/options.js';
import { vanillaPlan } from '../../sampler/plan.js';
import { stageOf } from '../../sampler/policy_plan.js';
import { readFeaturesFile } from '../../sampler/text.js';

export interface CalibrateFlags {
  model: string;
  vae: string;
  textFeatures: string;
  size: string;
  ratio: string;
  cfg: string;
  tau: string;
  seed: string;
  scales?: string;
  alpha: string;
  branch: string;
  skip?: string;
  out?: string;
  table?: string;
}

export function register(program: Command): void {
  program
    .command('calibrate')
    .description('StageVAR ranks per block chunk from the singular-value energy of the chunk inputs (writes a rank table and a policy file)')
    .requiredOption('--model <path>', 'Infinity transformer weights')
    .requiredOption('--vae <path>', 'BSQ-VAE weights (for the latent width)')
    .requiredOption('--text-features <file>', 'safetensors with features (L, C) and lens (B,): the prompts to average over')
    .option('--size <n>', 'image size class (256, 512, 768, 1024)', '1024')
    .option('--ratio <H:W>', 'aspect ratio', '1:1')
    .option('--cfg <x>', 'guidance of the sampled runs', '3')
    .option('--tau <x>', 'temperature of the sampled runs', '0.5')
    .option('--seed <n>', 'seed of the first image', '0')
    .option('--scales <list>', 'scale indices to calibrate (default: the refinement stage, indices ≥ 10)')
    .option('--alpha <list>', 'energy fractions α, comma-separated, in (0, 1]', '0.96')
    .option('--branch <b>', 'rows measured: uncond (StageVAR runs CFG 0 there) or cond', 'uncond')
    .option('--skip <list>', 'scale indices the written policy skips')
    .option('--out <file.json>', 'policy file for the first α (calibrated scales: CFG 0 with uncond, + RP)')
    .option('--table <file.json>', 'all ratios: { α: { scale: [ratio per chunk] } }')
    .action(async (flags: CalibrateFlags) => {
      await calibrateCommand(flags);
    });
}

const list = (name: string, text: string) => [parseNumberList(name, text)].flat();

export async function calibrateCommand(f: CalibrateFlags): Promise<void> {
  // Checks, no GPU.
  const shape = resolveShape(Number(f.size), f.ratio);
  const alphas = list('--alpha', f.alpha);
  for (const a of alphas) if (!(a > 0 && a <= 1)) throw new Error(`--alpha ${a} must be in (0, 1]`);
  if (f.branch !== 'uncond' && f.branch !== 'cond') throw new Error(`--branch must be uncond or cond, got "${f.branch}"`);
  const scales = f.scales ? list('--scales', f.scales) : shape.schedule.map((_, s) => s).filter((s) => stageOf(s) === 'refinement');
  if (scales.length === 0) throw new Error(`size ${f.size} has no refinement-stage scale (indices ≥ 10); give --scales`);
  for (const s of scales) if (!Number.isInteger(s) || s < 1 || s >= shape.schedule.length) throw new Error(`--scales: ${s} is not a scale index 1…${shape.schedule.length - 1} of size ${f.size}`);
  const skip = f.skip ? list('--skip', f.skip) : [];
  const seed = Number(f.seed);
  if (!Number.isSafeInteger(seed) || seed < 0) throw new Error(`--seed "${f.seed}" must be a non-negative integer`);
  const { model: arch, vae } = await Engine.inspectFiles({ model: f.model, vae: f.vae });
  checkLevels(Number(f.size), shape.schedule.length, arch.levels);
  const features = await readFeaturesFile(f.textFeatures);
  checkFeatures('text features', features.prompts, arch.text_width, arch.text_max_len);
  const plans = vanillaPlan(shape.schedule, { cfg: parseNumberList('--cfg', f.cfg), tau: parseNumberList('--tau', f.tau) });
  if (f.branch === 'uncond' && plans.every((p) => p.branches === 'cond')) throw new Error('--branch uncond needs guidance (--cfg ≠ 1)');

  const gpu = await Gpu.create();
  try {
    const model = await InfinityModel.load(gpu, f.model, { vaeChannels: vae.codebook_dim });
    try {
      const text = { features: features.prompts.features, lens: features.prompts.lens };
      const seeds = text.lens.map((_, i) => seed + i);
      const sampled = await runNextScaleLoop(gpu, { model, text, schedule: shape.schedule, template: shape.template, plans, seeds, topP: 0.97, keepBits: true });
      sampled.latent.dispose();
      const c = await calibrate(gpu, {
        model, text, schedule: shape.schedule, template: shape.template, plans, bits: sampled.bits!, scales, alphas, branch: f.branch,
      });
      for (const [a, perScale] of Object.entries(c.ratios)) {
        for (const [s, ratios] of Object.entries(perScale)) {
          const [h, w] = shape.schedule[Number(s)];
          process.stdout.write(`α ${a} scale ${s} (${h}×${w}): ratios ${ratios.map((r) => r.toFixed(4)).join(' ')}  ranks ${ratios.map((r) => Math.min(Math.floor(r * h * w) + 1, h * w)).join(' ')}\n`);
        }
      }
      if (f.table) await writeFile(f.table, JSON.stringify({ source: 'stagevar calibrate', images: c.images, rule: 'rank = floor(ratio · tokens) + 1', rank_ratio: c.ratios }, null, 1) + '\n');
      if (f.out) await writeFile(f.out, JSON.stringify(calibratedPolicy(c, alphas[0], { ...(f.branch === 'uncond' ? { cfg: 0 } : {}), skip }), null, 1) + '\n');
    } finally {
      model.dispose();
    }
  } finally {
    gpu.destroy();
  }
}
