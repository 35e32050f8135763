// One view over every way weights arrive: a .safetensors file, a sharded Hugging Face checkpoint
// (`*.safetensors.index.json`), a folder holding one of those, or a PyTorch zip checkpoint (.pth, .pt,
// .bin). Model code asks for tensors by name and gets dtype, shape and bounded chunks of bytes,
// without caring where they live.

import { open, readFile, readdir, stat } from 'node:fs/promises';
import { basename, dirname, isAbsolute, join, normalize, resolve, sep } from 'node:path';
import { bytesToF32, type Dtype } from './dtype_convert.js';
import { WeightsError, formatShape } from './errors.js';
import { PthFile, type PthChunkOptions } from './pth.js';
import {
  allocateTensorBuffer,
  openSafetensors,
  type ChunkHandler,
  type SafetensorsFile,
  type TensorChunk,
  type TensorInfo,
} from './safetensors.js';

export interface CheckpointTensor extends TensorInfo {
  /** The file that holds the tensor. */
  file: string;
  /** The tensor's name inside that file (differs from `name` when `key` stripped a prefix). */
  sourceName: string;
}

export interface OpenCheckpointOptions {
  /**
   * Take only the sub-dictionary at this dotted path, e.g. `vae` or `trainer.var_wo_ddp`; names lose
   * the `key.` prefix. An error lists the available top-level keys when nothing matches.
   */
  key?: string;
  /** Keep only names (after `key`) that start with one of these prefixes. */
  only?: readonly string[];
}

export type CheckpointFormat = 'safetensors' | 'sharded-safetensors' | 'pth';

interface Source {
  info: CheckpointTensor;
  chunks(options: PthChunkOptions): AsyncGenerator<TensorChunk>;
}

const WEIGHT_FILE = /\.(safetensors|pth|pt|bin|ckpt)$/i;
const INDEX_FILE = /\.safetensors\.index\.json$/i;
/** A text file this short that names another weight file is a symbolic link checked out as text. */
const MAX_LINK_PLACEHOLDER_BYTES = 1024;

export class Checkpoint {
  private constructor(
    /** The path that was opened (file, index or folder). */
    readonly path: string,
    readonly format: CheckpointFormat,
    /** Every file opened to serve this checkpoint. */
    readonly files: readonly string[],
    private readonly sources: ReadonlyMap<string, Source>,
    private readonly closers: ReadonlyArray<() => Promise<void>>,
  ) {}

  /** Opens a file, an index json or a folder; only headers (and a .pth's pickle) are read now. */
  static async open(path: string, options: OpenCheckpointOptions = {}): Promise<Checkpoint> {
    const target = await resolveWeightPath(path);
    if (INDEX_FILE.test(target)) return openSharded(path, target, options);
    if (await isPytorchFile(target)) return openPth(path, target, options);
    return openSingleSafetensors(path, target, options);
  }

  /** @internal Used by the open functions below. */
  static assemble(
    path: string,
    format: CheckpointFormat,
    files: string[],
    sources: Map<string, Source>,
    closers: Array<() => Promise<void>>,
  ): Checkpoint {
    return new Checkpoint(path, format, files, sources, closers);
  }

  /** Names in file order (shards in index order). */
  names(): string[] {
    return [...this.sources.keys()];
  }

  has(name: string): boolean {
    return this.sources.has(name);
  }

  get size(): number {
    return this.sources.size;
  }

  /** Dtype, shape, byte length and origin of a tensor; throws naming the key when it is missing. */
  info(name: string): CheckpointTensor {
    return this.source(name).info;
  }

  tensors(): CheckpointTensor[] {
    return [...this.sources.values()].map((s) => s.info);
  }

  /** Throws a clear error when the tensor is missing or has another shape. */
  expectShape(name: string, shape: readonly number[]): CheckpointTensor {
    const info = this.info(name);
    if (info.shape.length !== shape.length || info.shape.some((d, i) => d !== shape[i])) {
      throw new WeightsError(`has shape ${formatShape(info.shape)} but ${formatShape(shape)} was expected`, {
        code: 'shape-mismatch',
        file: info.file,
        tensor: name,
      });
    }
    return info;
  }

  /**
   * The tensor's bytes, contiguous and row-major, as chunks of at most `chunkBytes` (default 16 MiB,
   * whole elements), in order, each with its byte offset in the tensor. With the default
   * `reuseBuffer`, a chunk is valid until the consumer asks for the next one.
   */
  tensorChunks(name: string, options: PthChunkOptions = {}): AsyncGenerator<TensorChunk> {
    return this.source(name).chunks(options);
  }

  async readTensor(name: string, onChunk: ChunkHandler, options: PthChunkOptions = {}): Promise<void> {
    for await (const chunk of this.tensorChunks(name, options)) await onChunk(chunk.bytes, chunk.offset);
  }

  /** The whole tensor in one new buffer. */
  async readTensorBytes(name: string): Promise<Uint8Array> {
    const info = this.info(name);
    const bytes = allocateTensorBuffer(info.byteLength, { file: info.file, tensor: name });
    for await (const chunk of this.tensorChunks(name)) bytes.set(chunk.bytes, chunk.offset);
    return bytes;
  }

  /**
   * A (small) tensor widened to f32 on the CPU: norms, biases, embeddings tables for lookups.
   * With `expectedShape`, a tensor of another shape is an error naming both shapes.
   */
  async getTensorF32(name: string, expectedShape?: readonly number[]): Promise<Float32Array> {
    const info = expectedShape ? this.expectShape(name, expectedShape) : this.info(name);
    return bytesToF32(info.dtype, await this.readTensorBytes(name));
  }

  /** Tensor count, bytes and a per-dtype breakdown. */
  summary(): CheckpointSummary {
    const dtypes: Partial<Record<Dtype, { tensors: number; bytes: number }>> = {};
    let bytes = 0;
    for (const { info } of this.sources.values()) {
      const slot = (dtypes[info.dtype] ??= { tensors: 0, bytes: 0 });
      slot.tensors++;
      slot.bytes += info.byteLength;
      bytes += info.byteLength;
    }
    return { tensors: this.sources.size, bytes, dtypes };
  }

  async close(): Promise<void> {
    await Promise.all(this.closers.map((close) => close()));
  }

  private source(name: string): Source {
    const found = this.sources.get(name);
    if (!found) {
      throw new WeightsError(`not in this checkpoint (${this.sources.size} tensors)`, {
        code: 'missing-tensor',
        file: this.path,
        tensor: name,
      });
    }
    return found;
  }
}

export interface CheckpointSummary {
  tensors: number;
  bytes: number;
  dtypes: Partial<Record<Dtype, { tensors: number; bytes: number }>>;
}

/** Opens, calls `use`, and closes even when `use` throws. */
export async function withCheckpoint<T>(
  path: string,
  options: OpenCheckpointOptions,
  use: (checkpoint: Checkpoint) => Promise<T>,
): Promise<T> {
  const checkpoint = await Checkpoint.open(path, options);
  try {
    return await use(checkpoint);
  } finally {
    await checkpoint.close();
  }
}

// ---------------------------------------------------------------- locating files

/**
 * The file to open for `path`: the file itself, or in a folder its index json or its only weight
 * file. A tiny text file naming another weight file (a symbolic link checked out without link
 * support, as in the stagevar-tiny fixture) is followed.
 */
export async function resolveWeightPath(path: string): Promise<string> {
  let info;
  try {
    info = await stat(path);
  } catch (cause) {
    throw new WeightsError(`cannot open: ${(cause as Error).message}`, { code: 'io', file: path, cause });
  }
  if (info.isDirectory()) return pickFromFolder(path);
  if (info.size <= MAX_LINK_PLACEHOLDER_BYTES && !INDEX_FILE.test(path)) {
    const target = await linkPlaceholderTarget(path);
    if (target) return resolveWeightPath(target);
  }
  return path;
}

async function linkPlaceholderTarget(path: string): Promise<string | undefined> {
  const text = (await readFile(path)).toString('utf8').trim();
  if (!WEIGHT_FILE.test(text) || text.includes('\n') || text.includes('\0')) return undefined;
  const target = isAbsolute(text) ? text : join(dirname(path), text);
  try {
    return (await stat(target)).isFile() ? target : undefined;
  } catch {
    return undefined;
  }
}

async function pickFromFolder(folder: string): Promise<string> {
  const names = (await readdir(folder)).sort();
  const indexes = names.filter((n) => INDEX_FILE.test(n));
  if (indexes.length === 1) return join(folder, indexes[0]!);
  if (indexes.length > 1) {
    throw new WeightsError(`folder holds several index files (${indexes.join(', ')}); open one of them`, {
      code: 'bad-argument',
      file: folder,
    });
  }
  const weights = names.filter((n) => WEIGHT_FILE.test(n));
  if (weights.length === 1) return join(folder, weights[0]!);
  if (weights.length === 0) {
    throw new WeightsError('folder holds no weight file (.safetensors, .safetensors.index.json, .pth, .pt, .bin)', {
      code: 'missing-tensor',
      file: folder,
    });
  }
  throw new WeightsError(`folder holds several weight files (${weights.join(', ')}); open one of them`, {
    code: 'bad-argument',
    file: folder,
  });
}

/**
 * The weight sets of a folder, for `inspect`: its index, else each weight file, plus the same one
 * level down (a Hugging Face pipeline folder keeps `text_encoder/`, `vae/`, … as sub-folders).
 */
export async function listWeightSets(folder: string): Promise<string[]> {
  const names = (await readdir(folder, { withFileTypes: true })).sort((a, b) => a.name.localeCompare(b.name));
  const indexes = names.filter((e) => e.isFile() && INDEX_FILE.test(e.name)).map((e) => join(folder, e.name));
  const found = indexes.length > 0 ? indexes : names.filter((e) => !e.isDirectory() && WEIGHT_FILE.test(e.name)).map((e) => join(folder, e.name));
  for (const sub of names.filter((e) => e.isDirectory())) {
    const inner = await readdir(join(folder, sub.name));
    if (inner.some((n) => WEIGHT_FILE.test(n) || INDEX_FILE.test(n))) {
      try {
        found.push(await pickFromFolder(join(folder, sub.name)));
      } catch {
        // Several files in a sub-folder: list each.
        for (const n of inner.sort()) if (WEIGHT_FILE.test(n)) found.push(join(folder, sub.name, n));
      }
    }
  }
  return found;
}

/**
 * Which reader a file needs, from its first bytes: a zip ("PK\3\4") or a legacy torch pickle is
 * PyTorch's; a JSON header after the 8-byte length is safetensors; otherwise the extension decides
 * (so that the matching reader reports what is wrong).
 */
async function isPytorchFile(path: string): Promise<boolean> {
  const handle = await open(path, 'r').catch((cause: unknown) => {
    throw new WeightsError(`cannot open: ${(cause as Error).message}`, { code: 'io', file: path, cause });
  });
  try {
    const { size } = await handle.stat();
    const head = new Uint8Array(Math.min(9, size));
    const { bytesRead } = await handle.read(head, 0, head.byteLength, 0);
    if (bytesRead >= 4 && head[0] === 0x50 && head[1] === 0x4b && head[2] === 0x03 && head[3] === 0x04) return true;
    if (bytesRead >= 4 && head[0] === 0x80 && head[1] === 0x02 && head[2] === 0x8a && head[3] === 0x0a) return true;
    if (bytesRead === 9 && head[8] === 0x7b) return false;
    return !/\.safetensors$/i.test(path);
  } finally {
    await handle.close();
  }
}

// ---------------------------------------------------------------- name selection

/** Applies `key` (prefix removal) and `only` (prefix filter) to source names. */
function selectNames(names: readonly string[], options: OpenCheckpointOptions, file: string): Array<[string, string]> {
  let selected: Array<[string, string]> = names.map((n) => [n, n]);
  const key = options.key?.replace(/\.$/, '');
  if (key) {
    const prefix = `${key}.`;
    selected = selected.filter(([, n]) => n.startsWith(prefix)).map(([source, n]) => [source, n.slice(prefix.length)]);
    if (selected.length === 0) {
      const tops = [...new Set(names.map((n) => n.split('.')[0]!))].slice(0, 20);
      throw new WeightsError(`no tensors under key "${key}"; top-level keys: ${tops.join(', ') || '(none)'}`, {
        code: 'missing-tensor',
        file,
      });
    }
  }
  const only = options.only?.filter((p) => p.length > 0);
  if (only && only.length > 0) selected = selected.filter(([, n]) => only.some((p) => n.startsWith(p)));
  return selected;
}

// ---------------------------------------------------------------- the three formats

function safetensorsSource(file: SafetensorsFile, sourceName: string, name: string): Source {
  const entry = file.entry(sourceName);
  return {
    info: { name, dtype: entry.dtype, shape: entry.shape, byteLength: entry.byteLength, file: file.path, sourceName },
    chunks: (options) => file.tensorChunks(sourceName, options),
  };
}

async function openSingleSafetensors(path: string, target: string, options: OpenCheckpointOptions): Promise<Checkpoint> {
  const file = await openSafetensors(target);
  try {
    const sources = new Map<string, Source>();
    for (const [sourceName, name] of selectNames(file.names(), options, target)) {
      sources.set(name, safetensorsSource(file, sourceName, name));
    }
    return Checkpoint.assemble(path, 'safetensors', [target], sources, [() => file.close()]);
  } catch (err) {
    await file.close();
    throw err;
  }
}

async function openPth(path: string, target: string, options: OpenCheckpointOptions): Promise<Checkpoint> {
  const file = await PthFile.open(target);
  try {
    const sources = new Map<string, Source>();
    for (const [sourceName, name] of selectNames(file.names(), options, target)) {
      const t = file.tensor(sourceName);
      sources.set(name, {
        info: { name, dtype: t.dtype, shape: t.shape, byteLength: t.byteLength, file: target, sourceName },
        chunks: (chunkOptions) => file.tensorChunks(sourceName, chunkOptions),
      });
    }
    return Checkpoint.assemble(path, 'pth', [target], sources, [() => file.close()]);
  } catch (err) {
    await file.close();
    throw err;
  }
}

/** Parses `{"metadata": {...}, "weight_map": {tensor: shard file}}`, refusing paths that leave the folder. */
export async function readShardIndex(indexPath: string): Promise<Map<string, string>> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(await readFile(indexPath, 'utf8'));
  } catch (cause) {
    throw new WeightsError(`index is not readable JSON: ${(cause as Error).message}`, { code: 'bad-header', file: indexPath, cause });
  }
  const weightMap = (parsed as { weight_map?: unknown } | null)?.weight_map;
  if (typeof weightMap !== 'object' || weightMap === null || Array.isArray(weightMap)) {
    throw new WeightsError('index has no "weight_map" object', { code: 'bad-header', file: indexPath });
  }
  const folder = dirname(indexPath);
  const map = new Map<string, string>();
  for (const [tensor, shard] of Object.entries(weightMap)) {
    const local = typeof shard === 'string' ? normalize(shard) : '';
    if (!local || isAbsolute(local) || local === '..' || local.startsWith(`..${sep}`)) {
      throw new WeightsError(`weight_map names an invalid shard ${JSON.stringify(shard)}`, {
        code: 'bad-header',
        file: indexPath,
        tensor,
      });
    }
    map.set(tensor, resolve(folder, local));
  }
  return map;
}

async function openSharded(path: string, indexPath: string, options: OpenCheckpointOptions): Promise<Checkpoint> {
  const weightMap = await readShardIndex(indexPath);
  const shards = new Map<string, SafetensorsFile>();
  const closeAll = async (): Promise<void> => {
    await Promise.all([...shards.values()].map((s) => s.close()));
  };
  try {
    for (const shardPath of new Set(weightMap.values())) shards.set(shardPath, await openSafetensors(shardPath));
    const sources = new Map<string, Source>();
    for (const [sourceName, name] of selectNames([...weightMap.keys()], options, indexPath)) {
      const shard = shards.get(weightMap.get(sourceName)!)!;
      if (!shard.has(sourceName)) {
        throw new WeightsError(`listed in the index but missing from shard ${basename(shard.path)}`, {
          code: 'missing-tensor',
          file: indexPath,
          tensor: sourceName,
        });
      }
      sources.set(name, safetensorsSource(shard, sourceName, name));
    }
    return Checkpoint.assemble(path, 'sharded-safetensors', [indexPath, ...shards.keys()], sources, [closeAll]);
  } catch (err) {
    await closeAll();
    throw err;
  }
}
