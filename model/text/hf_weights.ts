// What both text encoders need from a Hugging Face model folder: its config.json, its weights (one
// safetensors file or a sharded index), tensors checked against the shapes inferred from the other tensors,
// and layer counts read from names. Every failure names the file or the tensor (and both shapes).

import { access, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Gpu } from '../../engine/device.js';
import type { Tensor } from '../../engine/tensor.js';
import { Checkpoint } from '../weights/checkpoint.js';
import { WeightsError, formatShape } from '../weights/errors.js';
import { type GpuFloat, loadTensorToGpu, readTensorF32 } from '../weights/gpu_load.js';

export type JsonConfig = Record<string, unknown>;

async function exists(path: string): Promise<boolean> {
  try {
    await access(path);
    return true;
  } catch {
    return false;
  }
}

/** Parses a config.json; a missing or unreadable file is an error naming it. */
export async function readConfig(path: string): Promise<JsonConfig> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (cause) {
    throw new WeightsError(`cannot read the model config: ${(cause as Error).message}`, { code: 'io', file: path, cause });
  }
  try {
    const parsed: unknown = JSON.parse(text);
    if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw new Error('not a JSON object');
    return parsed as JsonConfig;
  } catch (cause) {
    throw new WeightsError(`model config is not a JSON object: ${(cause as Error).message}`, { code: 'bad-header', file: path, cause });
  }
}

/** A number from the config, or the default when absent; a present non-number is an error. */
export function configNumber(config: JsonConfig, file: string, key: string, fallback?: number): number {
  const v = config[key];
  if (v === undefined || v === null) {
    if (fallback !== undefined) return fallback;
    throw new WeightsError(`config has no "${key}"`, { code: 'bad-header', file });
  }
  if (typeof v !== 'number' || !Number.isFinite(v)) throw new WeightsError(`config "${key}" is ${JSON.stringify(v)}, not a number`, { code: 'bad-header', file });
  return v;
}

export function configString(config: JsonConfig, key: string): string | undefined {
  const v = config[key];
  return typeof v === 'string' ? v : undefined;
}

/**
 * Opens the weights of a Hugging Face folder. A folder may also hold pytorch_model*.bin or fp16 variants, so
 * the canonical names come first: model.safetensors.index.json, then model.safetensors, then whatever the
 * folder holds alone. Shards named by the index but absent are reported with their path.
 */
export async function openHfWeights(dir: string, only?: readonly string[]): Promise<Checkpoint> {
  for (const name of ['model.safetensors.index.json', 'model.safetensors']) {
    const path = join(dir, name);
    if (await exists(path)) return Checkpoint.open(path, only ? { only } : {});
  }
  return Checkpoint.open(dir, only ? { only } : {});
}

/** Layer indices under `prefix` (e.g. "encoder.block."), which must run 0..n-1 without gaps. */
export function countLayers(ckpt: Checkpoint, prefix: string): number {
  const seen = new Set<number>();
  for (const name of ckpt.names()) {
    if (!name.startsWith(prefix)) continue;
    const m = /^(\d+)\./.exec(name.slice(prefix.length));
    if (m) seen.add(Number(m[1]));
  }
  const n = seen.size;
  for (let i = 0; i < n; i++) {
    if (!seen.has(i)) {
      throw new WeightsError(`layers under "${prefix}" are not numbered 0..${n - 1}: ${[...seen].sort((a, b) => a - b).join(', ')}`, {
        code: 'missing-tensor',
        file: ckpt.path,
        tensor: `${prefix}${i}`,
      });
    }
  }
  return n;
}

/** The stored shape of a tensor, or an error naming it. */
export function shapeOf(ckpt: Checkpoint, name: string): readonly number[] {
  if (!ckpt.has(name)) {
    throw new WeightsError('missing tensor', { code: 'missing-tensor', file: ckpt.path, tensor: name });
  }
  return ckpt.info(name).shape;
}

/** Throws unless `name` exists with exactly `shape` (the message holds the key and both shapes). */
export function expectShape(ckpt: Checkpoint, name: string, shape: readonly number[]): void {
  if (!ckpt.has(name)) {
    throw new WeightsError(`missing tensor: expected shape ${formatShape(shape)}, found none`, {
      code: 'missing-tensor',
      file: ckpt.path,
      tensor: name,
    });
  }
  const info = ckpt.info(name);
  if (info.shape.length !== shape.length || info.shape.some((d, i) => d !== shape[i])) {
    throw new WeightsError(`shape mismatch: expected ${formatShape(shape)}, file has ${formatShape(info.shape)}`, {
      code: 'shape-mismatch',
      file: info.file,
      tensor: name,
    });
  }
}

/**
 * Loads tensors into persistent GPU tensors and remembers them for `disposeAll`. Every shape is checked
 * before anything is uploaded (`check`), so a bad file fails fast without filling the GPU first.
 */
export class WeightLoader {
  readonly loaded: Tensor[] = [];

  constructor(
    readonly gpu: Gpu,
    readonly ckpt: Checkpoint,
    /** GPU dtype of matrices (linear weights, embedding tables): as stored, or converted. */
    readonly matrixDtype: GpuFloat = 'keep',
  ) {}

  check(name: string, shape: readonly number[]): void {
    expectShape(this.ckpt, name, shape);
  }

  /** A weight matrix (or embedding table) in `matrixDtype`; f64 and other non-GPU floats become f32. */
  async matrix(name: string, shape: readonly number[]): Promise<Tensor> {
    expectShape(this.ckpt, name, shape);
    const stored = this.ckpt.info(name).dtype;
    const gpuNative = stored === 'F32' || stored === 'F16' || stored === 'BF16';
    const dtype = this.matrixDtype === 'keep' && !gpuNative ? 'f32' : this.matrixDtype;
    return this.keep(await loadTensorToGpu(this.gpu, this.ckpt, name, { dtype, expectShape: shape }));
  }

  /** A tensor as f32 whatever its stored dtype (norm weights, biases, position tables: those kernels read f32 only). */
  async f32(name: string, shape: readonly number[]): Promise<Tensor> {
    expectShape(this.ckpt, name, shape);
    return this.keep(await loadTensorToGpu(this.gpu, this.ckpt, name, { dtype: 'f32', expectShape: shape }));
  }

  /** A small tensor read to the host as f32. */
  async host(name: string, shape: readonly number[]): Promise<Float32Array> {
    expectShape(this.ckpt, name, shape);
    return readTensorF32(this.ckpt, name, shape);
  }

  disposeAll(): void {
    for (const t of this.loaded) t.dispose();
    this.loaded.length = 0;
  }

  private keep(t: Tensor): Tensor {
    this.loaded.push(t);
    return t;
  }
}
