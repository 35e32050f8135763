// Text → image with STAR for the Engine: the pipeline (transformer, VQ-VAE, optional CLIP encoder), the
// run's shape (a square scale list from the size, or given), STAR's defaults (cfg 4.5 with the ramp, top-k
// 600, top-p 0.8, no temperature: sample.py), text rows (prompts, then "" or the negative), the loop
// (star_loop.ts) and the decode. Checks that need no GPU come first.

import type { Gpu } from '../engine/device.js';
import type { Tensor } from '../engine/tensor.js';
import { expectArchitecture, type StarArch, type StarVqvaeArch } from '../model/arch.js';
import { STAR_PATCH_NUMS, checkPatchNums } from '../model/star/config.js';
import type { KvDType } from '../model/kv_cache.js';
import { StarModel } from '../model/star/model.js';
import { VarVqvae } from '../model/star/vqvae.js';
import { Checkpoint } from '../model/weights/checkpoint.js';
import type { ScaleStats } from './loop.js';
import { SIZES } from './options.js';
import { checkTopK, checkTopP, needsGuidance, validatePlans, type PerScale, type ScalePlan } from './plan.js';
import { rgbFromPlanar, type RgbImage } from './png.js';
import { parseRatio, type Grid, type ResolutionName } from './schedule.js';
import { runStarLoop, starGrids, starVanillaPlan } from './star_loop.js';
import { ClipPromptEncoder, pooledFromFeatures, starTextInput, type StarTextFeatures } from './star_text.js';
import { mustExist, type TextFeatures } from './text.js';

export interface StarPipeline {
  family: 'star';
  model: StarModel;
  vq: VarVqvae;
  text: ClipPromptEncoder | null;
}

export interface LoadStarOptions {
  /** STAR transformer (a training snapshot's `trainer.var_wo_ddp` is found by its prefix). */
  model: string;
  /** VAR VQ-VAE (`vae_ch160v4096z32.pth` converted, or a snapshot's `trainer.vae_local`). */
  vae: string;
  /** CLIP text encoder folder (`text_encoder/` + `tokenizer/`, or the encoder folder itself). */
  textEncoder?: string;
  tokenizer?: string;
  /** The layers' intermediate activations in f16 (needs shader-f16; default f32, the reference path). */
  activations?: 'f32' | 'f16';
  /** The self-attention KV cache's storage (default f32). */
  cacheDtype?: KvDType;
}

/** Recognises both files by their tensors and checks that they belong together. */
export async function inspectStarFiles(o: Pick<LoadStarOptions, 'model' | 'vae'>): Promise<{ model: StarArch; vae: StarVqvaeArch }> {
  await mustExist(o.model, 'model file');
  await mustExist(o.vae, 'VAE file');
  const read = async <K extends 'star' | 'star-vqvae'>(path: string, kind: K) => {
    const ckpt = await Checkpoint.open(path);
    try {
      return expectArchitecture(ckpt.tensors(), kind, { file: path });
    } finally {
      await ckpt.close();
    }
  };
  const model = await read(o.model, 'star');
  const vae = await read(o.vae, 'star-vqvae');
  if (model.vocab !== vae.codebook_size || model.vae_codebook_dim !== vae.codebook_dim) {
    throw new Error(
      `${o.model} predicts ${model.vocab} codes embedded from ${model.vae_codebook_dim} channels but ${o.vae} has ${vae.codebook_size} codes of ` +
        `${vae.codebook_dim} channels: they are not a pair`,
    );
  }
  return { model, vae };
}

export async function loadStarPipeline(gpu: Gpu, o: LoadStarOptions, onWarning: (m: string) => void): Promise<StarPipeline> {
  const { model: arch } = await inspectStarFiles(o);
  let model: StarModel | null = null;
  let vq: VarVqvae | null = null;
  let text: ClipPromptEncoder | null = null;
  try {
    model = await StarModel.load(gpu, o.model, {
      ...(o.activations ? { activations: o.activations } : {}),
      ...(o.cacheDtype ? { cacheDtype: o.cacheDtype } : {}),
    });
    vq = await VarVqvae.load(gpu, o.vae);
    if (o.textEncoder) {
      text = await ClipPromptEncoder.load(gpu, o.textEncoder, { ...(o.tokenizer ? { tokenizer: o.tokenizer } : {}), onWarning });
      if (text.width !== arch.text_width || text.width !== arch.pooled_width) {
        throw new Error(`${o.textEncoder}: the CLIP encoder gives ${text.width}-wide states but the model expects ${arch.text_width} per token and ${arch.pooled_width} pooled (STAR uses SD-2's OpenCLIP-H, 1024)`);
      }
    }
    return { family: 'star', model, vq, text };
  } catch (err) {
    text?.dispose();
    vq?.dispose();
    model?.dispose();
    throw err;
  }
}

/** STAR's defaults (STAR-T2I sample.py). */
export const STAR_DEFAULTS = { cfg: 4.5, tau: 1, topK: 600, topP: 0.8, size: 1024 } as const;

/** The scale list of a run: given, or the released list of the size class (256, 512, 1024). */
export function starPatchNums(size: number, levels: number, given?: readonly number[]): number[] {
  if (given) {
    checkPatchNums(given, levels);
    return [...given];
  }
  const list = (STAR_PATCH_NUMS as Record<number, readonly number[]>)[size];
  if (!list) throw new RangeError(`STAR size ${size} has no released scale list: use ${Object.keys(STAR_PATCH_NUMS).join(', ')} (or give the scale sides)`);
  if (list.length > levels) throw new RangeError(`size ${size} needs ${list.length} scales but the model has level embeddings for ${levels}; use a smaller size or give its scale sides`);
  return [...list];
}

export interface StarRunOptions {
  prompts: string[] | null;
  /** Valid-token features of the prompts (+ pooled; default: each prompt's last valid row, its EOS). */
  textFeatures?: TextFeatures & { pooled?: Float32Array };
  negativePrompt?: string;
  negativeFeatures?: TextFeatures & { pooled?: Float32Array };
  batch: number;
  seeds: number[];
  cfg?: PerScale;
  tau?: PerScale;
  topK?: number;
  topP?: number;
  size?: number;
  ratio?: number | string;
  patchNums?: readonly number[];
  plan?: (plans: ScalePlan[]) => ScalePlan[];
  signal?: AbortSignal;
  keepTokens?: boolean;
  onText?: (ms: number, prompts: number) => void;
  onScale?: (stats: ScaleStats, scales: number) => void;
  onDecode?: (ms: number, images: number) => void;
  /** The images decoded from f_hat after every scale that runs (the paper's Fig. 1). */
  onScaleImages?: (scale: number, images: RgbImage[]) => void | Promise<void>;
}

export interface StarRunResult {
  images: RgbImage[];
  textLens: number[];
  /** The size class of the image side (VQ-VAE stride · last scale side), or null when it is not 256, 512, 768 or 1024. */
  resolution: ResolutionName | null;
  schedule: Grid[];
  plans: ScalePlan[];
  textMs: number;
  conditioningMs: number;
  scales: ScaleStats[];
  transformerMs: number;
  decodeMs: number;
  tokens?: Int32Array[];
}

const now = () => performance.now();

/** clamp(decode(f_hat)) in [−1, 1] → RGB; rgbFromPlanar applies upstream's (x + 1)/2 · 255, truncated. */
async function decodeImages(vq: VarVqvae, fhat: Tensor): Promise<RgbImage[]> {
  const image = vq.decodeClamped(fhat);
  try {
    const data = await image.readF32();
    return Array.from({ length: image.shape[0] }, (_, b) => rgbFromPlanar(data, image.shape, b));
  } finally {
    image.dispose();
  }
}

/** STAR is square: a ratio must read as h/w = 1 ("1:1", "2:2", 1). */
export function isSquare(ratio: number | string | undefined): boolean {
  return ratio === undefined || (typeof ratio === 'number' ? ratio : parseRatio(ratio)) === 1;
}

function withPooled(f: TextFeatures & { pooled?: Float32Array }, what: string, pooledWidth: number): StarTextFeatures {
  const pooled = f.pooled ?? pooledFromFeatures(f);
  if (pooled.length !== f.lens.length * pooledWidth) {
    throw new Error(`${what}: the pooled text must be [${f.lens.length}, ${pooledWidth}] (the model's encoder_proj input), got ${pooled.length} values`);
  }
  return { features: f.features, lens: f.lens, width: f.width, pooled, pooledWidth };
}

/** One STAR generation (the Engine's `generate` for a STAR pipeline). */
export async function runStar(gpu: Gpu, p: StarPipeline, o: StarRunOptions): Promise<StarRunResult> {
  const { config } = p.model;
  if (!isSquare(o.ratio)) throw new RangeError(`STAR generates square images only (ratio ${o.ratio}); use 1:1`);
  const size = o.size ?? STAR_DEFAULTS.size;
  const patchNums = starPatchNums(size, config.levels, o.patchNums);
  const schedule = starGrids(patchNums);
  const topK = o.topK ?? STAR_DEFAULTS.topK;
  const topP = o.topP ?? STAR_DEFAULTS.topP;
  checkTopK(topK);
  checkTopP(topP);
  let plans: ScalePlan[] = starVanillaPlan(patchNums, { cfg: o.cfg ?? STAR_DEFAULTS.cfg, tau: o.tau ?? STAR_DEFAULTS.tau });
  if (o.plan) plans = o.plan(plans.map((x) => ({ ...x })));
  validatePlans(plans, schedule);
  const guidance = needsGuidance(plans);
  if (o.prompts && !p.text) throw new Error('prompts need the CLIP text encoder: load one (textEncoder) or pass textFeatures');
  if (!o.prompts && !o.textFeatures) throw new Error('nothing to generate from: give a prompt (with a text encoder loaded) or text features');
  if (o.negativePrompt !== undefined && !p.text) throw new Error('a negative prompt needs the CLIP text encoder: load one or pass negativeFeatures');
  if (guidance && !p.text && !o.negativeFeatures) {
    throw new Error('STAR\'s unconditional rows are the CLIP states of the empty prompt "": load the text encoder, or give them as negative features (negative, negative_lens in the features file)');
  }

  const start = now();
  const prompts = o.prompts ? await p.text!.encode(o.prompts) : withPooled(o.textFeatures!, 'text features', config.pooledWidth);
  const negative = !guidance ? null : o.negativeFeatures ? withPooled(o.negativeFeatures, 'negative features', config.pooledWidth) : await p.text!.encode([o.negativePrompt ?? '']);
  for (const [what, f] of [['text features', prompts], ['negative features', negative]] as const) {
    if (f && f.width !== config.textWidth) throw new Error(`${what} are ${f.width} wide but the model expects ${config.textWidth} (its CLIP encoder's width)`);
  }
  const promptCount = prompts.lens.length;
  if (promptCount !== 1 && promptCount !== o.batch) throw new RangeError(`${promptCount} prompts for a batch of ${o.batch} images`);
  if (negative && negative.lens.length !== 1 && negative.lens.length !== promptCount) throw new Error(`${negative.lens.length} negative prompts for ${promptCount} prompts (give one, or one per prompt)`);
  const promptOfImage = Array.from({ length: o.batch }, (_, i) => (promptCount === 1 ? 0 : i));
  const textMs = now() - start;
  o.onText?.(textMs, promptCount);

  const text = starTextInput(gpu, prompts, promptOfImage, negative);
  const loopStart = now();
  try {
    const loop = await runStarLoop(gpu, {
      model: p.model,
      vq: p.vq,
      text,
      patchNums,
      plans,
      seeds: o.seeds,
      topK,
      topP,
      ...(o.signal ? { signal: o.signal } : {}),
      ...(o.keepTokens ? { keepTokens: true } : {}),
      onScale: (s) => o.onScale?.(s, plans.length),
      ...(o.onScaleImages ? { onLatent: async (scale: number, fhat: Tensor) => o.onScaleImages!(scale, await decodeImages(p.vq, fhat)) } : {}),
    });
    const transformerMs = now() - loopStart - loop.traceMs;
    try {
      o.signal?.throwIfAborted();
      const d0 = now();
      const images = await decodeImages(p.vq, loop.fhat);
      const decodeMs = now() - d0;
      o.onDecode?.(decodeMs, images.length);
      const pixels = p.vq.config.stride * patchNums[patchNums.length - 1];
      const result: StarRunResult = {
        images,
        textLens: promptOfImage.map((i) => prompts.lens[i]),
        resolution: SIZES[pixels] ?? null,
        schedule,
        plans,
        textMs,
        conditioningMs: loop.conditioningMs,
        scales: loop.stats,
        transformerMs,
        decodeMs,
      };
      if (loop.tokens) result.tokens = loop.tokens;
      return result;
    } finally {
      loop.fhat.dispose();
    }
  } finally {
    text.hidden.dispose();
    text.pooled.dispose();
  }
}
