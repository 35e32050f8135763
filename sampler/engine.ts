// The library API: an Engine owns a GPU and one loaded pipeline (Infinity transformer + BSQ-VAE decoder +
// optional T5 encoder, or STAR transformer + VQ-VAE + optional CLIP encoder) and turns prompts into RGB images.
//
//   const engine = await Engine.create();
//   await engine.load({ model, vae, textEncoder });                // the family from the weights; or loadDemo()
//   engine.loadParts({ model, decoder });                          // or parts built in memory (e.g. synthetic weights)
//   const { images, stats } = await engine.generate({ prompt: 'a cat', seed: 1, size: 1024, ratio: '16:9' });
//   engine.dispose();
//
// Progress: `onProgress` in the options, or `engine.addEventListener('progress', (e) => e.info)`; warnings
// (a prompt cut at 512 tokens, an ignored option) the same way as 'warning' events. `signal` aborts
// between scales and between block chunks.

import { Gpu, type GpuOptions } from '../engine/device.js';
import type { Tensor } from '../engine/tensor.js';
import { detectArchitecture, expectArchitecture, type InfinityArch, type InfinityVaeArch } from '../model/arch.js';
import { InfinityModel } from '../model/infinity/model.js';
import { loadBsqDecoder } from '../model/vae/load.js';
import type { BsqDecoder } from '../model/vae/bsq_decoder.js';
import { Checkpoint } from '../model/weights/checkpoint.js';
import type { GpuFloat } from '../model/weights/gpu_load.js';
import { DemoPromptEncoder, demoDecoder, loadDemoInfinity } from './demo_model.js';
import { runNextScaleLoop, type ScaleStats } from './loop.js';
import { checkTopK, checkTopP, needsGuidance, validatePlans, vanillaPlan, type PerScale, type ScalePlan } from './plan.js';
import { rgbFromPlanar, type RgbImage } from './png.js';
import { checkFeatures, checkLevels, resolveBatch, resolveShape, templateNote } from './options.js';
import type { Grid, ResolutionName } from './schedule.js';
import { T5PromptEncoder, mustExist, selectPrompts, type PromptEncoder, type TextFeatures } from './text.js';
import { loadStarPipeline, runStar, type LoadStarOptions, type StarPipeline } from './star_generate.js';

export interface EngineOptions extends GpuOptions {
  /** Use this GPU instead of creating one (the engine then never destroys it). */
  gpu?: Gpu;
}

export interface LoadInfinityOptions {
  /** Transformer checkpoint: .safetensors, sharded index, folder or .pth. */
  model: string;
  /** BSQ-VAE checkpoint holding `decoder.*`. */
  vae: string;
  /** Hugging Face T5 folder (config.json + weights); optional when every generation passes text features. */
  textEncoder?: string;
  /** Folder of the T5 tokenizer.json (default: the text encoder's folder). */
  tokenizer?: string;
  /** GPU dtype of the transformer's linear weights (default: as stored). */
  linearDtype?: GpuFloat;
  /** Infinity: the layers' intermediate activations in f16 (needs shader-f16; default f32, the reference path). */
  activations?: 'f32' | 'f16';
  /** The self-attention KV cache's storage (default f32; f16 halves it and needs no feature). */
  cacheDtype?: 'f32' | 'f16';
}

/** An Infinity pipeline built by the caller (`Engine.loadParts`): weights from memory, synthetic sources, any load options. */
export interface InfinityParts {
  /** The transformer, e.g. `InfinityModel.load(engine.gpu, source, options)` on any `TensorSource`. */
  model: InfinityModel;
  /** Its BSQ-VAE decoder (`BsqDecoder.fromWeights`, `loadBsqDecoder`), on the same GPU. */
  decoder: BsqDecoder;
  /** A prompt encoder of the model's text width; without one, every generation passes `textFeatures`. */
  text?: PromptEncoder | null;
  /** What `ModelInfo.name` reports (default 'infinity'). */
  name?: string;
}

export interface ModelInfo {
  /** 'infinity' (2B, 8B and the demo) or 'star'. */
  family: 'infinity' | 'star';
  name: string;
  depth: number;
  width: number;
  heads: number;
  chunks: number;
  ffnHidden: number;
  /** Infinity's bits per token; 0 for STAR, whose tokens are codebook indices (see vocab). */
  bitsPerToken: number;
  /** STAR's codebook size; 0 for Infinity. */
  vocab: number;
  /** Text feature width the model expects (T5-XL: 2048) and the most text tokens per prompt. */
  textWidth: number;
  textMaxLen: number;
  /** Scales the model has level embeddings for. */
  levels: number;
  vaeChannels: number;
  vaeStride: number;
  textEncoder: string | null;
}

export interface GenerateOptions {
  /** One prompt, or one per image (needs a loaded text encoder). */
  prompt?: string | readonly string[];
  /** Precomputed text features instead of prompts (one entry of `lens` per prompt). STAR: the valid CLIP
   *  states of each prompt, and optionally `pooled` [prompts, width] (default: each prompt's last row, its EOS). */
  textFeatures?: TextFeatures & { pooled?: Float32Array };
  /** Replaces the unconditional text (Infinity's learned cfg_uncond; STAR's ""). */
  negativePrompt?: string;
  /** Negative features: one entry (for every image) or one per prompt. */
  negativeFeatures?: TextFeatures & { pooled?: Float32Array };
  /** One seed (image i uses seed + i) or one per image. Default: random (reported in the result). */
  seed?: number | readonly number[];
  /** Images; default: the number of prompts or seeds. */
  batch?: number;
  /** Guidance and temperature: one value or one per scale. Infinity (cfg 1 = none): 3 and 0.5 for 2B (its
   *  demo), 3 and 1 for 8B (the official 8B defaults). STAR: cfg 4.5 on the ramp t = cfg·s/(K−1), τ 1. */
  cfg?: PerScale;
  tau?: PerScale;
  /** Infinity: 0.97 and 0 (off); STAR: 0.8 and 600. */
  topP?: number;
  topK?: number;
  /** 256, 512, 768 or 1024 (default 1024; STAR: 256, 512, 1024). */
  size?: number;
  /** Height:width as "H:W", or h/w as a number (default 1); the nearest of the 15 templates is used. STAR: 1:1 only. */
  ratio?: number | string;
  /** STAR only: the scale sides, when the model was trained on another list than the size's (e.g. tiny models). */
  patchNums?: readonly number[];
  /** Changes the per-scale plan (e.g. StageVAR's policy); gets the vanilla plan. */
  plan?: (plans: ScalePlan[]) => ScalePlan[];
  signal?: AbortSignal;
  onProgress?: (info: ProgressInfo) => void;
  /** Called with the images decoded from the latent after every scale that runs (the paper's Fig. 1). */
  onScaleImages?: (scale: number, images: RgbImage[]) => void | Promise<void>;
  /** Return every scale's bits (Infinity) or token indices (STAR). */
  keepBits?: boolean;
}

export type ProgressInfo =
  | { phase: 'text'; ms: number; prompts: number }
  | { phase: 'scale'; scales: number; stats: ScaleStats }
  | { phase: 'decode'; ms: number; images: number };

export interface GenerationStats {
  /** Text encoding (T5 or the features' preparation) and the per-generation text constants. */
  textMs: number;
  conditioningMs: number;
  scales: ScaleStats[];
  /** The whole next-scale loop (conditioning and every scale), trace decodes excluded. */
  transformerMs: number;
  decodeMs: number;
  totalMs: number;
  /** Peak bytes of GPU buffers during the generation (weights included). */
  peakBytes: number;
}

export interface GenerateResult {
  images: RgbImage[];
  seeds: number[];
  /** Text tokens of each image's prompt. */
  textLens: number[];
  template: number;
  /** The size class ('1M' …); null for a STAR scale list whose image size is not a released one. */
  resolution: ResolutionName | null;
  schedule: Grid[];
  plans: ScalePlan[];
  stats: GenerationStats;
  bits?: Int32Array[];
  /** STAR with keepBits: each scale's token indices [B·side²] (empty for skipped scales). */
  tokens?: Int32Array[];
}

export class GenerationProgressEvent extends Event {
  constructor(readonly info: ProgressInfo) {
    super('progress');
  }
}

export class WarningEvent extends Event {
  constructor(readonly message: string) {
    super('warning');
  }
}

interface InfinityPipeline {
  family: 'infinity';
  model: InfinityModel;
  decoder: BsqDecoder;
  text: PromptEncoder | null;
  info: ModelInfo;
  /** GPU tensors the pipeline owns beyond the model's (the demo decoder's weights). */
  owned: Tensor[];
}

type Pipeline = InfinityPipeline | (StarPipeline & { info: ModelInfo });

const now = () => performance.now();

export class Engine extends EventTarget {
  private pipeline: Pipeline | null = null;
  private disposed = false;
  private running = false;

  private constructor(
    readonly gpu: Gpu,
    private readonly ownsGpu: boolean,
  ) {
    super();
  }

  static async create(options: EngineOptions = {}): Promise<Engine> {
    const { gpu, ...gpuOptions } = options;
    return gpu ? new Engine(gpu, false) : new Engine(await Gpu.create(gpuOptions), true);
  }

  /** What is loaded, or null. */
  get model(): ModelInfo | null {
    return this.pipeline?.info ?? null;
  }

  /**
   * Recognises the files by their tensors (headers only, no GPU): a VAE given as the model, or the other
   * way round, or a transformer and a VAE that do not belong together, are named as such.
   */
  static async inspectFiles(o: Pick<LoadInfinityOptions, 'model' | 'vae'>): Promise<{ model: InfinityArch; vae: InfinityVaeArch }> {
    await mustExist(o.model, 'model file');
    await mustExist(o.vae, 'VAE file');
    const vae = await withOpen(o.vae, (ckpt) => expectArchitecture(ckpt.tensors(), 'infinity-vae', { file: o.vae }));
    const model = await withOpen(o.model, (ckpt) => expectArchitecture(ckpt.tensors(), 'infinity', { file: o.model, vaeCodebookDim: vae.codebook_dim }));
    if (model.prefix) throw new Error(`${o.model}: the transformer sits under "${model.prefix}"; extract it first (stagevar convert --key ${model.prefix.replace(/\.$/, '')})`);
    if (vae.prefix) throw new Error(`${o.vae}: the VAE sits under "${vae.prefix}"; extract it first (stagevar convert --key ${vae.prefix.replace(/\.$/, '')})`);
    if (model.bits !== vae.codebook_dim && model.bits !== 4 * vae.codebook_dim) {
      throw new Error(
        `${o.model} predicts ${model.bits} bits per token but ${o.vae} decodes ${vae.codebook_dim} code channels: they are not a pair ` +
          `(the transformer needs a VAE with ${model.bits} code channels, or ${model.bits / 4} with 2×2 patchify as Infinity-8B's 14-bit VAE; ` +
          `the VAE needs a transformer with ${vae.codebook_dim} or ${4 * vae.codebook_dim} bits per token)`,
      );
    }
    return { model, vae };
  }

  /** Loads Infinity (checked by `inspectFiles` first), its decoder and optionally the T5 text encoder. */
  async loadInfinity(o: LoadInfinityOptions): Promise<ModelInfo> {
    this.assertAlive();
    const { vae } = await Engine.inspectFiles(o);
    let model: InfinityModel | null = null;
    let text: PromptEncoder | null = null;
    try {
      const ckpt = await Checkpoint.open(o.model);
      try {
        model = await InfinityModel.load(this.gpu, ckpt, {
          vaeChannels: vae.codebook_dim,
          ...(o.linearDtype ? { linearDtype: o.linearDtype } : {}),
          ...(o.activations ? { activations: o.activations } : {}),
          ...(o.cacheDtype ? { cacheDtype: o.cacheDtype } : {}),
        });
      } finally {
        await ckpt.close();
      }
      const decoder = await loadBsqDecoder(this.gpu, o.vae);
      if (o.textEncoder) {
        text = await T5PromptEncoder.load(this.gpu, o.textEncoder, { ...(o.tokenizer ? { tokenizer: o.tokenizer } : {}), onWarning: (m) => this.warn(m) });
        if (text.width !== model.config.textWidth) {
          throw new Error(`${o.textEncoder}: the text encoder gives ${text.width}-wide features but the model expects ${model.config.textWidth} (Infinity uses Flan-T5-XL, 2048)`);
        }
      }
      this.replace({ family: 'infinity', model, decoder, text, info: infoOf('infinity', model, decoder, text), owned: [] });
      return this.pipeline!.info;
    } catch (err) {
      text?.dispose();
      model?.dispose();
      throw err;
    }
  }

  /** Loads the built-in random-weight demo model (no files). */
  async loadDemo(seed?: number): Promise<ModelInfo> {
    this.assertAlive();
    const model = await loadDemoInfinity(this.gpu, seed);
    const { decoder, weights } = demoDecoder(this.gpu, seed);
    const text = new DemoPromptEncoder(seed);
    this.replace({ family: 'infinity', model, decoder, text, info: infoOf('demo', model, decoder, text), owned: weights });
    return this.pipeline!.info;
  }

  /**
   * Takes an Infinity pipeline whose parts the caller loaded (in-memory or synthetic weights, its own load
   * options): checked as a set — same GPU, decoder code channels = the model's VAE channels, text width —
   * then owned by the engine, which frees them on unload(), the next load or dispose(). When a check throws,
   * nothing is taken: the parts stay the caller's.
   */
  loadParts(parts: InfinityParts): ModelInfo {
    this.assertAlive();
    const { model, decoder } = parts;
    const text = parts.text ?? null;
    const c = model.config;
    if (model.gpu !== this.gpu) throw new Error("loadParts: the model was loaded on another Gpu than this engine's (load it on engine.gpu)");
    if (decoder.gpu !== this.gpu) throw new Error("loadParts: the decoder was built on another Gpu than this engine's (build it on engine.gpu)");
    if (decoder.config.codeChannels !== c.vaeChannels) {
      throw new Error(
        `loadParts: the decoder takes ${decoder.config.codeChannels} code channels but the model's latent has ${c.vaeChannels} ` +
          `(${c.bitsPerToken} bits per token${c.patch > 1 ? `, ${c.patch}×${c.patch} patchify` : ''})`,
      );
    }
    if (text && text.width !== c.textWidth) throw new Error(`loadParts: the text encoder "${text.name}" gives ${text.width}-wide features but the model expects ${c.textWidth}`);
    const name = parts.name ?? 'infinity';
    this.replace({ family: 'infinity', model, decoder, text, info: infoOf(name, model, decoder, text), owned: [] });
    return this.pipeline!.info;
  }

  /** Loads STAR (transformer + VQ-VAE, checked as a pair) and optionally its CLIP text encoder. */
  async loadStar(o: LoadStarOptions): Promise<ModelInfo> {
    this.assertAlive();
    const p = await loadStarPipeline(this.gpu, o, (m) => this.warn(m));
    const c = p.model.config;
    const info: ModelInfo = {
      family: 'star',
      name: 'star',
      depth: c.depth,
      width: c.width,
      heads: c.heads,
      chunks: c.depth,
      ffnHidden: c.ffnWidth,
      bitsPerToken: 0,
      vocab: c.vocab,
      textWidth: c.textWidth,
      textMaxLen: 77,
      levels: c.levels,
      vaeChannels: p.vq.config.codeDim,
      vaeStride: p.vq.config.stride,
      textEncoder: p.text?.name ?? null,
    };
    this.replace({ ...p, info });
    return info;
  }

  /** Loads the pipeline the weights describe: Infinity (T5 text encoder) or STAR (CLIP text encoder). */
  async load(o: LoadInfinityOptions): Promise<ModelInfo> {
    const family = await detectFamily(o.model);
    return family === 'star' ? this.loadStar(o) : this.loadInfinity(o);
  }

  /** One generation at a time per engine: they share the GPU's command stream and the loaded model. */
  async generate(o: GenerateOptions): Promise<GenerateResult> {
    this.assertAlive();
    if (this.running) throw new Error('a generation is already running on this engine: await it first');
    this.running = true;
    try {
      return await this.run(o);
    } finally {
      this.running = false;
    }
  }

  private async run(o: GenerateOptions): Promise<GenerateResult> {
    const p = this.pipeline;
    if (!p) throw new Error('no model loaded: call load() (or loadDemo()) first');
    if (p.family === 'star') return this.runStar(p, o);
    const gpu = this.gpu;
    const { config } = p.model;
    const progress = (info: ProgressInfo) => {
      o.onProgress?.(info);
      this.dispatchEvent(new GenerationProgressEvent(info));
    };

    // Everything that can be checked without the GPU, first.
    const shape = resolveShape(o.size ?? 1024, o.ratio ?? 1);
    const note = templateNote(shape);
    if (note) this.warn(note);
    checkLevels(o.size ?? 1024, shape.schedule.length, config.levels);
    const topP = o.topP ?? 0.97;
    const topK = o.topK ?? 0;
    checkTopP(topP);
    checkTopK(topK);
    // Infinity-8B (2×2 patchify) samples at τ 1 officially, 2B at 0.5; both at cfg 3.
    let plans = vanillaPlan(shape.schedule, { cfg: o.cfg ?? 3, tau: o.tau ?? (config.patch === 2 ? 1 : 0.5) });
    if (o.plan) {
      plans = o.plan(plans.map((x) => ({ ...x })));
      validatePlans(plans, shape.schedule);
    }
    const guidance = needsGuidance(plans);
    const prompts = o.prompt === undefined ? null : typeof o.prompt === 'string' ? [o.prompt] : [...o.prompt];
    if (prompts && o.textFeatures) throw new Error('give prompts or text features, not both');
    if (!prompts && !o.textFeatures) throw new Error('nothing to generate from: give a prompt (with a text encoder loaded) or text features');
    if (prompts && !p.text) throw new Error('prompts need a text encoder: load one (textEncoder) or pass textFeatures');
    if (prompts?.length === 0) throw new Error('the prompt list is empty');
    if (o.negativePrompt !== undefined && o.negativeFeatures) throw new Error('give a negative prompt or negative features, not both');
    if (o.negativePrompt !== undefined && !p.text) throw new Error('a negative prompt needs a text encoder: load one or pass negativeFeatures');
    const promptCount = prompts?.length ?? o.textFeatures!.lens.length;
    const { batch, seeds } = resolveBatch(promptCount, o.batch, o.seed);
    const hasNegative = o.negativePrompt !== undefined || o.negativeFeatures !== undefined;
    if (hasNegative && !guidance) this.warn('the negative prompt is ignored: guidance is off (cfg 1 on every scale)');

    gpu.pool.resetPeak();
    const start = now();
    // Text: encode each distinct prompt once, then one packed entry per image.
    const promptFeatures = prompts ? await p.text!.encode(prompts) : o.textFeatures!;
    const negative = !guidance || !hasNegative ? null : o.negativeFeatures ?? (await p.text!.encode([o.negativePrompt!]));
    checkFeatures('text features', promptFeatures, config.textWidth, config.textMaxLen);
    if (negative) {
      checkFeatures('negative features', negative, config.textWidth, config.textMaxLen);
      if (negative.lens.length !== 1 && negative.lens.length !== promptCount) {
        throw new Error(`${negative.lens.length} negative prompts for ${promptCount} prompts (give one, or one per prompt)`);
      }
    }
    const promptOfImage = Array.from({ length: batch }, (_, i) => (promptCount === 1 ? 0 : i));
    const perImage = selectPrompts(promptFeatures, promptOfImage);
    const negImage = negative ? selectPrompts(negative, promptOfImage.map((q) => (negative.lens.length === 1 ? 0 : q))) : null;
    const textMs = now() - start;
    progress({ phase: 'text', ms: textMs, prompts: promptCount });

    const loopStart = now();
    const loop = await runNextScaleLoop(gpu, {
      model: p.model,
      text: { features: perImage.features, lens: perImage.lens, ...(negImage ? { negative: { features: negImage.features, lens: negImage.lens } } : {}) },
      schedule: shape.schedule,
      template: shape.template,
      plans,
      seeds,
      topK,
      topP,
      ...(o.signal ? { signal: o.signal } : {}),
      ...(o.keepBits ? { keepBits: true } : {}),
      onScale: (stats) => progress({ phase: 'scale', scales: plans.length, stats }),
      ...(o.onScaleImages ? { onLatent: async (scale: number, latent: Tensor) => o.onScaleImages!(scale, await this.decode(p.decoder, latent)) } : {}),
    });
    try {
      const transformerMs = now() - loopStart - loop.traceMs;
      o.signal?.throwIfAborted();
      const d0 = now();
      const images = await this.decode(p.decoder, loop.latent.latent);
      const decodeMs = now() - d0;
      progress({ phase: 'decode', ms: decodeMs, images: images.length });
      const stats: GenerationStats = {
        textMs,
        conditioningMs: loop.conditioningMs,
        scales: loop.stats,
        transformerMs,
        decodeMs,
        totalMs: now() - start,
        peakBytes: gpu.stats().peakBytes,
      };
      const result: GenerateResult = { images, seeds, textLens: perImage.lens, template: shape.template, resolution: shape.resolution, schedule: shape.schedule, plans, stats };
      if (loop.bits) result.bits = loop.bits;
      return result;
    } finally {
      loop.latent.dispose();
    }
  }

  private async runStar(p: StarPipeline, o: GenerateOptions): Promise<GenerateResult> {
    const progress = (info: ProgressInfo) => {
      o.onProgress?.(info);
      this.dispatchEvent(new GenerationProgressEvent(info));
    };
    const prompts = o.prompt === undefined ? null : typeof o.prompt === 'string' ? [o.prompt] : [...o.prompt];
    if (prompts && o.textFeatures) throw new Error('give prompts or text features, not both');
    if (prompts?.length === 0) throw new Error('the prompt list is empty');
    if (o.negativePrompt !== undefined && o.negativeFeatures) throw new Error('give a negative prompt or negative features, not both');
    const promptCount = prompts?.length ?? o.textFeatures?.lens.length ?? 1;
    const { batch, seeds } = resolveBatch(promptCount, o.batch, o.seed);
    this.gpu.pool.resetPeak();
    const start = now();
    const r = await runStar(this.gpu, p, {
      prompts,
      ...(o.textFeatures ? { textFeatures: o.textFeatures } : {}),
      ...(o.negativePrompt !== undefined ? { negativePrompt: o.negativePrompt } : {}),
      ...(o.negativeFeatures ? { negativeFeatures: o.negativeFeatures } : {}),
      batch,
      seeds,
      ...(o.cfg !== undefined ? { cfg: o.cfg } : {}),
      ...(o.tau !== undefined ? { tau: o.tau } : {}),
      ...(o.topK !== undefined ? { topK: o.topK } : {}),
      ...(o.topP !== undefined ? { topP: o.topP } : {}),
      ...(o.size !== undefined ? { size: o.size } : {}),
      ...(o.ratio !== undefined ? { ratio: o.ratio } : {}),
      ...(o.patchNums ? { patchNums: o.patchNums } : {}),
      ...(o.plan ? { plan: o.plan } : {}),
      ...(o.signal ? { signal: o.signal } : {}),
      ...(o.keepBits ? { keepTokens: true } : {}),
      ...(o.onScaleImages ? { onScaleImages: o.onScaleImages } : {}),
      onText: (ms, n) => progress({ phase: 'text', ms, prompts: n }),
      onScale: (stats, scales) => progress({ phase: 'scale', scales, stats }),
      onDecode: (ms, images) => progress({ phase: 'decode', ms, images }),
    });
    const stats: GenerationStats = {
      textMs: r.textMs,
      conditioningMs: r.conditioningMs,
      scales: r.scales,
      transformerMs: r.transformerMs,
      decodeMs: r.decodeMs,
      totalMs: now() - start,
      peakBytes: this.gpu.stats().peakBytes,
    };
    const result: GenerateResult = { images: r.images, seeds, textLens: r.textLens, template: 1, resolution: r.resolution, schedule: r.schedule, plans: r.plans, stats };
    if (r.tokens) result.tokens = r.tokens;
    return result;
  }

  /** Decodes a latent [B, d, h, w] to RGB images. */
  private async decode(decoder: BsqDecoder, latent: Tensor): Promise<RgbImage[]> {
    const image = decoder.decode(latent);
    try {
      const data = await image.readF32();
      return Array.from({ length: image.shape[0] }, (_, b) => rgbFromPlanar(data, image.shape, b));
    } finally {
      image.dispose();
    }
  }

  private warn(message: string): void {
    this.dispatchEvent(new WarningEvent(message));
  }

  private replace(next: Pipeline): void {
    if (this.running) throw new Error('cannot load a model while a generation is running');
    this.release();
    this.pipeline = next;
  }

  /** Frees the loaded pipeline (the engine stays usable). */
  unload(): void {
    if (this.running) throw new Error('cannot unload the model while a generation is running');
    this.release();
  }

  private release(): void {
    const p = this.pipeline;
    this.pipeline = null;
    if (!p) return;
    p.text?.dispose();
    p.model.dispose();
    if (p.family === 'star') p.vq.dispose();
    else {
      // The decoder frees its weights and cached slices (Tensor.dispose is idempotent: `owned` may list them too).
      p.decoder.dispose();
      for (const t of p.owned) t.dispose();
    }
  }

  /** Frees everything; the GPU too when the engine created it. */
  dispose(): void {
    if (this.disposed) return;
    this.release();
    this.disposed = true;
    if (this.ownsGpu) this.gpu.destroy();
  }

  private assertAlive(): void {
    if (this.disposed) throw new Error('the engine was disposed');
  }
}

async function withOpen<T>(path: string, use: (ckpt: Checkpoint) => T): Promise<T> {
  const ckpt = await Checkpoint.open(path);
  try {
    return use(ckpt);
  } finally {
    await ckpt.close();
  }
}

/**
 * The family of a transformer checkpoint, from its tensors: 'star' for a STAR transformer, else 'infinity'
 * (anything else — a VAE, a text encoder, not weights at all — is then named by Infinity's own checks).
 */
export async function detectFamily(path: string): Promise<'infinity' | 'star'> {
  await mustExist(path, 'model file');
  const kind = await withOpen(path, (ckpt) => detectArchitecture(ckpt.tensors()).kind).catch(() => 'unknown');
  return kind === 'star' ? 'star' : 'infinity';
}

function infoOf(name: string, model: InfinityModel, decoder: BsqDecoder, text: PromptEncoder | null): ModelInfo {
  const c = model.config;
  return {
    family: 'infinity',
    name,
    depth: c.depth,
    width: c.width,
    heads: c.heads,
    chunks: c.chunks,
    ffnHidden: c.ffnHidden,
    bitsPerToken: c.bitsPerToken,
    vocab: 0,
    textWidth: c.textWidth,
    textMaxLen: c.textMaxLen,
    levels: c.levels,
    vaeChannels: decoder.config.codeChannels,
    vaeStride: decoder.config.stride,
    textEncoder: text?.name ?? null,
  };
}
