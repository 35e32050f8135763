// PyTorch zip checkpoints (`torch.save` since 1.6), read without Python.
//
// Layout: a zip whose entries live under one folder `<name>/`: `data.pkl` (the pickled object, whose
// tensors point at storages through persistent ids `('storage', <StorageClass>, key, location, numel)`),
// `data/<key>` (each storage's raw little-endian bytes, stored uncompressed), `byteorder`, `version`.
// Tensors are views (storage offset, sizes, strides) over storages; several tensors may share one
// storage. Contiguous views stream straight from the file; other views are gathered into contiguous
// output with bounded memory.

import { open, type FileHandle } from 'node:fs/promises';
import { DTYPE_ITEM_SIZE } from './dtype_convert.js';
import { WeightsError, formatShape } from './errors.js';
import {
  PyDict,
  PyGlobal,
  PySet,
  PyTuple,
  TORCH_STORAGE_DTYPES,
  TorchStorageRef,
  TorchTensorRef,
  unpickle,
  type PyValue,
} from './pickle.js';
import {
  chunkSizeFor,
  elementCount,
  fileRangeChunks,
  readExactly,
  type ChunkOptions,
  type TensorChunk,
  type TensorInfo,
} from './safetensors.js';
import { ZipArchive, type ZipEntry } from './zip.js';

/** data.pkl of a training snapshot with optimizer state is a few MiB; this bound only stops nonsense. */
const MAX_PICKLE_BYTES = 1024 * 1024 * 1024;
/** Deeper nesting than any checkpoint has; it keeps the walk bounded on hostile input. */
const MAX_NESTING = 64;
/** Values walked while naming tensors; a checkpoint has a few per tensor, optimizer state included. */
const MAX_VISITS = 2_000_000;
/** A non-contiguous view whose storage span fits this is read once and gathered in memory. */
const DEFAULT_GATHER_BUDGET = 256 * 1024 * 1024;

export interface PthTensor extends TensorInfo {
  ref: TorchTensorRef;
  /** Name of the storage's zip entry. */
  storageEntry: string;
  /** Absolute file position of the storage's first byte. */
  storageStart: number;
  contiguous: boolean;
  isParameter: boolean;
}

export interface PthChunkOptions extends ChunkOptions {
  /** Largest storage span read into memory at once to gather a non-contiguous view. */
  gatherBudgetBytes?: number;
}

/** Row-major strides of `shape`, in elements. */
export function contiguousStrides(shape: readonly number[]): number[] {
  const strides = new Array<number>(shape.length);
  let step = 1;
  for (let d = shape.length - 1; d >= 0; d--) {
    strides[d] = step;
    step *= shape[d]!;
  }
  return strides;
}

/** True when the view's elements are consecutive in storage, in row-major order. */
export function isContiguousView(shape: readonly number[], stride: readonly number[]): boolean {
  let step = 1;
  for (let d = shape.length - 1; d >= 0; d--) {
    if (shape[d]! !== 1 && stride[d]! !== step) return false;
    step *= shape[d]!;
  }
  return true;
}

const LEGACY_MAGIC = [0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];

async function rejectLegacyFormat(handle: FileHandle, file: string, cause: unknown): Promise<never> {
  const { size } = await handle.stat();
  const head = new Uint8Array(Math.min(LEGACY_MAGIC.length, size));
  const { bytesRead } = await handle.read(head, 0, head.byteLength, 0);
  if (bytesRead === head.byteLength && LEGACY_MAGIC.every((b, i) => head[i] === b)) {
    throw new WeightsError(
      'legacy (pre-1.6, non-zip) torch.save format is not supported; re-save it with a current PyTorch',
      { code: 'unsupported', file, offset: 0 },
    );
  }
  throw cause;
}

/** Persistent ids of torch.save: ('storage', StorageClass, key, location, numel). */
function makeStorageLoader(): (pid: PyValue, context: { fail(message: string): never }) => PyValue {
  const storages = new Map<string, TorchStorageRef>();
  return (pid, context) => {
    const items = pid instanceof PyTuple ? pid.items : undefined;
    if (!items || items.length < 5 || items[0] !== 'storage') return context.fail('persistent id is not a storage tuple');
    const [, storageType, key, location, numel] = items;
    if (!(storageType instanceof PyGlobal) || storageType.module !== 'torch') return context.fail('storage type is not a torch class');
    const dtype = TORCH_STORAGE_DTYPES[storageType.name];
    if (!dtype) return context.fail(`storage class torch.${storageType.name} is not supported`);
    if (typeof key !== 'string' || !/^[A-Za-z0-9_.-]{1,64}$/.test(key)) return context.fail('storage key is not a short name');
    if (typeof numel !== 'number' || !Number.isSafeInteger(numel) || numel < 0) return context.fail('storage size is not a count');
    const known = storages.get(key);
    if (known) {
      if (known.dtype !== dtype) return context.fail(`storage ${key} is used as ${known.dtype} and as ${dtype}`);
      return known;
    }
    const storage = new TorchStorageRef(dtype, key, typeof location === 'string' ? location : 'cpu', numel);
    storages.set(key, storage);
    return storage;
  };
}

/**
 * All tensors reachable from `root`, named by their path joined with '.' (dict keys, list indices):
 * a flat state dict gives its own names, `{vae: {...}}` gives `vae.<name>`, a snapshot gives
 * `trainer.var_wo_ddp.<name>`. An object reachable through two paths appears under both (as Python
 * would see it); cycles are cut, and a budget of visited values stops a pickle whose shared objects
 * multiply into exponentially many paths.
 */
export function flattenTensors(root: PyValue, file: string): Map<string, TorchTensorRef> {
  const tensors = new Map<string, TorchTensorRef>();
  const onPath = new Set<object>();
  let visits = 0;
  const visit = (value: PyValue, path: string, depth: number): void => {
    if (++visits > MAX_VISITS) {
      throw new WeightsError(`more than ${MAX_VISITS} values reachable; the pickle's structure is implausible`, {
        code: 'bad-pickle',
        file,
      });
    }
    if (value instanceof TorchTensorRef) {
      if (tensors.has(path)) throw new WeightsError('two tensors flatten to this name', { code: 'duplicate-tensor', file, tensor: path });
      tensors.set(path, value);
      return;
    }
    let children: Array<[string, PyValue]>;
    if (value instanceof PyDict) children = [...value.map].map(([k, v]) => [String(k), v]);
    else if (Array.isArray(value)) children = value.map((v, i) => [String(i), v]);
    else if (value instanceof PyTuple || value instanceof PySet) children = value.items.map((v, i) => [String(i), v]);
    else return;
    if (onPath.has(value)) return; // a cycle: Python would recurse forever too
    if (depth >= MAX_NESTING) {
      throw new WeightsError(`objects nested deeper than ${MAX_NESTING} levels`, { code: 'bad-pickle', file, tensor: path });
    }
    onPath.add(value);
    for (const [key, child] of children) visit(child, path === '' ? key : `${path}.${key}`, depth + 1);
    onPath.delete(value);
  };
  visit(root, '', 0);
  return tensors;
}

export class PthFile {
  private constructor(
    readonly path: string,
    private readonly handle: FileHandle,
    /** The unpickled object (state dict, snapshot, …). */
    readonly root: PyValue,
    readonly tensors: ReadonlyMap<string, PthTensor>,
    readonly fileSize: number,
  ) {}

  /** Opens the zip, unpickles data.pkl with the allow-list, and validates every tensor's bytes. */
  static async open(path: string): Promise<PthFile> {
    let handle: FileHandle;
    try {
      handle = await open(path, 'r');
    } catch (cause) {
      throw new WeightsError(`cannot open: ${(cause as Error).message}`, { code: 'io', file: path, cause });
    }
    try {
      let zip: ZipArchive;
      try {
        zip = await ZipArchive.open(handle, path);
      } catch (err) {
        return await rejectLegacyFormat(handle, path, err);
      }
      const pickleEntry = findDataPickle(zip, path);
      const prefix = pickleEntry.name.slice(0, -'data.pkl'.length);
      await checkByteOrder(zip, prefix, path);
      const pickleRange = await zip.dataRange(pickleEntry);
      const pickleBytes = await zip.readEntry(pickleEntry, MAX_PICKLE_BYTES);
      const root = unpickle(pickleBytes, { file: path, baseOffset: pickleRange.start, persistentLoad: makeStorageLoader() });
      const tensors = await resolveTensors(zip, prefix, flattenTensors(root, path), path);
      return new PthFile(path, handle, root, tensors, zip.fileSize);
    } catch (err) {
      await handle.close();
      throw err;
    }
  }

  names(): string[] {
    return [...this.tensors.keys()];
  }

  tensor(name: string): PthTensor {
    const found = this.tensors.get(name);
    if (!found) {
      throw new WeightsError(`no tensor of this name (the file holds ${this.tensors.size})`, {
        code: 'missing-tensor',
        file: this.path,
        tensor: name,
      });
    }
    return found;
  }

  /** Contiguous row-major bytes of the tensor, in bounded chunks, in order. */
  tensorChunks(name: string, options: PthChunkOptions = {}): AsyncGenerator<TensorChunk> {
    const t = this.tensor(name);
    const itemSize = DTYPE_ITEM_SIZE[t.dtype];
    if (t.contiguous) {
      return fileRangeChunks(
        this.handle,
        { start: t.storageStart + t.ref.storageOffset * itemSize, length: t.byteLength, itemSize },
        { file: this.path, tensor: name },
        options,
      );
    }
    return gatherChunks(this.handle, t, { file: this.path, tensor: name }, options);
  }

  async close(): Promise<void> {
    await this.handle.close();
  }
}

function findDataPickle(zip: ZipArchive, file: string): ZipEntry {
  const candidates = zip.names().filter((n) => n === 'data.pkl' || /^[^/]+\/data\.pkl$/.test(n));
  if (candidates.length === 0) {
    throw new WeightsError('zip has no data.pkl: not a PyTorch checkpoint', { code: 'bad-zip', file });
  }
  if (candidates.length > 1) {
    throw new WeightsError(`zip has several data.pkl (${candidates.join(', ')})`, { code: 'bad-zip', file });
  }
  return zip.entry(candidates[0]!)!;
}

async function checkByteOrder(zip: ZipArchive, prefix: string, file: string): Promise<void> {
  const entry = zip.entry(`${prefix}byteorder`);
  if (!entry) return; // files before PyTorch 1.12 have none and are little-endian
  const text = new TextDecoder().decode(await zip.readEntry(entry, 64)).trim();
  if (text !== 'little') {
    throw new WeightsError(`checkpoint byte order is "${text}"; only little-endian is supported`, { code: 'unsupported', file });
  }
}

/** Locates each tensor's storage in the zip and checks that the view stays inside it. */
async function resolveTensors(
  zip: ZipArchive,
  prefix: string,
  refs: Map<string, TorchTensorRef>,
  file: string,
): Promise<Map<string, PthTensor>> {
  const storageStarts = new Map<string, number>();
  const tensors = new Map<string, PthTensor>();
  for (const [name, ref] of refs) {
    const { storage } = ref;
    const itemSize = DTYPE_ITEM_SIZE[storage.dtype];
    const entryName = `${prefix}data/${storage.key}`;
    let start = storageStarts.get(storage.key);
    if (start === undefined) {
      const entry = zip.entry(entryName);
      if (!entry) {
        throw new WeightsError(`storage entry ${entryName} is missing from the zip`, { code: 'bad-zip', file, tensor: name });
      }
      const range = await zip.dataRange(entry);
      if (range.length < storage.numel * itemSize) {
        throw new WeightsError(
          `storage ${entryName} holds ${range.length} bytes but ${storage.numel} ${storage.dtype} elements need ` +
            `${storage.numel * itemSize}`,
          { code: 'truncated', file, tensor: name, offset: range.start },
        );
      }
      start = range.start;
      storageStarts.set(storage.key, start);
    }
    const count = elementCount(ref.shape);
    if (count === undefined) {
      throw new WeightsError(`shape ${formatShape(ref.shape)} is too large`, { code: 'shape-mismatch', file, tensor: name });
    }
    if (count > 0) {
      let last = ref.storageOffset;
      for (let d = 0; d < ref.shape.length; d++) last += (ref.shape[d]! - 1) * ref.stride[d]!;
      if (!Number.isSafeInteger(last) || last >= storage.numel) {
        throw new WeightsError(
          `view (offset ${ref.storageOffset}, shape ${formatShape(ref.shape)}, stride ${formatShape(ref.stride)}) ` +
            `reaches element ${last} of a ${storage.numel}-element storage`,
          { code: 'out-of-range', file, tensor: name, offset: start },
        );
      }
    }
    tensors.set(name, {
      name,
      dtype: storage.dtype,
      shape: [...ref.shape],
      byteLength: count * itemSize,
      ref,
      storageEntry: entryName,
      storageStart: start,
      contiguous: isContiguousView(ref.shape, ref.stride),
      isParameter: ref.isParameter,
    });
  }
  return tensors;
}

// ---------------------------------------------------------------- gathering non-contiguous views

interface RunLayout {
  /** Elements per contiguous run in storage (the innermost dims that are already contiguous). */
  runLength: number;
  /** Sizes and strides of the remaining outer dims, which select a run. */
  outerShape: number[];
  outerStride: number[];
}

function runLayout(shape: readonly number[], stride: readonly number[]): RunLayout {
  const dims = shape.map((size, d) => ({ size, stride: stride[d]! })).filter((d) => d.size !== 1);
  let runLength = 1;
  let d = dims.length - 1;
  while (d >= 0 && dims[d]!.stride === runLength) {
    runLength *= dims[d]!.size;
    d--;
  }
  const outer = dims.slice(0, d + 1);
  return { runLength, outerShape: outer.map((x) => x.size), outerStride: outer.map((x) => x.stride) };
}

/**
 * Calls `visit(storageElement, length, outputElement)` for each contiguous piece of the output
 * elements [first, first + count), in output order. Runs split at the range's ends. No allocation
 * per run: a transposed matrix has one run per element.
 */
function forEachRun(
  layout: RunLayout,
  storageOffset: number,
  first: number,
  count: number,
  visit: (storageElement: number, length: number, outputElement: number) => void,
): void {
  const { runLength, outerShape, outerStride } = layout;
  const dims = outerShape.length;
  const index = new Array<number>(dims).fill(0);
  let rest = Math.floor(first / runLength);
  let start = storageOffset;
  for (let d = dims - 1; d >= 0; d--) {
    index[d] = rest % outerShape[d]!;
    rest = Math.floor(rest / outerShape[d]!);
    start += index[d]! * outerStride[d]!;
  }
  let skip = first % runLength;
  for (let written = 0; written < count; ) {
    const length = Math.min(runLength - skip, count - written);
    visit(start + skip, length, written);
    written += length;
    skip = 0;
    for (let d = dims - 1; d >= 0; d--) {
      index[d]!++;
      start += outerStride[d]!;
      if (index[d]! < outerShape[d]!) break;
      start -= index[d]! * outerStride[d]!;
      index[d] = 0;
    }
  }
}

type Words = Uint8Array | Uint16Array | Uint32Array;

/** Views bytes as words of min(itemSize, 4) bytes, so that one element copies as 1 or 2 words. */
function asWords(bytes: Uint8Array, itemSize: number): Words {
  const { buffer, byteOffset, byteLength } = bytes;
  if (itemSize === 1) return bytes;
  if (itemSize === 2) return new Uint16Array(buffer, byteOffset, byteLength / 2);
  return new Uint32Array(buffer, byteOffset, byteLength / 4);
}

/**
 * Copies output elements [first, first + count) out of `span` (storage from element `span.first`).
 * The innermost outer dimension is walked in a tight loop: for a transposed matrix every run is a
 * single element, and a callback per element would dominate the conversion time.
 */
function gatherFromSpan(
  layout: RunLayout,
  storageOffset: number,
  span: { first: number; bytes: Uint8Array },
  itemSize: number,
  first: number,
  count: number,
  out: Uint8Array,
): void {
  const src = asWords(span.bytes, itemSize);
  const dst = asWords(out, itemSize);
  const w = itemSize === 8 ? 2 : 1; // words per element
  const { runLength, outerShape, outerStride } = layout;
  const dims = outerShape.length;
  if (dims === 0) {
    const from = (storageOffset + first - span.first) * w;
    dst.set(src.subarray(from, from + count * w), 0);
    return;
  }
  const index = new Array<number>(dims).fill(0);
  let rest = Math.floor(first / runLength);
  let start = storageOffset;
  for (let d = dims - 1; d >= 0; d--) {
    index[d] = rest % outerShape[d]!;
    rest = Math.floor(rest / outerShape[d]!);
    start += index[d]! * outerStride[d]!;
  }
  const innerSize = outerShape[dims - 1]!;
  const innerStride = outerStride[dims - 1]!;
  let skip = first % runLength;
  let at = 0;
  while (at < count) {
    // Along the innermost outer dimension, from index[dims - 1] to its end or to the chunk's end.
    let i = index[dims - 1]!;
    if (runLength === 1 && w === 1) {
      let from = start - span.first;
      const stop = Math.min(innerSize - i, count - at);
      for (let k = 0; k < stop; k++, from += innerStride) dst[at + k] = src[from]!;
      at += stop;
      start += stop * innerStride;
      i += stop;
    } else {
      for (; i < innerSize && at < count; i++, start += innerStride) {
        const length = Math.min(runLength - skip, count - at);
        const from = (start + skip - span.first) * w;
        if (length * w <= 8) {
          for (let k = 0; k < length * w; k++) dst[at * w + k] = src[from + k]!;
        } else {
          dst.set(src.subarray(from, from + length * w), at * w);
        }
        at += length;
        skip = 0;
      }
    }
    // Carry into the outer dimensions.
    start -= i * innerStride;
    index[dims - 1] = 0;
    if (i < innerSize) break; // the chunk ended inside this row
    let d = dims - 2;
    for (; d >= 0; d--) {
      index[d]!++;
      start += outerStride[d]!;
      if (index[d]! < outerShape[d]!) break;
      start -= index[d]! * outerStride[d]!;
      index[d] = 0;
    }
    if (d < 0 && at < count) throw new Error('gather ran past the end of the view'); // unreachable: count is bounded by numel
  }
}

async function* gatherChunks(
  handle: FileHandle,
  tensor: PthTensor,
  where: { file: string; tensor: string },
  options: PthChunkOptions,
): AsyncGenerator<TensorChunk> {
  if (tensor.byteLength === 0) return; // an empty view touches no storage (its span formula would go negative)
  const itemSize = DTYPE_ITEM_SIZE[tensor.dtype];
  const chunkBytes = chunkSizeFor(itemSize, options.chunkBytes);
  const chunkElements = chunkBytes / itemSize;
  const budget = options.gatherBudgetBytes ?? DEFAULT_GATHER_BUDGET;
  const { ref } = tensor;
  const layout = runLayout(ref.shape, ref.stride);
  const total = tensor.byteLength / itemSize;
  const storageBase = tensor.storageStart;
  const readSpan = async (firstElement: number, endElement: number): Promise<{ first: number; bytes: Uint8Array }> => {
    const bytes = new Uint8Array((endElement - firstElement) * itemSize);
    await readExactly(handle, bytes, storageBase + firstElement * itemSize, where);
    return { first: firstElement, bytes };
  };

  // The whole span the view touches (strides are never negative in PyTorch); read it once if it fits.
  let spanEnd = ref.storageOffset + 1;
  for (let d = 0; d < ref.shape.length; d++) spanEnd += (ref.shape[d]! - 1) * ref.stride[d]!;
  const whole = (spanEnd - ref.storageOffset) * itemSize <= budget ? await readSpan(ref.storageOffset, spanEnd) : undefined;

  const reuse = options.reuseBuffer ?? true;
  let out = new Uint8Array(Math.min(chunkBytes, tensor.byteLength));
  for (let first = 0; first < total; first += chunkElements) {
    const count = Math.min(chunkElements, total - first);
    if (!reuse && first > 0) out = new Uint8Array(count * itemSize);
    const view = out.subarray(0, count * itemSize);
    if (whole) {
      gatherFromSpan(layout, ref.storageOffset, whole, itemSize, first, count, view);
    } else {
      // Too large to cache: read this chunk's own span if it fits, else each run where it lies.
      let low = Infinity;
      let high = -Infinity;
      forEachRun(layout, ref.storageOffset, first, count, (element, length) => {
        if (element < low) low = element;
        if (element + length > high) high = element + length;
      });
      if ((high - low) * itemSize <= budget) {
        gatherFromSpan(layout, ref.storageOffset, await readSpan(low, high), itemSize, first, count, view);
      } else {
        await readRunByRun(handle, layout, ref.storageOffset, { storageBase, itemSize, first, count, out: view }, where);
      }
    }
    yield { bytes: view, offset: first * itemSize };
  }
}

/**
 * Last resort for a view whose every chunk spans more storage than the budget: positioned reads run
 * by run, merging runs that are adjacent in storage, in batches of a bounded number of runs.
 */
async function readRunByRun(
  handle: FileHandle,
  layout: RunLayout,
  storageOffset: number,
  target: { storageBase: number; itemSize: number; first: number; count: number; out: Uint8Array },
  where: { file: string; tensor: string },
): Promise<void> {
  const { storageBase, itemSize, first, count, out } = target;
  const batchElements = layout.runLength * 1024;
  for (let done = 0; done < count; done += batchElements) {
    const runs: number[] = [];
    forEachRun(layout, storageOffset, first + done, Math.min(batchElements, count - done), (element, length, at) => {
      const last = runs.length - 3;
      if (last >= 0 && runs[last]! + runs[last + 1]! === element) runs[last + 1]! += length;
      else runs.push(element, length, done + at);
    });
    for (let r = 0; r < runs.length; r += 3) {
      const element = runs[r]!;
      const length = runs[r + 1]!;
      const at = runs[r + 2]!;
      await readExactly(handle, out.subarray(at * itemSize, (at + length) * itemSize), storageBase + element * itemSize, where);
    }
  }
}
