// Bounded, seeded fuzzing of the weight readers: mutated safetensors headers, mutated PyTorch zip
// checkpoints and mutated pickles. Every case must end in success or a WeightsError — never another
// exception, never a hang — and no positioned read may reach past the end of the file.
import { mkdtemp, open, readFile, rm, writeFile, type FileHandle } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Checkpoint } from '../../model/weights/checkpoint.js';
import { WeightsError } from '../../model/weights/errors.js';
import { unpickle, type PyValue } from '../../model/weights/pickle.js';
import { flattenTensors, PthFile } from '../../model/weights/pth.js';
import { openSafetensors } from '../../model/weights/safetensors.js';
import { writeSafetensors } from '../../model/weights/safetensors_writer.js';

const SEED = Number(process.env.STAGEVAR_FUZZ_SEED ?? 20240611);
const pthDir = resolve(dirname(fileURLToPath(import.meta.url)), '..', 'data', 'pth');
/** Tensors larger than this are only located, not read, so that a mutated stride-0 view stays cheap. */
const MAX_READ_BYTES = 1 << 20;

function xorshift(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x;
  };
}

let dir: string;
let fileLimit = Infinity;
let outsideReads: string[] = [];
let restoreRead: (() => void) | undefined;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'stagevar-fuzz-'));
  // Watch every positioned read of every FileHandle: none may reach past the file being tested.
  const probe = await open(join(pthDir, 'expected.json'), 'r');
  const proto = Object.getPrototypeOf(probe) as FileHandle;
  await probe.close();
  const original = proto.read;
  proto.read = function (this: FileHandle, ...args: unknown[]) {
    const [, , length, position] = args as [unknown, number, number, number];
    if (typeof position === 'number' && typeof length === 'number' && position + length > fileLimit) {
      outsideReads.push(`read ${length} at ${position} of a ${fileLimit}-byte file`);
    }
    return (original as (...a: unknown[]) => unknown).apply(this, args);
  } as FileHandle['read'];
  restoreRead = () => {
    proto.read = original;
  };
});
afterAll(async () => {
  restoreRead?.();
  await rm(dir, { recursive: true, force: true });
});

/** Runs one case; returns 'ok' or the error code, and fails the test on a foreign exception. */
async function runCase(label: string, body: () => Promise<void>): Promise<string> {
  const started = Date.now();
  try {
    await body();
    return 'ok';
  } catch (err) {
    if (!(err instanceof WeightsError)) {
      throw new Error(`${label}: escaped with ${(err as Error)?.constructor?.name}: ${(err as Error)?.message}`, { cause: err });
    }
    return err.code;
  } finally {
    const elapsed = Date.now() - started;
    if (elapsed > 2000) throw new Error(`${label}: took ${elapsed} ms`);
  }
}

function mutate(bytes: Uint8Array, next: () => number, region: [number, number]): Uint8Array {
  const out = new Uint8Array(bytes);
  const [lo, hi] = region;
  const kind = next() % 6;
  const at = lo + (next() % Math.max(1, hi - lo));
  switch (kind) {
    case 0: // flip a few bytes
      for (let i = 0, n = 1 + (next() % 4); i < n; i++) out[lo + (next() % Math.max(1, hi - lo))] = next() & 0xff;
      return out;
    case 1: // one bit
      out[at] = out[at]! ^ (1 << (next() % 8));
      return out;
    case 2: // interesting values
      out[at] = [0x00, 0xff, 0x7f, 0x80, 0x2e, 0x28, 0x7d, 0x5d][next() % 8]!;
      return out;
    case 3: // truncate
      return out.subarray(0, at);
    case 4: {
      // duplicate a slice (shifts everything after it)
      const len = 1 + (next() % 16);
      return new Uint8Array([...out.subarray(0, at), ...out.subarray(at, at + len), ...out.subarray(at)]);
    }
    default: {
      // delete a slice
      const len = 1 + (next() % 16);
      return new Uint8Array([...out.subarray(0, at), ...out.subarray(at + len)]);
    }
  }
}

async function readEverything(path: string, useCheckpoint: boolean): Promise<void> {
  const ckpt = useCheckpoint ? await Checkpoint.open(path) : undefined;
  if (ckpt) {
    try {
      for (const t of ckpt.tensors()) if (t.byteLength <= MAX_READ_BYTES) await ckpt.readTensorBytes(t.name);
    } finally {
      await ckpt.close();
    }
  }
}

describe('fuzz', () => {
  it('mutated safetensors headers', { timeout: 20_000 }, async () => {
    const base = join(dir, 'base.safetensors');
    await writeSafetensors(base, [
      { name: 'a', dtype: 'F32', shape: [2, 3], data: new Float32Array(6).fill(1.5) },
      { name: 'b.bias', dtype: 'BF16', shape: [5], data: new Uint16Array(5) },
      { name: 'c', dtype: 'I64', shape: [], data: new BigInt64Array([7n]) },
    ], { metadata: { format: 'pt' } });
    const bytes = new Uint8Array(await readFile(base));
    const headerEnd = 8 + Number(new DataView(bytes.buffer).getBigUint64(0, true));
    const next = xorshift(SEED);
    const outcomes = new Map<string, number>();
    for (let i = 0; i < 300; i++) {
      // Mostly the JSON, sometimes the length prefix, sometimes anywhere.
      const region: [number, number] = i % 10 === 0 ? [0, 8] : i % 10 === 1 ? [0, bytes.byteLength] : [8, headerEnd];
      const mutated = mutate(bytes, next, region);
      const path = join(dir, `st-${i}.safetensors`);
      await writeFile(path, mutated);
      fileLimit = mutated.byteLength;
      const outcome = await runCase(`safetensors case ${i} (seed ${SEED})`, async () => {
        const file = await openSafetensors(path);
        try {
          for (const name of file.names()) if (file.entry(name).byteLength <= MAX_READ_BYTES) await file.readTensorBytes(name);
        } finally {
          await file.close();
        }
      });
      fileLimit = Infinity;
      outcomes.set(outcome, (outcomes.get(outcome) ?? 0) + 1);
      await rm(path);
    }
    expect(outsideReads).toEqual([]);
    expect(outcomes.get('bad-header')).toBeGreaterThan(0); // the mutations did hit the parser
  });

  it('mutated PyTorch zip checkpoints', { timeout: 20_000 }, async () => {
    const bytes = new Uint8Array(await readFile(join(pthDir, 'mixed.pth')));
    const pickleStart = bytes.indexOf(0x80); // PROTO right after data.pkl's local header
    const next = xorshift(SEED + 1);
    const outcomes = new Map<string, number>();
    for (let i = 0; i < 300; i++) {
      const region: [number, number] = i % 2 === 0 ? [pickleStart, pickleStart + 1200] : [0, bytes.byteLength];
      const mutated = mutate(bytes, next, region);
      const path = join(dir, `pth-${i}.pth`);
      await writeFile(path, mutated);
      fileLimit = mutated.byteLength;
      const outcome = await runCase(`pth case ${i} (seed ${SEED})`, async () => {
        if (i % 3 === 0) {
          await readEverything(path, true);
          return;
        }
        const file = await PthFile.open(path);
        try {
          for (const name of file.names()) {
            if (file.tensor(name).byteLength > MAX_READ_BYTES) continue;
            for await (const chunk of file.tensorChunks(name, { chunkBytes: 16 })) void chunk;
          }
        } finally {
          await file.close();
        }
      });
      fileLimit = Infinity;
      outcomes.set(outcome, (outcomes.get(outcome) ?? 0) + 1);
      await rm(path);
    }
    expect(outsideReads).toEqual([]);
    expect(outcomes.get('bad-pickle') ?? 0).toBeGreaterThan(0);
  });

  it('mutated pickles, unpickled directly', { timeout: 20_000 }, async () => {
    const handle = await open(join(pthDir, 'star_snapshot.pth'), 'r');
    let pickle: Uint8Array;
    try {
      const { ZipArchive } = await import('../../model/weights/zip.js');
      const zip = await ZipArchive.open(handle, 'star_snapshot.pth');
      pickle = await zip.readEntry(zip.entry('star_snapshot/data.pkl')!, 1 << 20);
    } finally {
      await handle.close();
    }
    const next = xorshift(SEED + 2);
    const loader = (pid: PyValue): PyValue => pid; // storages stay opaque here
    for (let i = 0; i < 2000; i++) {
      const mutated = mutate(pickle, next, [0, pickle.byteLength]);
      await runCase(`pickle case ${i} (seed ${SEED})`, async () => {
        const root = unpickle(mutated, { file: 'data.pkl', persistentLoad: loader });
        flattenTensors(root, 'data.pkl');
      });
    }
  });
});
