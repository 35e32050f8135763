// Streaming, atomic safetensors writer. The header needs every tensor's dtype and shape up front
// (offsets are cumulative), so callers describe all tensors first and then produce their bytes one
// tensor at a time, in that order. Data go to a temporary file in the target's folder that is
// renamed over the target only after everything was written and synced: a failed or interrupted
// write never leaves a partial file under the final name.

import { open, rename, unlink, type FileHandle } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { DTYPE_ITEM_SIZE, isDtype, type Dtype } from './dtype_convert.js';
import { WeightsError, formatShape } from './errors.js';
import { elementCount } from './safetensors.js';

/** Calls `emit` with the tensor's bytes, in order, in chunks of any size; awaits each emit. */
export type TensorProducer = (emit: (bytes: Uint8Array) => Promise<void>) => Promise<void>;

export interface TensorToWrite {
  name: string;
  dtype: Dtype;
  shape: readonly number[];
  /** The bytes themselves (little-endian), or a producer that streams them. */
  data: ArrayBufferView | TensorProducer;
}

export interface WriteProgress {
  tensor: string;
  /** Index of the tensor being written, 0-based. */
  index: number;
  count: number;
  bytesWritten: number;
  totalBytes: number;
}

export interface WriteOptions {
  metadata?: Record<string, string>;
  onProgress?: (progress: WriteProgress) => void;
  /** Small emits are gathered into a buffer of this size before writing (default 8 MiB). */
  bufferBytes?: number;
}

interface PlannedTensor {
  name: string;
  dtype: Dtype;
  shape: number[];
  begin: number;
  end: number;
}

/** The 8-byte length + JSON header, padded with spaces so that the data start 8-byte aligned. */
export function buildSafetensorsHeader(
  tensors: readonly Pick<TensorToWrite, 'name' | 'dtype' | 'shape'>[],
  metadata?: Record<string, string>,
): { bytes: Uint8Array; plan: PlannedTensor[]; dataBytes: number } {
  const json: Record<string, unknown> = {};
  if (metadata && Object.keys(metadata).length > 0) json['__metadata__'] = { ...metadata };
  const plan: PlannedTensor[] = [];
  const seen = new Set<string>();
  let offset = 0;
  for (const t of tensors) {
    if (t.name === '__metadata__' || t.name.length === 0) {
      throw new WeightsError(`"${t.name}" cannot be a tensor name`, { code: 'bad-argument', tensor: t.name });
    }
    if (seen.has(t.name)) throw new WeightsError('tensor name given twice', { code: 'duplicate-tensor', tensor: t.name });
    seen.add(t.name);
    if (!isDtype(t.dtype)) throw new WeightsError(`unknown dtype ${String(t.dtype)}`, { code: 'unknown-dtype', tensor: t.name });
    const count = t.shape.every((d) => Number.isSafeInteger(d) && d >= 0) ? elementCount(t.shape) : undefined;
    const byteLength = count === undefined ? undefined : count * DTYPE_ITEM_SIZE[t.dtype];
    if (byteLength === undefined || !Number.isSafeInteger(byteLength)) {
      throw new WeightsError(`invalid shape ${formatShape(t.shape)}`, { code: 'bad-argument', tensor: t.name });
    }
    plan.push({ name: t.name, dtype: t.dtype, shape: [...t.shape], begin: offset, end: offset + byteLength });
    json[t.name] = { dtype: t.dtype, shape: [...t.shape], data_offsets: [offset, offset + byteLength] };
    offset += byteLength;
  }
  let text = JSON.stringify(json);
  const encoder = new TextEncoder();
  let body = encoder.encode(text);
  const padding = (8 - (body.byteLength % 8)) % 8;
  if (padding > 0) {
    text += ' '.repeat(padding);
    body = encoder.encode(text);
  }
  const bytes = new Uint8Array(8 + body.byteLength);
  new DataView(bytes.buffer).setBigUint64(0, BigInt(body.byteLength), true);
  bytes.set(body, 8);
  return { bytes, plan, dataBytes: offset };
}

/** Gathers small writes so that a producer emitting element-sized pieces does not cost a syscall each. */
class BufferedFile {
  private readonly buffer: Uint8Array;
  private used = 0;
  position = 0;

  constructor(
    private readonly handle: FileHandle,
    bufferBytes: number,
  ) {
    this.buffer = new Uint8Array(bufferBytes);
  }

  async write(bytes: Uint8Array): Promise<void> {
    if (this.used + bytes.byteLength <= this.buffer.byteLength) {
      this.buffer.set(bytes, this.used);
      this.used += bytes.byteLength;
      return;
    }
    await this.flush();
    if (bytes.byteLength >= this.buffer.byteLength) {
      await this.writeAll(bytes);
    } else {
      this.buffer.set(bytes, 0);
      this.used = bytes.byteLength;
    }
  }

  async flush(): Promise<void> {
    if (this.used === 0) return;
    await this.writeAll(this.buffer.subarray(0, this.used));
    this.used = 0;
  }

  private async writeAll(bytes: Uint8Array): Promise<void> {
    let done = 0;
    while (done < bytes.byteLength) {
      const { bytesWritten } = await this.handle.write(bytes, done, bytes.byteLength - done, this.position);
      done += bytesWritten;
      this.position += bytesWritten;
    }
  }
}

function asBytes(view: ArrayBufferView): Uint8Array {
  return view instanceof Uint8Array ? view : new Uint8Array(view.buffer, view.byteOffset, view.byteLength);
}

/** A temporary name next to `path`, so that the final rename stays on one file system. */
export function temporaryPathFor(path: string): string {
  return join(dirname(path), `.${basename(path)}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`);
}

/**
 * Writes `path` atomically (temporary file, fsync, rename), calling `produce(handle)` to fill the
 * temporary file.
 * On any error the temporary file is removed and the target is left untouched.
 */
export async function writeFileAtomically(path: string, produce: (handle: FileHandle) => Promise<void>): Promise<void> {
  const tempPath = temporaryPathFor(path);
  let handle: FileHandle | undefined;
  try {
    handle = await open(tempPath, 'wx');
    await produce(handle);
    await handle.sync();
    await handle.close();
    handle = undefined;
    await rename(tempPath, path);
  } catch (err) {
    if (handle) await handle.close().catch(() => undefined);
    await unlink(tempPath).catch(() => undefined);
    if (err instanceof WeightsError) throw err;
    throw new WeightsError(`write failed: ${(err as Error).message}`, { code: 'io', file: path, cause: err });
  }
}

/** Writes a safetensors file with bounded memory (one producer chunk plus the write buffer). */
export async function writeSafetensors(
  path: string,
  tensors: readonly TensorToWrite[],
  options: WriteOptions = {},
): Promise<void> {
  const { bytes: header, plan, dataBytes } = buildSafetensorsHeader(tensors, options.metadata);
  await writeFileAtomically(path, async (handle) => {
    const out = new BufferedFile(handle, options.bufferBytes ?? 8 * 1024 * 1024);
    await out.write(header);
    let bytesWritten = 0;
    for (let index = 0; index < tensors.length; index++) {
      const tensor = tensors[index]!;
      const expected = plan[index]!.end - plan[index]!.begin;
      options.onProgress?.({ tensor: tensor.name, index, count: tensors.length, bytesWritten, totalBytes: dataBytes });
      let produced = 0;
      const emit = async (bytes: Uint8Array): Promise<void> => {
        if (produced + bytes.byteLength > expected) {
          throw new WeightsError(`producer emitted more than the ${expected} bytes of shape ${formatShape(tensor.shape)}`, {
            code: 'shape-mismatch',
            file: path,
            tensor: tensor.name,
          });
        }
        await out.write(bytes);
        produced += bytes.byteLength;
        bytesWritten += bytes.byteLength;
        options.onProgress?.({ tensor: tensor.name, index, count: tensors.length, bytesWritten, totalBytes: dataBytes });
      };
      if (typeof tensor.data === 'function') await tensor.data(emit);
      else await emit(asBytes(tensor.data));
      if (produced !== expected) {
        throw new WeightsError(
          `got ${produced} bytes, but ${tensor.dtype} ${formatShape(tensor.shape)} needs ${expected}`,
          { code: 'shape-mismatch', file: path, tensor: tensor.name },
        );
      }
    }
    await out.flush();
  });
}
