// safetensors reader that never holds a whole file: it reads the header, validates every entry
// against the file size, and streams each tensor's bytes in bounded chunks with positioned reads.
//
// Layout: u64 little-endian header length N, N bytes of JSON
// `{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__"?: {string: string}}`, then the data;
// offsets are relative to the first data byte (8 + N). Positions are plain numbers: exact up to 2^53,
// far beyond any file we will meet, and every parsed offset is checked to be a safe integer.

import { kMaxLength } from 'node:buffer';
import { open, type FileHandle } from 'node:fs/promises';
import { DTYPE_ITEM_SIZE, bytesToF32, isDtype, type Dtype } from './dtype_convert.js';
import { WeightsError, formatShape } from './errors.js';

export type { Dtype } from './dtype_convert.js';

/** What every weight source reports about a tensor, before any data is read. */
export interface TensorInfo {
  name: string;
  dtype: Dtype;
  shape: number[];
  /** Number of data bytes (elements × item size). */
  byteLength: number;
}

export interface SafetensorsEntry extends TensorInfo {
  /** `data_offsets` as written in the header, relative to the start of the data section. */
  dataOffsets: [number, number];
  /** Absolute position of the first data byte in the file. */
  fileOffset: number;
}

export interface SafetensorsHeader {
  /** The JSON length N; the data start at 8 + N. */
  headerLength: number;
  dataStart: number;
  /** Entries in header order. */
  entries: SafetensorsEntry[];
  metadata: Record<string, string> | undefined;
}

/** Same bound as the reference Rust implementation: a larger header is corrupt or hostile. */
export const MAX_HEADER_BYTES = 100_000_000;
export const DEFAULT_CHUNK_BYTES = 16 * 1024 * 1024;
/** FileHandle.read takes an int32 length; stay well below it. */
const MAX_CHUNK_BYTES = 1024 * 1024 * 1024;

// ---------------------------------------------------------------- positioned reads

/** Reads exactly `target.byteLength` bytes at `position`, or throws naming what was being read. */
export async function readExactly(
  handle: FileHandle,
  target: Uint8Array,
  position: number,
  where: { file: string; tensor?: string },
): Promise<void> {
  let done = 0;
  while (done < target.byteLength) {
    let bytesRead: number;
    try {
      ({ bytesRead } = await handle.read(target, done, target.byteLength - done, position + done));
    } catch (cause) {
      throw new WeightsError(`read failed: ${(cause as Error).message}`, {
        code: 'io',
        file: where.file,
        ...(where.tensor !== undefined ? { tensor: where.tensor } : {}),
        offset: position + done,
        cause,
      });
    }
    if (bytesRead === 0) {
      throw new WeightsError(`file ends early (wanted ${target.byteLength - done} more bytes)`, {
        code: 'truncated',
        file: where.file,
        ...(where.tensor !== undefined ? { tensor: where.tensor } : {}),
        offset: position + done,
      });
    }
    done += bytesRead;
  }
}

/** Receives one chunk: `bytes` starts at byte `offset` of the tensor. Chunks arrive in order. */
export type ChunkHandler = (bytes: Uint8Array, offset: number) => void | Promise<void>;

export interface ChunkOptions {
  /** Upper bound of one chunk in bytes (default 16 MiB); rounded down to whole elements. */
  chunkBytes?: number;
  /**
   * Reuse one buffer for all chunks (default true): a chunk is then valid only until its handler
   * returns (or its promise resolves). Set false to keep chunks.
   */
  reuseBuffer?: boolean;
}

/** A chunk size that holds whole elements of `itemSize` bytes (so chunks can be re-typed alone). */
export function chunkSizeFor(itemSize: number, requested: number | undefined): number {
  const wanted = requested ?? DEFAULT_CHUNK_BYTES;
  if (!Number.isFinite(wanted) || wanted <= 0) {
    throw new WeightsError(`chunk size must be positive, got ${wanted}`, { code: 'bad-argument' });
  }
  const bounded = Math.min(Math.floor(wanted), MAX_CHUNK_BYTES);
  // Multiples of 8 also keep every chunk aligned for any typed-array view.
  const unit = Math.max(itemSize, 8);
  return Math.max(unit, bounded - (bounded % unit));
}

export interface TensorChunk {
  bytes: Uint8Array;
  /** Byte offset of `bytes` within the tensor. */
  offset: number;
}

/** Yields `length` bytes of the file from `start` in chunks of at most `chunkBytes`, in order. */
export async function* fileRangeChunks(
  handle: FileHandle,
  range: { start: number; length: number; itemSize: number },
  where: { file: string; tensor?: string },
  options: ChunkOptions = {},
): AsyncGenerator<TensorChunk> {
  const chunkBytes = chunkSizeFor(range.itemSize, options.chunkBytes);
  const reuse = options.reuseBuffer ?? true;
  let buffer = new Uint8Array(Math.min(chunkBytes, range.length));
  for (let offset = 0; offset < range.length; offset += chunkBytes) {
    const size = Math.min(chunkBytes, range.length - offset);
    if (!reuse && offset > 0) buffer = new Uint8Array(size);
    const view = buffer.subarray(0, size);
    await readExactly(handle, view, range.start + offset, where);
    yield { bytes: view, offset };
  }
}

/** One JS buffer holds at most this; larger tensors must be streamed with `tensorChunks`. */
export const MAX_BUFFER_BYTES = Math.min(kMaxLength, 2 ** 32);

/** A buffer for a whole tensor, or a clear error when it cannot be one buffer. */
export function allocateTensorBuffer(byteLength: number, where: { file: string; tensor: string }): Uint8Array {
  if (byteLength > MAX_BUFFER_BYTES) {
    throw new WeightsError(`${byteLength} bytes do not fit one buffer; stream the tensor with tensorChunks instead`, {
      code: 'unsupported',
      ...where,
    });
  }
  return new Uint8Array(byteLength);
}

// ---------------------------------------------------------------- header parsing

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function isSafeCount(value: unknown): value is number {
  return typeof value === 'number' && Number.isSafeInteger(value) && value >= 0;
}

/** A JSON value for an error message, cut short: a hostile header can hold megabytes in one field. */
function preview(value: unknown): string {
  const text = JSON.stringify(value) ?? String(value);
  return text.length > 80 ? `${text.slice(0, 77)}...` : text;
}

/** Product of a shape's dimensions, or undefined when it exceeds 2^53. */
export function elementCount(shape: readonly number[]): number | undefined {
  let count = 1;
  for (const dim of shape) {
    count *= dim;
    if (!Number.isSafeInteger(count)) return undefined;
  }
  return count;
}

/**
 * Parses and validates the JSON header. `fileSize` bounds every data range; overlapping ranges,
 * unknown dtypes and shape/size mismatches are errors naming the tensor and its byte offset.
 */
export function parseSafetensorsHeader(
  json: Uint8Array,
  context: { file: string; fileSize: number },
): SafetensorsHeader {
  const { file, fileSize } = context;
  const headerLength = json.byteLength;
  const dataStart = 8 + headerLength;
  let parsed: unknown;
  try {
    parsed = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(json));
  } catch (cause) {
    throw new WeightsError(`header is not valid UTF-8 JSON: ${(cause as Error).message}`, {
      code: 'bad-header',
      file,
      offset: 8,
      cause,
    });
  }
  if (!isRecord(parsed)) {
    throw new WeightsError('header JSON is not an object', { code: 'bad-header', file, offset: 8 });
  }

  let metadata: Record<string, string> | undefined;
  const entries: SafetensorsEntry[] = [];
  for (const [name, raw] of Object.entries(parsed)) {
    if (name === '__metadata__') {
      metadata = parseMetadata(raw, file);
      continue;
    }
    entries.push(parseEntry(name, raw, { file, fileSize, dataStart }));
  }
  checkNoOverlap(entries, file);
  return { headerLength, dataStart, entries, metadata };
}

function parseMetadata(raw: unknown, file: string): Record<string, string> {
  if (!isRecord(raw)) {
    throw new WeightsError('__metadata__ is not an object', { code: 'bad-header', file, offset: 8 });
  }
  const metadata: Record<string, string> = {};
  for (const [key, value] of Object.entries(raw)) {
    if (typeof value !== 'string') {
      throw new WeightsError(`__metadata__ value of "${key}" is not a string`, { code: 'bad-header', file, offset: 8 });
    }
    metadata[key] = value;
  }
  return metadata;
}

function parseEntry(
  name: string,
  raw: unknown,
  context: { file: string; fileSize: number; dataStart: number },
): SafetensorsEntry {
  const { file, fileSize, dataStart } = context;
  const fail = (
    message: string,
    code: 'bad-header' | 'unknown-dtype' | 'shape-mismatch' = 'bad-header',
    offset = 8,
  ): never => {
    throw new WeightsError(message, { code, file, tensor: name, offset });
  };
  if (!isRecord(raw)) fail('header entry is not an object');
  const entry = raw as Record<string, unknown>;
  const { dtype, shape, data_offsets: offsets } = entry;
  if (!isDtype(dtype)) fail(`unknown dtype ${preview(dtype)}`, 'unknown-dtype');
  if (!Array.isArray(shape) || !shape.every(isSafeCount)) fail(`shape ${preview(shape)} is not a list of sizes`);
  if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isSafeCount)) {
    fail(`data_offsets ${preview(offsets)} is not a pair of byte offsets`);
  }
  const typedDtype = dtype as Dtype;
  const typedShape = shape as number[];
  const [begin, end] = offsets as [number, number];
  const absoluteBegin = dataStart + begin;
  if (end < begin) fail(`data_offsets [${begin}, ${end}] end before they begin`, 'bad-header', absoluteBegin);
  const count = elementCount(typedShape);
  const expectedBytes = count === undefined ? undefined : count * DTYPE_ITEM_SIZE[typedDtype];
  if (expectedBytes === undefined || !Number.isSafeInteger(expectedBytes) || expectedBytes !== end - begin) {
    fail(
      `shape ${formatShape(typedShape)} of ${typedDtype} needs ${expectedBytes ?? 'more than 2^53'} bytes ` +
        `but data_offsets [${begin}, ${end}] hold ${end - begin}`,
      'shape-mismatch',
      absoluteBegin,
    );
  }
  if (dataStart + end > fileSize) {
    throw new WeightsError(
      `data [${absoluteBegin}, ${dataStart + end}) extends beyond the end of the file (${fileSize} bytes); truncated?`,
      { code: 'truncated', file, tensor: name, offset: absoluteBegin },
    );
  }
  return {
    name,
    dtype: typedDtype,
    shape: typedShape.slice(),
    byteLength: end - begin,
    dataOffsets: [begin, end],
    fileOffset: absoluteBegin,
  };
}

function checkNoOverlap(entries: readonly SafetensorsEntry[], file: string): void {
  const byStart = entries.filter((e) => e.byteLength > 0).sort((a, b) => a.dataOffsets[0] - b.dataOffsets[0]);
  for (let i = 1; i < byStart.length; i++) {
    const previous = byStart[i - 1]!;
    const current = byStart[i]!;
    if (current.dataOffsets[0] < previous.dataOffsets[1]) {
      throw new WeightsError(
        `data_offsets [${current.dataOffsets.join(', ')}] overlap those of "${previous.name}" ` +
          `[${previous.dataOffsets.join(', ')}]`,
        { code: 'overlap', file, tensor: current.name, offset: current.fileOffset },
      );
    }
  }
}

/** Reads and validates the header of an open file (shared by the reader and `inspect`). */
export async function readSafetensorsHeader(handle: FileHandle, file: string): Promise<SafetensorsHeader> {
  const { size: fileSize } = await handle.stat();
  if (fileSize < 8) {
    throw new WeightsError(`file is ${fileSize} bytes, too short for a safetensors header`, {
      code: 'truncated',
      file,
      offset: 0,
    });
  }
  const lengthBytes = new Uint8Array(8);
  await readExactly(handle, lengthBytes, 0, { file });
  const declared = new DataView(lengthBytes.buffer).getBigUint64(0, true);
  if (declared > BigInt(MAX_HEADER_BYTES)) {
    throw new WeightsError(`header length ${declared} exceeds the ${MAX_HEADER_BYTES}-byte limit; not a safetensors file?`, {
      code: 'bad-header',
      file,
      offset: 0,
    });
  }
  const headerLength = Number(declared);
  if (8 + headerLength > fileSize) {
    throw new WeightsError(
      `header length ${headerLength} reaches beyond the end of the file (${fileSize} bytes); truncated?`,
      { code: 'truncated', file, offset: 0 },
    );
  }
  if (headerLength < 2) {
    throw new WeightsError(`header length ${headerLength} is too small for a JSON object`, {
      code: 'bad-header',
      file,
      offset: 0,
    });
  }
  const json = new Uint8Array(headerLength);
  await readExactly(handle, json, 8, { file });
  return parseSafetensorsHeader(json, { file, fileSize });
}

// ---------------------------------------------------------------- the open file

export class SafetensorsFile {
  readonly entries: ReadonlyMap<string, SafetensorsEntry>;

  constructor(
    readonly path: string,
    private readonly handle: FileHandle,
    readonly header: SafetensorsHeader,
    readonly fileSize: number,
  ) {
    this.entries = new Map(header.entries.map((e) => [e.name, e]));
  }

  get metadata(): Record<string, string> | undefined {
    return this.header.metadata;
  }

  /** Tensor names in header order. */
  names(): string[] {
    return this.header.entries.map((e) => e.name);
  }

  has(name: string): boolean {
    return this.entries.has(name);
  }

  entry(name: string): SafetensorsEntry {
    const found = this.entries.get(name);
    if (!found) {
      throw new WeightsError(`no tensor of this name (the file holds ${this.entries.size})`, {
        code: 'missing-tensor',
        file: this.path,
        tensor: name,
      });
    }
    return found;
  }

  /** Streams the tensor's bytes: chunks of at most `chunkBytes`, in order, each with its offset. */
  async readTensor(name: string, onChunk: ChunkHandler, options: ChunkOptions = {}): Promise<void> {
    for await (const chunk of this.tensorChunks(name, options)) await onChunk(chunk.bytes, chunk.offset);
  }

  /** The same chunks as an async iterator (`for await (const { bytes, offset } of …)`). */
  tensorChunks(name: string, options: ChunkOptions = {}): AsyncGenerator<TensorChunk> {
    const e = this.entry(name);
    return fileRangeChunks(
      this.handle,
      { start: e.fileOffset, length: e.byteLength, itemSize: DTYPE_ITEM_SIZE[e.dtype] },
      { file: this.path, tensor: name },
      options,
    );
  }

  /** The whole tensor in one new buffer; for tensors that fit in memory. */
  async readTensorBytes(name: string): Promise<Uint8Array> {
    const e = this.entry(name);
    const bytes = allocateTensorBuffer(e.byteLength, { file: this.path, tensor: name });
    // Read in bounded pieces: one positioned read is limited to 2 GiB.
    for (let offset = 0; offset < e.byteLength; offset += MAX_CHUNK_BYTES) {
      const view = bytes.subarray(offset, Math.min(e.byteLength, offset + MAX_CHUNK_BYTES));
      await readExactly(this.handle, view, e.fileOffset + offset, { file: this.path, tensor: name });
    }
    return bytes;
  }

  /** The tensor as the typed array of its dtype (F16/BF16 as raw Uint16Array bits). */
  async readTensorToArray(name: string): Promise<TensorArray> {
    const e = this.entry(name);
    return bytesAsTypedArray(e.dtype, await this.readTensorBytes(name));
  }

  /** Any numeric tensor widened to f32. */
  async readTensorF32(name: string): Promise<Float32Array> {
    const e = this.entry(name);
    return bytesToF32(e.dtype, await this.readTensorBytes(name));
  }

  async close(): Promise<void> {
    await this.handle.close();
  }
}

export type TensorArray =
  | Float64Array
  | Float32Array
  | Uint16Array
  | BigInt64Array
  | BigUint64Array
  | Int32Array
  | Uint32Array
  | Int16Array
  | Int8Array
  | Uint8Array;

/** A typed view over freshly allocated (hence aligned) bytes. F16/BF16/F8 stay raw bits. */
export function bytesAsTypedArray(dtype: Dtype, bytes: Uint8Array): TensorArray {
  const n = bytes.byteLength / DTYPE_ITEM_SIZE[dtype];
  const { buffer, byteOffset } = bytes;
  switch (dtype) {
    case 'F64':
      return new Float64Array(buffer, byteOffset, n);
    case 'F32':
      return new Float32Array(buffer, byteOffset, n);
    case 'F16':
    case 'BF16':
    case 'U16':
      return new Uint16Array(buffer, byteOffset, n);
    case 'I64':
      return new BigInt64Array(buffer, byteOffset, n);
    case 'U64':
      return new BigUint64Array(buffer, byteOffset, n);
    case 'I32':
      return new Int32Array(buffer, byteOffset, n);
    case 'U32':
      return new Uint32Array(buffer, byteOffset, n);
    case 'I16':
      return new Int16Array(buffer, byteOffset, n);
    case 'I8':
      return new Int8Array(buffer, byteOffset, n);
    case 'U8':
    case 'BOOL':
    case 'F8_E4M3':
    case 'F8_E5M2':
      return bytes;
  }
}

/** Opens a safetensors file and validates its header; only the header is read now. */
export async function openSafetensors(path: string): Promise<SafetensorsFile> {
  let handle: FileHandle;
  try {
    handle = await open(path, 'r');
  } catch (cause) {
    throw new WeightsError(`cannot open: ${(cause as Error).message}`, { code: 'io', file: path, cause });
  }
  try {
    const header = await readSafetensorsHeader(handle, path);
    const { size } = await handle.stat();
    return new SafetensorsFile(path, handle, header, size);
  } catch (err) {
    await handle.close();
    throw err;
  }
}
