// `stagevar generate`: text → image with Infinity or STAR (the family comes from --model's tensors). Every
// argument is checked before the GPU starts, the files are recognised by their tensors (a VAE given as
// --model is named as such), progress goes to stderr one line per scale, and PNGs are written only after
// everything succeeded, atomically (temporary file + rename): an error leaves no output file.
import { mkdir, stat } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import type { Command } from 'commander';
import { Engine, WarningEvent, detectFamily, type GenerateOptions, type GenerateResult, type ProgressInfo } from '../../sampler/engine.js';
import { SIZE_HELP, checkFeatures, checkLevels, parseNumberList, resolveBatch, resolveShape } from '../../sampler/options.js';
import type { Grid } from '../../sampler/schedule.js';
import { checkCfg, checkTau, checkTopK, checkTopP } from '../../sampler/plan.js';
import { ALPHA_HELP, POLICY_HELP, RANKS_HELP, checkPolicyFlags, type CheckedPolicy, type RunShape } from '../../sampler/policy_cli.js';
import { policyPlanHook, type PolicyContext } from '../../sampler/policy_plan.js';
import { STAR_DEFAULTS, inspectStarFiles, isSquare, starPatchNums } from '../../sampler/star_generate.js';
import { starGrids } from '../../sampler/star_loop.js';
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
  /** Family defaults when absent (Infinity: cfg 3, τ 0.5 (8B: 1), top-p 0.97, top-k 0; STAR: 4.5, 1, 0.8, 600). */
  cfg?: string;
  tau?: string;
  topP?: string;
  topK?: string;
  size: string;
  ratio: string;
  /** STAR: scale sides instead of the size's list. */
  patchNums?: string;
  batch?: string;
  out: string;
  trace?: string;
  quiet?: boolean;
  policy?: string;
  alpha?: string;
  ranks?: string;
  precision?: string;
  kvCache?: string;
}

export function register(program: Command): void {
  program
    .command('generate')
    .description('generate images from text with an Infinity (2B, 8B) or STAR model (the family is read from the weights)')
    .requiredOption('--model <path>', 'Infinity or STAR transformer weights (.safetensors, index json, folder or .pth)')
    .requiredOption('--vae <path>', 'Infinity: BSQ-VAE weights holding decoder.*; STAR: the VAR VQ-VAE')
    .option('--text-encoder <dir>', 'Infinity: Flan-T5 folder (config.json + weights); STAR: CLIP folder (text_encoder/ + tokenizer/)')
    .option('--tokenizer <dir>', 'tokenizer folder (default: found in or beside the text encoder folder)')
    .option('--text-features <file>', 'safetensors with features (L, C) [and lens (B,), negative, negative_lens; STAR: pooled, negative_pooled] instead of a text encoder')
    .option('--prompt <text>', 'the prompt; repeat for one prompt per image', collect)
    .option('--negative <text>', 'negative prompt (replaces the unconditional text: Infinity\'s learned one, STAR\'s "")')
    .option('--seed <n>', 'seed of the first image; image i uses seed + i (default: random, printed)')
    .option('--cfg <x>', 'guidance: one value or one per scale, comma-separated (Infinity: default 3, 1 = off; STAR: default 4.5 on the ramp cfg·s/(K−1))')
    .option('--tau <x>', 'temperature: one value or one per scale (Infinity-2B: default 0.5; 8B and STAR: 1)')
    .option('--top-p <x>', 'nucleus mass in (0, 1], 1 = off (Infinity: default 0.97 per bit; STAR: 0.8)')
    .option('--top-k <n>', 'top-k, 0 = off (Infinity: default 0, for bits only 1 changes anything; STAR: 600)')
    .option('--size <n>', `image size class: ${SIZE_HELP} (STAR: 256, 512, 1024)`, '1024')
    .option('--ratio <H:W>', 'aspect ratio height:width; the nearest of the 15 templates is used (STAR: 1:1 only)', '1:1')
    .option('--patch-nums <list>', 'STAR: the scale sides, comma-separated, when the model uses another list than the size\'s')
    .option('--batch <n>', 'images in one pass (default: one per prompt); files out-0.png, out-1.png, …')
    .requiredOption('--out <file.png>', 'output PNG')
    .option('--trace <dir>', 'also write the image decoded after every scale and timings.json there')
    .option('--policy <p>', POLICY_HELP, 'vanilla')
    .option('--alpha <a>', ALPHA_HELP)
    .option('--ranks <file.json>', RANKS_HELP)
    .option('--precision <p>', 'activations: f32 (the reference path) or f16 (needs shader-f16)', 'f32')
    .option('--kv-cache <dtype>', 'KV cache storage: f32 or f16 (half the memory)', 'f32')
    .option('--quiet', 'no progress output')
    .action(async (flags: GenerateFlags) => {
      await generateCommand(flags);
    });
}

function collect(value: string, previous: string[] | undefined): string[] {
  return [...(previous ?? []), value];
}

interface Checked {
  family: 'infinity' | 'star';
  precision: 'f32' | 'f16';
  kvCache: 'f32' | 'f16';
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

  const precision = choice('--precision', f.precision ?? 'f32', ['f32', 'f16'] as const);
  const kvCache = choice('--kv-cache', f.kvCache ?? 'f32', ['f32', 'f16'] as const);
  const family = await detectFamily(f.model);
  const star = family === 'star';
  if (!star && f.patchNums !== undefined) throw new Error('--patch-nums applies to STAR models only (Infinity takes its schedule from --size and --ratio)');
  const cfg = parseNumberList('--cfg', f.cfg ?? String(star ? STAR_DEFAULTS.cfg : 3));
  for (const c of [cfg].flat()) checkCfg(c, '--cfg');
  const tau = f.tau === undefined ? undefined : parseNumberList('--tau', f.tau);
  for (const t of [tau ?? []].flat()) checkTau(t, '--tau');
  const topP = Number(f.topP ?? (star ? STAR_DEFAULTS.topP : 0.97));
  checkTopP(topP);
  const topK = Number(f.topK ?? (star ? STAR_DEFAULTS.topK : 0));
  checkTopK(topK);
  const size = parseInteger('--size', f.size);
  const seed = f.seed === undefined ? undefined : parseInteger('--seed', f.seed);
  const batch = f.batch === undefined ? undefined : parseInteger('--batch', f.batch, 1);

  // The files, recognised by their tensors; the run's shape and the model's sizes.
  let schedule: Grid[];
  let textWidth: number;
  let textMaxLen: number;
  let run: Omit<RunShape, 'schedule' | 'cfg' | 'tau'>;
  let patchNums: number[] | undefined;
  let defaultTau = 0.5;
  if (star) {
    const arch = (await inspectStarFiles({ model: f.model, vae: f.vae })).model;
    if (!isSquare(f.ratio)) throw new Error(`--ratio ${f.ratio}: STAR generates square images only (use 1:1)`);
    patchNums = starPatchNums(size, arch.levels, f.patchNums === undefined ? undefined : [parseNumberList('--patch-nums', f.patchNums)].flat());
    schedule = starGrids(patchNums);
    [textWidth, textMaxLen] = [arch.text_width, 77];
    run = { chunks: arch.depth, depth: arch.depth, family: 'star', width: arch.width };
    defaultTau = STAR_DEFAULTS.tau;
  } else {
    const arch = (await Engine.inspectFiles({ model: f.model, vae: f.vae })).model;
    const shape = resolveShape(size, f.ratio);
    schedule = shape.schedule;
    checkLevels(size, schedule.length, arch.levels);
    [textWidth, textMaxLen] = [arch.text_width, arch.text_max_len];
    run = { chunks: arch.chunks, depth: arch.depth };
    if (arch.bits === 4 * arch.vae_codebook_dim) defaultTau = 1; // Infinity-8B (2×2 patchify): τ 1 officially
  }
  for (const [name, v] of [['--cfg', cfg], ['--tau', tau]] as const) {
    if (Array.isArray(v) && v.length !== schedule.length) {
      throw new Error(`${name}: ${v.length} values but ${star ? 'this run' : `size ${size}`} has ${schedule.length} scales (give one value, or one per scale)`);
    }
  }
  if (f.textEncoder) await mustExist(f.textEncoder, 'text encoder folder');
  if (f.tokenizer) await mustExist(f.tokenizer, 'tokenizer folder');
  const out = resolve(f.out);
  if ((await stat(out).catch(() => null))?.isDirectory()) throw new Error(`--out ${f.out} is a folder; give a file name such as ${join(f.out, 'image.png')}`);
  if (!(await stat(dirname(out)).catch(() => null))?.isDirectory()) throw new Error(`the folder of --out ${f.out} does not exist: ${dirname(out)}`);
  if (f.trace && (await stat(f.trace).catch(() => null))?.isFile()) throw new Error(`--trace ${f.trace} is a file; give a folder`);
  const features = f.textFeatures ? await readFeaturesFile(f.textFeatures) : null;
  if (features) {
    checkFeatures('text features', features.prompts, textWidth, textMaxLen);
    if (features.negative) checkFeatures('negative features', features.negative, textWidth, textMaxLen);
    if (star && !features.negative) {
      throw new Error(`--text-features ${f.textFeatures}: STAR's unconditional rows are the CLIP states of "" — add them as "negative" (and "negative_lens"), or use --text-encoder`);
    }
  }
  resolveBatch(features ? features.prompts.lens.length : f.prompt.length, batch, seed);
  // The policy is validated against this run (ranks vs token counts, CFG order, skips) before any GPU work.
  const policy = await checkPolicyFlags({ policy: f.policy, alpha: f.alpha, ranks: f.ranks }, { schedule, cfg, tau: tau ?? defaultTau, ...run });
  const policyContext: PolicyContext = policy.context;

  const options: GenerateOptions = { cfg, topP, topK, size, ratio: f.ratio };
  if (tau !== undefined) options.tau = tau;
  if (patchNums) options.patchNums = patchNums;
  if (seed !== undefined) options.seed = seed;
  if (batch !== undefined) options.batch = batch;
  if (features) {
    options.textFeatures = features.prompts;
    if (features.negative) options.negativeFeatures = features.negative;
  } else {
    options.prompt = f.prompt;
    if (f.negative !== undefined) options.negativePrompt = f.negative;
  }
  return { family, precision, kvCache, options, policy, policyContext, features, outputs: (count) => (count === 1 ? [out] : Array.from({ length: count }, (_, i) => indexedPath(out, i))) };
}

function choice<T extends string>(name: string, text: string, allowed: readonly T[]): T {
  if (!(allowed as readonly string[]).includes(text)) throw new Error(`${name} "${text}" is not one of ${allowed.join(', ')}`);
  return text as T;
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
    const files = {
      model: flags.model,
      vae: flags.vae,
      ...(flags.textEncoder ? { textEncoder: flags.textEncoder } : {}),
      ...(flags.tokenizer ? { tokenizer: flags.tokenizer } : {}),
      activations: checked.precision,
      cacheDtype: checked.kvCache,
    };
    const info = checked.family === 'star' ? await engine.loadStar(files) : await engine.loadInfinity(files);
    const tokens = info.family === 'star' ? `${info.vocab} codes` : `${info.bitsPerToken} bits/token`;
    log(`loaded ${info.family === 'star' ? 'STAR' : 'Infinity'} (${info.depth} layers, width ${info.width}, ${tokens}) in ${ms(performance.now() - t0)}`);
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
