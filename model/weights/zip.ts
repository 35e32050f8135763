// Minimal zip reader for PyTorch checkpoints: central directory (with ZIP64 for archives and entries
// over 4 GiB) and stored (uncompressed) entries. torch.save writes every entry stored and 64-byte
// aligned so tensors can be mapped in place; a compressed entry means the file was re-zipped by
// another tool, and reading it would need inflating gigabytes, so it is rejected with a clear error.

import type { FileHandle } from 'node:fs/promises';
import { WeightsError } from './errors.js';
import { readExactly } from './safetensors.js';

const EOCD_SIGNATURE = 0x06054b50;
const ZIP64_LOCATOR_SIGNATURE = 0x07064b50;
const ZIP64_EOCD_SIGNATURE = 0x06064b50;
const CENTRAL_ENTRY_SIGNATURE = 0x02014b50;
const LOCAL_HEADER_SIGNATURE = 0x04034b50;
const EOCD_SIZE = 22;
const MAX_COMMENT = 0xffff;
const ZIP64_LOCATOR_SIZE = 20;
const ZIP64_EOCD_SIZE = 56;
const CENTRAL_ENTRY_SIZE = 46;
const LOCAL_HEADER_SIZE = 30;
/** A checkpoint's directory lists a few thousand entries; anything near this bound is corrupt. */
const MAX_CENTRAL_DIRECTORY_BYTES = 256 * 1024 * 1024;
const U32_MAX = 0xffffffff;

export const METHOD_STORED = 0;

export interface ZipEntry {
  name: string;
  /** 0 = stored; anything else is compressed. */
  method: number;
  flags: number;
  compressedSize: number;
  uncompressedSize: number;
  localHeaderOffset: number;
  /** Position of the entry's record in the central directory (for error messages). */
  directoryOffset: number;
}

function u64(view: DataView, offset: number, file: string, at: number): number {
  const value = view.getBigUint64(offset, true);
  if (value > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new WeightsError(`zip field ${value} exceeds 2^53`, { code: 'bad-zip', file, offset: at + offset });
  }
  return Number(value);
}

export class ZipArchive {
  private constructor(
    readonly file: string,
    private readonly handle: FileHandle,
    readonly fileSize: number,
    readonly entries: ReadonlyMap<string, ZipEntry>,
  ) {}

  /** Reads the central directory; entries' data are located lazily by `dataRange`. */
  static async open(handle: FileHandle, file: string): Promise<ZipArchive> {
    const { size: fileSize } = await handle.stat();
    const directory = await locateCentralDirectory(handle, file, fileSize);
    const entries = await readCentralDirectory(handle, file, fileSize, directory);
    return new ZipArchive(file, handle, fileSize, entries);
  }

  names(): string[] {
    return [...this.entries.keys()];
  }

  entry(name: string): ZipEntry | undefined {
    return this.entries.get(name);
  }

  /** Absolute byte range of a stored entry's data, checked against the file size. */
  async dataRange(entry: ZipEntry): Promise<{ start: number; length: number }> {
    const file = this.file;
    if (entry.flags & 0x1) {
      throw new WeightsError(`zip entry "${entry.name}" is encrypted`, { code: 'unsupported', file, offset: entry.directoryOffset });
    }
    if (entry.method !== METHOD_STORED) {
      throw new WeightsError(
        `zip entry "${entry.name}" is compressed (method ${entry.method}); PyTorch writes entries uncompressed — ` +
          're-save the checkpoint with torch.save instead of re-zipping it',
        { code: 'compressed-entry', file, offset: entry.localHeaderOffset },
      );
    }
    if (entry.compressedSize !== entry.uncompressedSize) {
      throw new WeightsError(`stored zip entry "${entry.name}" has different compressed and uncompressed sizes`, {
        code: 'bad-zip',
        file,
        offset: entry.directoryOffset,
      });
    }
    if (entry.localHeaderOffset + LOCAL_HEADER_SIZE > this.fileSize) {
      throw new WeightsError(`local header of "${entry.name}" lies beyond the end of the file`, {
        code: 'truncated',
        file,
        offset: entry.localHeaderOffset,
      });
    }
    const local = new Uint8Array(LOCAL_HEADER_SIZE);
    await readExactly(this.handle, local, entry.localHeaderOffset, { file });
    const view = new DataView(local.buffer);
    if (view.getUint32(0, true) !== LOCAL_HEADER_SIGNATURE) {
      throw new WeightsError(`no local header for "${entry.name}" where the directory points`, {
        code: 'bad-zip',
        file,
        offset: entry.localHeaderOffset,
      });
    }
    const start = entry.localHeaderOffset + LOCAL_HEADER_SIZE + view.getUint16(26, true) + view.getUint16(28, true);
    if (start + entry.uncompressedSize > this.fileSize) {
      throw new WeightsError(
        `data of "${entry.name}" [${start}, ${start + entry.uncompressedSize}) extend beyond the end of the file ` +
          `(${this.fileSize} bytes); truncated?`,
        { code: 'truncated', file, offset: start },
      );
    }
    return { start, length: entry.uncompressedSize };
  }

  /** A whole (small) stored entry in memory, e.g. data.pkl. */
  async readEntry(entry: ZipEntry, maxBytes: number): Promise<Uint8Array> {
    const { start, length } = await this.dataRange(entry);
    if (length > maxBytes) {
      throw new WeightsError(`zip entry "${entry.name}" is ${length} bytes, more than the ${maxBytes} allowed`, {
        code: 'unsupported',
        file: this.file,
        offset: start,
      });
    }
    const bytes = new Uint8Array(length);
    await readExactly(this.handle, bytes, start, { file: this.file });
    return bytes;
  }
}

interface DirectoryLocation {
  offset: number;
  size: number;
  count: number;
}

async function locateCentralDirectory(handle: FileHandle, file: string, fileSize: number): Promise<DirectoryLocation> {
  if (fileSize < EOCD_SIZE) {
    throw new WeightsError(`file is ${fileSize} bytes, too short for a zip archive`, { code: 'bad-zip', file, offset: 0 });
  }
  // The end record sits in the last 22 bytes plus an optional comment of up to 64 KiB.
  const tailLength = Math.min(fileSize, EOCD_SIZE + MAX_COMMENT + ZIP64_LOCATOR_SIZE);
  const tailStart = fileSize - tailLength;
  const tail = new Uint8Array(tailLength);
  await readExactly(handle, tail, tailStart, { file });
  const view = new DataView(tail.buffer);
  let eocd = -1;
  for (let i = tailLength - EOCD_SIZE; i >= 0; i--) {
    if (view.getUint32(i, true) === EOCD_SIGNATURE && i + EOCD_SIZE + view.getUint16(i + 20, true) <= tailLength) {
      eocd = i;
      break;
    }
  }
  if (eocd < 0) {
    throw new WeightsError('no zip end-of-central-directory record; not a zip archive, or truncated', {
      code: 'bad-zip',
      file,
      offset: tailStart,
    });
  }
  let location: DirectoryLocation = {
    count: view.getUint16(eocd + 10, true),
    size: view.getUint32(eocd + 12, true),
    offset: view.getUint32(eocd + 16, true),
  };
  const locator = eocd - ZIP64_LOCATOR_SIZE;
  if (locator >= 0 && view.getUint32(locator, true) === ZIP64_LOCATOR_SIGNATURE) {
    location = await readZip64End(handle, file, fileSize, u64(view, locator + 8, file, tailStart));
  }
  if (location.offset + location.size > fileSize) {
    throw new WeightsError(
      `central directory [${location.offset}, ${location.offset + location.size}) lies beyond the end of the file ` +
        `(${fileSize} bytes)`,
      { code: 'truncated', file, offset: location.offset },
    );
  }
  if (location.size > MAX_CENTRAL_DIRECTORY_BYTES || location.count * CENTRAL_ENTRY_SIZE > location.size) {
    throw new WeightsError(`implausible central directory (${location.count} entries in ${location.size} bytes)`, {
      code: 'bad-zip',
      file,
      offset: location.offset,
    });
  }
  return location;
}

async function readZip64End(handle: FileHandle, file: string, fileSize: number, at: number): Promise<DirectoryLocation> {
  if (at + ZIP64_EOCD_SIZE > fileSize) {
    throw new WeightsError('ZIP64 end record lies beyond the end of the file', { code: 'bad-zip', file, offset: at });
  }
  const record = new Uint8Array(ZIP64_EOCD_SIZE);
  await readExactly(handle, record, at, { file });
  const view = new DataView(record.buffer);
  if (view.getUint32(0, true) !== ZIP64_EOCD_SIGNATURE) {
    throw new WeightsError('ZIP64 locator does not point at a ZIP64 end record', { code: 'bad-zip', file, offset: at });
  }
  return { count: u64(view, 32, file, at), size: u64(view, 40, file, at), offset: u64(view, 48, file, at) };
}

async function readCentralDirectory(
  handle: FileHandle,
  file: string,
  fileSize: number,
  location: DirectoryLocation,
): Promise<Map<string, ZipEntry>> {
  const bytes = new Uint8Array(location.size);
  await readExactly(handle, bytes, location.offset, { file });
  const view = new DataView(bytes.buffer);
  const decoder = new TextDecoder('utf-8');
  const entries = new Map<string, ZipEntry>();
  let pos = 0;
  for (let i = 0; i < location.count; i++) {
    const at = location.offset + pos;
    if (pos + CENTRAL_ENTRY_SIZE > bytes.byteLength || view.getUint32(pos, true) !== CENTRAL_ENTRY_SIGNATURE) {
      throw new WeightsError(`central directory entry ${i} is malformed`, { code: 'bad-zip', file, offset: at });
    }
    const nameLength = view.getUint16(pos + 28, true);
    const extraLength = view.getUint16(pos + 30, true);
    const commentLength = view.getUint16(pos + 32, true);
    const end = pos + CENTRAL_ENTRY_SIZE + nameLength + extraLength + commentLength;
    if (end > bytes.byteLength) {
      throw new WeightsError(`central directory entry ${i} runs past the directory`, { code: 'bad-zip', file, offset: at });
    }
    const nameStart = pos + CENTRAL_ENTRY_SIZE;
    const entry: ZipEntry = {
      name: decoder.decode(bytes.subarray(nameStart, nameStart + nameLength)),
      flags: view.getUint16(pos + 8, true),
      method: view.getUint16(pos + 10, true),
      compressedSize: view.getUint32(pos + 20, true),
      uncompressedSize: view.getUint32(pos + 24, true),
      localHeaderOffset: view.getUint32(pos + 42, true),
      directoryOffset: at,
    };
    applyZip64Extra(entry, new DataView(bytes.buffer, nameStart + nameLength, extraLength), file, at);
    if (entry.localHeaderOffset >= fileSize) {
      throw new WeightsError(`entry "${entry.name}" points beyond the end of the file`, {
        code: 'truncated',
        file,
        offset: at,
      });
    }
    entries.set(entry.name, entry);
    pos = end;
  }
  return entries;
}

/** ZIP64 extended information: each 0xFFFFFFFF field of the record is replaced by a u64, in order. */
function applyZip64Extra(entry: ZipEntry, extra: DataView, file: string, at: number): void {
  const needsUncompressed = entry.uncompressedSize === U32_MAX;
  const needsCompressed = entry.compressedSize === U32_MAX;
  const needsOffset = entry.localHeaderOffset === U32_MAX;
  if (!needsUncompressed && !needsCompressed && !needsOffset) return;
  for (let p = 0; p + 4 <= extra.byteLength; ) {
    const id = extra.getUint16(p, true);
    const size = extra.getUint16(p + 2, true);
    if (p + 4 + size > extra.byteLength) break;
    if (id === 0x0001) {
      let q = p + 4;
      const next = (): number => {
        if (q + 8 > p + 4 + size) {
          throw new WeightsError(`ZIP64 field of "${entry.name}" is too short`, { code: 'bad-zip', file, offset: at });
        }
        const value = u64(extra, q, file, at);
        q += 8;
        return value;
      };
      if (needsUncompressed) entry.uncompressedSize = next();
      if (needsCompressed) entry.compressedSize = next();
      if (needsOffset) entry.localHeaderOffset = next();
      return;
    }
    p += 4 + size;
  }
  throw new WeightsError(`entry "${entry.name}" needs a ZIP64 field but has none`, { code: 'bad-zip', file, offset: at });
}
