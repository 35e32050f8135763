// `stagevar generate`: text → image with Infinity. Every argument is checked before the GPU starts, the
// files are recognised by their tensors (a VAE given as --model is named as such), progress goes to
// stderr one line per scale, and PNGs are written only after everything succeeded, atomically
// (temporary file + rename): an error leaves no output file.
import { mkdir, stat } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import type { Command } from 'commander';
import { Engine, WarningEvent, type GenerateOptions, type GenerateResult, type ProgressInfo } from '../../sampler/engine.js';
import { SIZE_HELP, checkFeatures, checkLevels, parseNumberList, resolveBatch, resolveShape } from '../../sampler/options.js';
import { checkCfg, checkTau, checkTopK, checkTopP } from '../../sampler/plan.js';
import { ALPHA_HELP, POLICY_HELP, checkPolicyFlags, type CheckedPolicy } from '../../sampler/policy_cli.js';
import { policyPlanHook, type PolicyContext } from '../../sampler/policy_plan.js';
import { encodePng, indexedPath, writeFilesAtomically, type RgbImage } from '../../sampler/png.js';
import { mustExist, readFeaturesFile, type FeaturesFile } from '../../sampler/text.js';

export interface GenerateFlags {
  model: string;
  vae: string;
  textEncoder?: string;
  tokenizer?: string;
  textFeatures?: string;
  prompt?: string[];
  negative?: string;
  seed?: string;
  cfg: string;
  tau: string;
  topP: string;
  topK: string;
  size: string;
  ratio: string;
  batch?: string;
  out: string;
  trace?: string;
  quiet?: boolean;
  policy?: string;
  alpha?: string;
}

export function register(program: Command): void {
  program
    .command('generate')
    .description('generate images from text with an Infinity model')
    .requiredOption('--model <path>', 'Infinity transformer weights (.safetensors, index json, folder or .pth)')
    .requiredOption('--vae <path>', 'BSQ-VAE weights holding decoder.*')
    .option('--text-encoder <dir>', 'Flan-T5 folder (config.json + weights) to encode --prompt')
    .option('--tokenizer <dir>', 'folder of the T5 tokenizer.json (default: the text encoder folder)')
    .option('--text-features <file>', 'safetensors with features (L, C) [and lens (B,), negative, negative_lens] instead of a text encoder')
    .option('--prompt <text>', 'the prompt; repeat for one prompt per image', collect)
    .option('--negative <text>', 'negative prompt (replaces the learned unconditional text)')
    .option('--seed <n>', 'seed of the first image; image i uses seed + i (default: random, printed)')
    .option('--cfg <x>', 'guidance: one value or one per scale, comma-separated (1 = off)', '3')
    .option('--tau <x>', 'temperature: one value or one per scale', '0.5')
    .option('--top-p <x>', 'per-bit nucleus mass in (0, 1] (1 = off)', '0.97')
    .option('--top-k <n>', 'top-k (0 = off; for bits only 1, greedy, changes anything)', '0')
    .option('--size <n>', `image size class: ${SIZE_HELP}`, '1024')
    .option('--ratio <H:W>', 'aspect ratio height:width; the nearest of the 15 templates is used', '1:1')
    .option('--batch <n>', 'images in one pass (default: one per prompt); files out-0.png, out-1.png, …')
    .requiredOption('--out <file.png>', 'output PNG')
    .option('--trace <dir>', 'also write the image decoded after every scale and timings.json there')
    .option('--policy <p>', POLICY_HELP, 'vanilla')
    .option('--alpha <a>', ALPHA_HELP)
    .option('--quiet', 'no progress output')
    .action(async (flags: GenerateFlags) => {
      await generateCommand(flags);
    });
}

function collect(value: string, previous: string[] | undefined): string[] {
  return [...(previous ?? []), value];
}

interface Checked {
  options: GenerateOptions;
  /** The per-scale policy (vanilla, stagevar, fastvar or a file), already checked against this run. */
  policy: CheckedPolicy;
  policyContext: PolicyContext;
  features: FeaturesFile | null;
  outputs: (count: number) => string[];
}

/** Parses and checks every flag; reads the features file. Nothing touches the GPU yet. */
export async function checkGenerateFlags(flags: GenerateFlags): Promise<Checked> {
  const f = { ...flags, prompt: flags.prompt ?? [] };
  if (!f.textEncoder === !f.textFeatures) throw new Error('give exactly one of --text-encoder DIR (with --prompt) or --text-features FILE');
  if (f.textEncoder && f.prompt.length === 0) throw new Error('--text-encoder needs --prompt "…"');
  if (f.textFeatures && f.prompt.length > 0) throw new Error('--prompt cannot be used with --text-features: the file already holds the text (use --text-encoder to encode prompts)');
  if (f.textFeatures && f.negative !== undefined) throw new Error('--negative needs --text-encoder; with --text-features put the negative prompt in the file as "negative" (L, C)');
  if (f.tokenizer && !f.textEncoder) throw new Error('--tokenizer only applies with --text-encoder');

  const cfg = parseNumberList('--cfg', f.cfg);
  for (const c of [cfg].flat()) checkCfg(c, '--cfg');
  const tau = parseNumberList('--tau', f.tau);
  for (const t of [tau].flat()) checkTau(t, '--tau');
  const topP = Number(f.topP);
  checkTopP(topP);
  const topK = Number(f.topK);
  checkTopK(topK);
  const size = parseInteger('--size', f.size);
  const shape = resolveShape(size, f.ratio);
  for (const [name, v] of [['--cfg', cfg], ['--tau', tau]] as const) {
    if (Array.isArray(v) && v.length !== shape.schedule.length) {
      throw new Error(`${name}: ${v.length} values but size ${size} has ${shape.schedule.length} scales (give one value, or one per scale)`);
    }
  }
  const seed = f.seed === undefined ? undefined : parseInteger('--seed', f.seed);
  const batch = f.batch === undefined ? undefined : parseInteger('--batch', f.batch, 1);

  const arch = (await Engine.inspectFiles({ model: f.model, vae: f.vae })).model;
  checkLevels(size, shape.schedule.length, arch.levels);
  if (f.textEncoder) await mustExist(f.textEncoder, 'text encoder folder');
  if (f.tokenizer) await mustExist(f.tokenizer, 'tokenizer folder');
  const out = resolve(f.out);
  if ((await stat(out).catch(() => null))?.isDirectory()) throw new Error(`--out ${f.out} is a folder; give a file name such as ${join(f.out, 'image.png')}`);
  if (!(await stat(dirname(out)).catch(() => null))?.isDirectory()) throw new Error(`the folder of --out ${f.out} does not exist: ${dirname(out)}`);
  if (f.trace && (await stat(f.trace).catch(() => null))?.isFile()) throw new Error(`--trace ${f.trace} is a file; give a folder`);
  const features = f.textFeatures ? await readFeaturesFile(f.textFeatures) : null;
  if (features) {
    checkFeatures('text features', features.prompts, arch.text_width, arch.text_max_len);
    if (features.negative) checkFeatures('negative features', features.negative, arch.text_width, arch.text_max_len);
  }
  resolveBatch(features ? features.prompts.lens.length : f.prompt.length, batch, seed);
  // The policy is validated against this run (ranks vs token counts, CFG order, skips) before any GPU work.
  const policyContext: PolicyContext = { chunks: arch.chunks, depth: arch.depth };
  const policy = await checkPolicyFlags({ policy: f.policy, alpha: f.alpha }, { schedule: shape.schedule, cfg, tau, ...policyContext });
  if (policy.alpha) policyContext.alpha = policy.alpha;

  const options: GenerateOptions = { cfg, tau, topP, topK, size, ratio: f.ratio };
  if (seed !== undefined) options.seed = seed;
  if (batch !== undefined) options.batch = batch;
  if (features) {
    options.textFeatures = features.prompts;
    if (features.negative) options.negativeFeatures = features.negative;
  } else {
    options.prompt = f.prompt;
    if (f.negative !== undefined) options.negativePrompt = f.negative;
  }
  return { options, policy, policyContext, features, outputs: (count) => (count === 1 ? [out] : Array.from({ length: count }, (_, i) => indexedPath(out, i))) };
}

function parseInteger(name: string, text: string, min = 0): number {
  const v = Number(text);
  if (!/^\s*\d+\s*$/.test(text) || !Number.isSafeInteger(v) || v < min) throw new Error(`${name} "${text}" must be an integer ≥ ${min}`);
  return v;
}

export async function generateCommand(flags: GenerateFlags): Promise<GenerateResult> {
  const checked = await checkGenerateFlags(flags);
  const engine = await Engine.create();
  const log = (line: string) => {
    if (!flags.quiet) process.stderr.write(`${line}\n`);
  };
  engine.addEventListener('warning', (e) => process.stderr.write(`warning: ${(e as WarningEvent).message}\n`));
  try {
    const t0 = performance.now();
    const info = await engine.loadInfinity({
      model: flags.model,
      vae: flags.vae,
      ...(flags.textEncoder ? { textEncoder: flags.textEncoder } : {}),
      ...(flags.tokenizer ? { tokenizer: flags.tokenizer } : {}),
    });
    log(`loaded Infinity (${info.depth} layers, width ${info.width}, ${info.bitsPerToken} bits/token) in ${ms(performance.now() - t0)}`);
    const trace: Array<{ scale: number; images: RgbImage[] }> = [];
    const result = await engine.generate({
      ...checked.options,
      plan: policyPlanHook(checked.policy.policy, checked.policyContext, (note) => process.stderr.write(`note: ${note}\n`)),
      onProgress: flags.quiet ? undefined : progressPrinter(),
      ...(flags.trace ? { onScaleImages: (scale: number, images: RgbImage[]) => void trace.push({ scale, images }) } : {}),
    });
    await writeOutputs(result, checked.outputs(result.images.length), flags.trace ? { dir: flags.trace, images: trace } : null);
    const [h, w] = [result.images[0].height, result.images[0].width];
    log(`wrote ${checked.outputs(result.images.length).join(', ')} (${w}×${h}, seed${result.seeds.length > 1 ? 's' : ''} ${result.seeds.join(', ')}) in ${ms(result.stats.totalMs)}`);
    return result;
  } finally {
    engine.dispose();
  }
}

/** PNGs of the result (and the trace), all written atomically together. */
export async function writeOutputs(result: GenerateResult, paths: string[], trace: { dir: string; images: Array<{ scale: number; images: RgbImage[] }> } | null): Promise<void> {
  const text = (i: number): Record<string, string> => ({ Software: 'stagevar', Seed: String(result.seeds[i]) });
  const files = result.images.map((img, i) => ({ path: paths[i], data: encodePng(img, text(i)) }));
  if (trace) {
    await mkdir(trace.dir, { recursive: true });
    const pad = (s: number) => String(s).padStart(2, '0');
    for (const { scale, images } of trace.images) {
      images.forEach((img, i) => {
        const name = images.length === 1 ? `scale-${pad(scale)}.png` : `scale-${pad(scale)}-${i}.png`;
        files.push({ path: join(trace.dir, name), data: encodePng(img, text(i)) });
      });
    }
    const timings = {
      seeds: result.seeds,
      template: result.template,
      resolution: result.resolution,
      text_ms: result.stats.textMs,
      conditioning_ms: result.stats.conditioningMs,
      // Per scale: whether it ran, which CFG branches, the guidance, and the token policy (for StageVAR the
      // random-projection ranks per block chunk and the RoPE convention; for FastVAR the pruning).
      scales: result.stats.scales.map((s, i) => ({
        scale: s.scale,
        grid: s.grid,
        tokens: s.tokens,
        run: s.run,
        branches: s.branches,
        cfg: result.plans[i]?.cfg,
        policy: result.plans[i]?.tokens ?? 'all',
        rows: s.rows,
        ms: s.ms,
      })),
      transformer_ms: result.stats.transformerMs,
      decode_ms: result.stats.decodeMs,
      total_ms: result.stats.totalMs,
      peak_bytes: result.stats.peakBytes,
    };
    files.push({ path: join(trace.dir, 'timings.json'), data: new TextEncoder().encode(JSON.stringify(timings, null, 2) + '\n') });
  }
  await writeFilesAtomically(files);
}

const ms = (t: number) => (t >= 10_000 ? `${(t / 1000).toFixed(1)} s` : `${Math.round(t)} ms`);

/** One stderr line per scale: a bar of the scales done, the scale's grid, its tokens (per image) and time. */
export function progressPrinter(write: (s: string) => void = (s) => process.stderr.write(s)): (p: ProgressInfo) => void {
  return (p) => {
    if (p.phase === 'text') {
      write(`text       ${p.prompts} prompt${p.prompts === 1 ? ' ' : 's'}${' '.repeat(33)}${ms(p.ms).padStart(8)}\n`);
    } else if (p.phase === 'scale') {
      const s = p.stats;
      const width = 20;
      const filled = Math.round((width * (s.scale + 1)) / p.scales);
      const bar = '█'.repeat(filled) + '░'.repeat(width - filled);
      const grid = `${s.grid[0]}×${s.grid[1]}`;
      const what = s.run ? `${String(s.tokens).padStart(6)} tokens ${ms(s.ms).padStart(8)}` : '       skipped';
      write(`[${bar}] scale ${String(s.scale + 1).padStart(2)}/${p.scales} ${grid.padStart(7)} ${what}\n`);
    } else {
      write(`decode     ${p.images} image${p.images === 1 ? ' ' : 's'}${' '.repeat(34)}${ms(p.ms).padStart(8)}\n`);
    }
  };
}
