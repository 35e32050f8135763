// PyTorch zip checkpoints made by real torch.save (test/data/pth/make_pth.py, python3-torch 1.13):
// values, dtypes, views over shared storages, nested keys, bad files; plus ZIP64 archives (also one
// over 4 GiB, sparse) written here from the same entries.
import { copyFile, mkdtemp, open, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Checkpoint } from '../../model/weights/checkpoint.js';
import { bytesToF32, type Dtype } from '../../model/weights/dtype_convert.js';
import { WeightsError } from '../../model/weights/errors.js';
import { PthFile } from '../../model/weights/pth.js';
import { ZipArchive } from '../../model/weights/zip.js';

const dataDir = resolve(dirname(fileURLToPath(import.meta.url)), '..', 'data', 'pth');

interface ExpectedTensor {
  dtype: Dtype;
  shape: number[];
  contiguous: boolean;
  storage_offset: number;
  values: number[];
}
type ExpectedFiles = Record<string, Record<string, ExpectedTensor>>;

let expected: ExpectedFiles;
let dir: string;
beforeAll(async () => {
  expected = (JSON.parse(await readFile(join(dataDir, 'expected.json'), 'utf8')) as { files: ExpectedFiles }).files;
  dir = await mkdtemp(join(tmpdir(), 'stagevar-pth-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** Values of raw tensor bytes as plain numbers (exact for the test data: ints < 2^53). */
function numbers(dtype: Dtype, bytes: Uint8Array): number[] {
  const copy = bytes.slice();
  if (dtype === 'I64') return Array.from(new BigInt64Array(copy.buffer), (v) => Number(v));
  if (dtype === 'I32') return Array.from(new Int32Array(copy.buffer));
  return Array.from(bytesToF32(dtype, copy));
}

async function readAll(file: PthFile, name: string, options = {}): Promise<Uint8Array> {
  const t = file.tensor(name);
  const out = new Uint8Array(t.byteLength);
  let next = 0;
  for await (const chunk of file.tensorChunks(name, options)) {
    expect(chunk.offset).toBe(next); // in order, no gaps
    out.set(chunk.bytes, chunk.offset);
    next += chunk.bytes.byteLength;
  }
  expect(next).toBe(t.byteLength);
  return out;
}

async function expectFileMatches(path: string, want: Record<string, ExpectedTensor>, options = {}): Promise<void> {
  const file = await PthFile.open(path);
  try {
    expect(file.names().sort()).toEqual(Object.keys(want).sort());
    for (const [name, w] of Object.entries(want)) {
      const t = file.tensor(name);
      expect(t.dtype, name).toBe(w.dtype);
      expect(t.shape, name).toEqual(w.shape);
      expect(t.contiguous, name).toBe(w.contiguous);
      expect(t.ref.storageOffset, name).toBe(w.storage_offset);
      expect(numbers(t.dtype, await readAll(file, name, options)), name).toEqual(w.values);
    }
  } finally {
    await file.close();
  }
}

async function expectError(promise: Promise<unknown>, code: string, pattern: RegExp): Promise<WeightsError> {
  const err = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(WeightsError);
  expect((err as WeightsError).code, String(err)).toBe(code);
  expect((err as WeightsError).message).toMatch(pattern);
  return err as WeightsError;
}

describe('checkpoints written by torch.save', () => {
  for (const name of ['flat_state.pth', 'mixed.pth', 'vae_ckpt.pth', 'star_snapshot.pth', 'from_type_v2.pth']) {
    it(`${name}: every tensor's dtype, shape, view and values`, async () => {
      await expectFileMatches(join(dataDir, name), expected[name]!);
    });
  }

  it('gathers non-contiguous views identically in tiny chunks and with every memory budget', async () => {
    const want = expected['mixed.pth']!;
    // Whole span cached (default), per-chunk spans, and run-by-run reads (budget below one run).
    for (const gatherBudgetBytes of [undefined, 40, 1]) {
      await expectFileMatches(join(dataDir, 'mixed.pth'), want, { chunkBytes: 8, gatherBudgetBytes });
    }
  });

  it('knows parameters, 0-d tensors, empty tensors and shared storages', async () => {
    const file = await PthFile.open(join(dataDir, 'mixed.pth'));
    try {
      expect(file.tensor('param').isParameter).toBe(true);
      expect(file.tensor('f32').isParameter).toBe(false);
      expect(file.tensor('scalar_f32').shape).toEqual([]);
      expect(file.tensor('scalar_f32').byteLength).toBe(4);
      expect(file.tensor('empty').byteLength).toBe(0);
      const views = ['view.base', 'view.slice', 'view.block', 'view.transposed', 'view.column', 'view.step'];
      expect(new Set(views.map((v) => file.tensor(v).storageEntry)).size).toBe(1);
      expect(file.tensor('view.transposed').ref.stride).toEqual([1, 6]);
    } finally {
      await file.close();
    }
  });
});

describe('nested keys through Checkpoint', () => {
  it('--key vae takes the sub-dictionary and strips its prefix', async () => {
    const ckpt = await Checkpoint.open(join(dataDir, 'vae_ckpt.pth'), { key: 'vae' });
    try {
      expect(ckpt.names().sort()).toEqual(['mask', 'norm.bias', 'norm.weight', 'proj.bias', 'proj.weight', 'scale']);
      expect(ckpt.info('proj.weight').sourceName).toBe('vae.proj.weight');
      expect(Array.from(await ckpt.getTensorF32('proj.weight', [3, 4]))).toEqual(expected['vae_ckpt.pth']!['vae.proj.weight']!.values);
    } finally {
      await ckpt.close();
    }
  });

  it('--key trainer.var_wo_ddp takes the transformer out of a training snapshot', async () => {
    const ckpt = await Checkpoint.open(join(dataDir, 'star_snapshot.pth'), { key: 'trainer.var_wo_ddp' });
    try {
      expect(ckpt.names().sort()).toEqual(['mask', 'norm.bias', 'norm.weight', 'proj.bias', 'proj.weight', 'scale']);
      expect(ckpt.format).toBe('pth');
      const mask = ckpt.info('mask');
      expect(mask.dtype).toBe('I64');
      expect(numbers('I64', await ckpt.readTensorBytes('mask'))).toEqual(expected['star_snapshot.pth']!['trainer.var_wo_ddp.mask']!.values);
    } finally {
      await ckpt.close();
    }
  });

  it('an unknown key lists the top-level keys', async () => {
    await expectError(Checkpoint.open(join(dataDir, 'vae_ckpt.pth'), { key: 'model' }), 'missing-tensor', /no tensors under key "model"; top-level keys: .*vae/);
  });

  it('--only keeps matching names', async () => {
    const ckpt = await Checkpoint.open(join(dataDir, 'vae_ckpt.pth'), { key: 'vae', only: ['norm.'] });
    try {
      expect(ckpt.names().sort()).toEqual(['norm.bias', 'norm.weight']);
    } finally {
      await ckpt.close();
    }
  });

  it('a mis-shaped tensor names the key and both shapes', async () => {
    const ckpt = await Checkpoint.open(join(dataDir, 'flat_state.pth'));
    try {
      await expectError(ckpt.getTensorF32('proj.weight', [4, 3]), 'shape-mismatch', /tensor "proj.weight": has shape \[3, 4\] but \[4, 3\] was expected/);
      await expectError(ckpt.getTensorF32('nope'), 'missing-tensor', /tensor "nope"/);
    } finally {
      await ckpt.close();
    }
  });
});

describe('bad checkpoints', () => {
  it('compressed entries are refused with a clear error', async () => {
    const err = await expectError(PthFile.open(join(dataDir, 'compressed.pth')), 'compressed-entry', /is compressed \(method 8\)/);
    expect(err.message).toContain('compressed.pth');
  });

  it('a zip without data.pkl', async () => {
    await expectError(PthFile.open(join(dataDir, 'no_data_pkl.pth')), 'bad-zip', /no_data_pkl\.pth: zip has no data\.pkl/);
  });

  it('a pickle with a forbidden global names the global and the file', async () => {
    const err = await expectError(PthFile.open(join(dataDir, 'forbidden_global.pth')), 'forbidden-global', /forbidden global "datetime\.date"/);
    expect(err.message).toContain('forbidden_global.pth');
    expect(err.offset).toBeGreaterThan(0);
  });

  it('a truncated checkpoint', async () => {
    const bytes = await readFile(join(dataDir, 'mixed.pth'));
    const path = join(dir, 'truncated.pth');
    await writeFile(path, bytes.subarray(0, bytes.byteLength - 300));
    await expectError(PthFile.open(path), 'bad-zip', /truncated\.pth.*no zip end-of-central-directory record/);
  });

  it('a storage whose recorded size runs past the end of the file', async () => {
    const bytes = new Uint8Array(await readFile(join(dataDir, 'flat_state.pth')));
    // Enlarge the sizes of storage entry data/0 in the central directory.
    const name = new TextEncoder().encode('flat_state/data/0');
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    let record = -1;
    for (let i = 0; i + 46 < bytes.byteLength; i++) {
      if (view.getUint32(i, true) === 0x02014b50 && view.getUint16(i + 28, true) === name.byteLength &&
        name.every((b, k) => bytes[i + 46 + k] === b)) record = i;
    }
    expect(record).toBeGreaterThan(0);
    view.setUint32(record + 20, 100_000, true);
    view.setUint32(record + 24, 100_000, true);
    const path = join(dir, 'oversized.pth');
    await writeFile(path, bytes);
    const err = await expectError(PthFile.open(path), 'truncated', /data of "flat_state\/data\/0" \[\d+, \d+\) extend beyond the end of the file/);
    expect(err.message).toContain('oversized.pth');
    expect(err.offset).toBeGreaterThan(0);
  });

  it('the legacy (pre-1.6) format', async () => {
    const path = join(dir, 'legacy.pth');
    await writeFile(path, new Uint8Array([0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e]));
    await expectError(PthFile.open(path), 'unsupported', /legacy \(pre-1\.6, non-zip\)/);
  });
});

// ---------------------------------------------------------------- ZIP64

interface ZipInput {
  name: string;
  data: Uint8Array;
  /** Place the entry's local header at least here (a sparse gap before it). */
  at?: number;
}

/** Writes a stored zip with every ZIP64 field forced (sizes and offsets in extra fields). */
async function writeZip64(path: string, entries: ZipInput[]): Promise<void> {
  const handle = await open(path, 'w');
  const enc = new TextEncoder();
  const central: Uint8Array[] = [];
  let pos = 0;
  const put = async (bytes: Uint8Array): Promise<void> => {
    await handle.write(bytes, 0, bytes.byteLength, pos);
    pos += bytes.byteLength;
  };
  try {
    for (const entry of entries) {
      pos = Math.max(pos, entry.at ?? 0);
      const name = enc.encode(entry.name);
      const local = new Uint8Array(30 + name.byteLength + 20);
      const lv = new DataView(local.buffer);
      lv.setUint32(0, 0x04034b50, true);
      lv.setUint16(4, 45, true);
      lv.setUint32(18, 0xffffffff, true);
      lv.setUint32(22, 0xffffffff, true);
      lv.setUint16(26, name.byteLength, true);
      lv.setUint16(28, 20, true);
      local.set(name, 30);
      lv.setUint16(30 + name.byteLength, 1, true);
      lv.setUint16(32 + name.byteLength, 16, true);
      lv.setBigUint64(34 + name.byteLength, BigInt(entry.data.byteLength), true);
      lv.setBigUint64(42 + name.byteLength, BigInt(entry.data.byteLength), true);
      const localOffset = pos;
      await put(local);
      await put(entry.data);
      const record = new Uint8Array(46 + name.byteLength + 28);
      const cv = new DataView(record.buffer);
      cv.setUint32(0, 0x02014b50, true);
      cv.setUint16(4, 45, true);
      cv.setUint16(6, 45, true);
      cv.setUint32(20, 0xffffffff, true);
      cv.setUint32(24, 0xffffffff, true);
      cv.setUint16(28, name.byteLength, true);
      cv.setUint16(30, 28, true);
      cv.setUint32(42, 0xffffffff, true);
      record.set(name, 46);
      const x = 46 + name.byteLength;
      cv.setUint16(x, 1, true);
      cv.setUint16(x + 2, 24, true);
      cv.setBigUint64(x + 4, BigInt(entry.data.byteLength), true);
      cv.setBigUint64(x + 12, BigInt(entry.data.byteLength), true);
      cv.setBigUint64(x + 20, BigInt(localOffset), true);
      central.push(record);
    }
    const cdOffset = pos;
    for (const record of central) await put(record);
    const cdSize = pos - cdOffset;
    const end64 = new Uint8Array(56);
    const ev = new DataView(end64.buffer);
    ev.setUint32(0, 0x06064b50, true);
    ev.setBigUint64(4, 44n, true);
    ev.setUint16(12, 45, true);
    ev.setUint16(14, 45, true);
    ev.setBigUint64(24, BigInt(entries.length), true);
    ev.setBigUint64(32, BigInt(entries.length), true);
    ev.setBigUint64(40, BigInt(cdSize), true);
    ev.setBigUint64(48, BigInt(cdOffset), true);
    const end64Offset = pos;
    await put(end64);
    const locator = new Uint8Array(20);
    const lo = new DataView(locator.buffer);
    lo.setUint32(0, 0x07064b50, true);
    lo.setBigUint64(8, BigInt(end64Offset), true);
    lo.setUint32(16, 1, true);
    await put(locator);
    const eocd = new Uint8Array(22);
    const eo = new DataView(eocd.buffer);
    eo.setUint32(0, 0x06054b50, true);
    eo.setUint16(8, 0xffff, true);
    eo.setUint16(10, 0xffff, true);
    eo.setUint32(12, 0xffffffff, true);
    eo.setUint32(16, 0xffffffff, true);
    await put(eocd);
  } finally {
    await handle.close();
  }
}

/** The entries of a torch-written checkpoint, to re-pack them. */
async function entriesOf(path: string): Promise<ZipInput[]> {
  const handle = await open(path, 'r');
  try {
    const zip = await ZipArchive.open(handle, path);
    const out: ZipInput[] = [];
    for (const name of zip.names()) out.push({ name, data: await zip.readEntry(zip.entry(name)!, 1 << 20) });
    return out;
  } finally {
    await handle.close();
  }
}

describe('ZIP64', () => {
  it('reads a checkpoint whose sizes and offsets are all in ZIP64 fields', async () => {
    const path = join(dir, 'zip64.pth');
    await writeZip64(path, await entriesOf(join(dataDir, 'mixed.pth')));
    await expectFileMatches(path, expected['mixed.pth']!);
  });

  it('reads storages that lie beyond 4 GiB (sparse file)', async () => {
    const path = join(dir, 'beyond4g.pth');
    const entries = await entriesOf(join(dataDir, 'flat_state.pth'));
    const firstStorage = entries.findIndex((e) => /\/data\/\d+$/.test(e.name));
    entries[firstStorage]!.at = 4.5 * 2 ** 30;
    await writeZip64(path, entries);
    const file = await PthFile.open(path);
    try {
      expect(Math.max(...file.names().map((n) => file.tensor(n).storageStart))).toBeGreaterThan(2 ** 32);
    } finally {
      await file.close();
    }
    await expectFileMatches(path, expected['flat_state.pth']!);
    await rm(path);
  });

  it('a copy keeps working after renaming the archive folder', async () => {
    // torch names the folder after the file; readers must not depend on it.
    const path = join(dir, 'renamed.pth');
    await copyFile(join(dataDir, 'flat_state.pth'), path);
    await expectFileMatches(path, expected['flat_state.pth']!);
  });
});
