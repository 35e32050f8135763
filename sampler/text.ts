// Where the text features of a generation come from: the T5 encoder (tokenizer + model/text/t5_encoder),
// a safetensors file of precomputed features (`--text-features`: any text width, e.g. the fixtures'),
// or the demo's toy encoder. All give packed rows of the real tokens of each prompt plus their lengths,
// Infinity's `kv_compact` + `lens`.

import { access } from 'node:fs/promises';
import type { Gpu } from '../engine/device.js';
import { T5Encoder } from '../model/text/t5_encoder.js';
import { loadTokenizer } from '../model/text/tokenizer.js';
import { openSafetensors } from '../model/weights/safetensors.js';

/** Packed text features: prompt i owns rows [Σ lens[<i], Σ lens[≤i]) of `features` ([Σ lens, width]). */
export interface TextFeatures {
  features: Float32Array;
  lens: number[];
  width: number;
}

export interface PromptEncoder {
  /** Feature width (T5-XL: 2048). */
  readonly width: number;
  readonly name: string;
  encode(prompts: readonly string[]): Promise<TextFeatures>;
  dispose(): void;
}

export interface T5LoadOptions {
  /** Folder of tokenizer.json (default: the encoder's folder, or its tokenizer/ subfolder). */
  tokenizer?: string;
  /** Receives warnings (a prompt cut at 512 tokens). */
  onWarning?: (message: string) => void;
}

/** Flan-T5 as Infinity uses it: tokenize (≤ 512 tokens, EOS included), encode, keep the real tokens. */
export class T5PromptEncoder implements PromptEncoder {
  readonly name = 't5';

  private constructor(
    private readonly encoder: T5Encoder,
    private readonly tokenize: (text: string) => number[],
  ) {}

  static async load(gpu: Gpu, dir: string, options: T5LoadOptions = {}): Promise<T5PromptEncoder> {
    await mustExist(dir, 'text encoder folder');
    const tokenizer = await loadTokenizer(options.tokenizer ?? dir, options.onWarning ? { onWarning: options.onWarning } : {});
    if (tokenizer.kind !== 't5') throw new Error(`${options.tokenizer ?? dir}: found a ${tokenizer.kind} tokenizer; Infinity needs T5's tokenizer.json`);
    const encoder = await T5Encoder.load(gpu, dir);
    return new T5PromptEncoder(encoder, (text) => tokenizer.encode(text).ids);
  }

  get width(): number {
    return this.encoder.config.width;
  }

  async encode(prompts: readonly string[]): Promise<TextFeatures> {
    const ids = prompts.map((p) => this.tokenize(p));
    const out = this.encoder.encode(ids);
    try {
      return { features: await out.hidden.readF32(), lens: out.lens, width: this.width };
    } finally {
      out.hidden.dispose();
    }
  }

  dispose(): void {
    this.encoder.dispose();
  }
}

/** Packed features plus, for STAR, each prompt's pooled vector [prompts, width] when the file has it. */
export type PooledFeatures = TextFeatures & { pooled?: Float32Array };

export interface FeaturesFile {
  prompts: PooledFeatures;
  /** Features of negative prompts (keys `negative`, `negative_lens`, `negative_pooled`), when the file has them. */
  negative?: PooledFeatures;
}

/**
 * Reads `--text-features`: a safetensors file with `features` (L, C) (float) and optionally `lens` (B,)
 * (integers summing to L; default one prompt of L tokens), and optionally `negative` / `negative_lens`.
 * STAR also reads `pooled` (B, C') / `negative_pooled` when present (default: each prompt's last row, its EOS).
 */
export async function readFeaturesFile(path: string): Promise<FeaturesFile> {
  await mustExist(path, 'text features file');
  const file = await openSafetensors(path);
  try {
    if (!file.has('features')) {
      const names = file.names();
      const held = names.length === 0 ? 'nothing' : `${names.slice(0, 4).join(', ')}${names.length > 4 ? `, … (${names.length} tensors)` : ''}`;
      throw new Error(`${path}: no tensor "features" (the file holds ${held}); expected features (L, C) and optionally lens (B,)`);
    }
    const prompts = await readPooled(file, path, await readPacked(file, path, 'features', 'lens'), 'pooled');
    const negative = file.has('negative') ? await readPooled(file, path, await readPacked(file, path, 'negative', 'negative_lens'), 'negative_pooled') : undefined;
    if (negative && negative.width !== prompts.width) throw new Error(`${path}: negative is ${negative.width} wide but features are ${prompts.width}`);
    return negative ? { prompts, negative } : { prompts };
  } finally {
    await file.close();
  }
}

type Safetensors = Awaited<ReturnType<typeof openSafetensors>>;

async function readPooled(file: Safetensors, path: string, f: TextFeatures, key: string): Promise<PooledFeatures> {
  if (!file.has(key)) return f;
  const shape = file.entry(key).shape;
  if (shape.length !== 2 || shape[0] !== f.lens.length) throw new Error(`${path}: "${key}" must be (${f.lens.length}, C): one pooled vector per prompt, got [${shape.join(', ')}]`);
  return { ...f, pooled: await file.readTensorF32(key) };
}
const INTEGER_DTYPES = new Set<string>(['I64', 'I32', 'I16', 'I8', 'U64', 'U32', 'U16', 'U8']);

async function readPacked(file: Safetensors, path: string, key: string, lensKey: string): Promise<TextFeatures> {
  const shape = file.entry(key).shape;
  if (shape.length !== 2 || shape[0] < 1 || shape[1] < 1) throw new Error(`${path}: "${key}" must be a 2-D (L, C) tensor, got [${shape.join(', ')}]`);
  const [L, width] = shape;
  const features = await file.readTensorF32(key);
  let lens = [L];
  if (file.has(lensKey)) {
    const dtype = file.entry(lensKey).dtype;
    if (!INTEGER_DTYPES.has(dtype)) throw new Error(`${path}: "${lensKey}" must hold integers (I32 or I64), not ${dtype}`);
    lens = Array.from(await file.readTensorToArray(lensKey) as ArrayLike<number | bigint>, Number);
    if (lens.length === 0 || lens.some((l) => !Number.isInteger(l) || l < 1) || lens.reduce((a, b) => a + b, 0) !== L) {
      throw new Error(`${path}: "${lensKey}" [${lens.join(', ')}] must be positive lengths summing to the ${L} rows of "${key}"`);
    }
  }
  for (let i = 0; i < features.length; i++) {
    if (!Number.isFinite(features[i])) throw new Error(`${path}: "${key}" holds a non-finite value at element ${i}`);
  }
  return { features, lens, width };
}

/** Prompt i of packed features as its own TextFeatures. */
export function promptOf(f: TextFeatures, i: number): TextFeatures {
  let start = 0;
  for (let k = 0; k < i; k++) start += f.lens[k];
  return { features: f.features.slice(start * f.width, (start + f.lens[i]) * f.width), lens: [f.lens[i]], width: f.width };
}

/** Packs the features of prompts `which[0], which[1], …` (indices into f) one after the other. */
export function selectPrompts(f: TextFeatures, which: readonly number[]): TextFeatures {
  const parts = which.map((i) => {
    if (!Number.isInteger(i) || i < 0 || i >= f.lens.length) throw new RangeError(`prompt ${i} of ${f.lens.length}`);
    return promptOf(f, i);
  });
  const total = parts.reduce((n, p) => n + p.features.length, 0);
  const features = new Float32Array(total);
  let at = 0;
  for (const p of parts) {
    features.set(p.features, at);
    at += p.features.length;
  }
  return { features, lens: parts.map((p) => p.lens[0]), width: f.width };
}

export async function mustExist(path: string, what: string): Promise<void> {
  try {
    await access(path);
  } catch {
    throw new Error(`${what} not found: ${path}`);
  }
}
