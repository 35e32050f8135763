// safetensors reader and writer: round trips for every dtype, chunked streaming, the npm
// `safetensors` package as an independent header parser, every kind of bad file, and a sparse
// file over 4 GiB.
import { mkdtemp, open, readFile, readdir, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
// @ts-expect-error -- safetensors 0.0.1 ships no type declarations
import { SafeTensor } from 'safetensors';
import { DTYPE_ITEM_SIZE, type Dtype } from '../../model/weights/dtype_convert.js';
import { WeightsError } from '../../model/weights/errors.js';
import { openSafetensors, type SafetensorsFile } from '../../model/weights/safetensors.js';
import { buildSafetensorsHeader, writeSafetensors, type TensorToWrite } from '../../model/weights/safetensors_writer.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'stagevar-st-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

function patternBytes(length: number, seed: number): Uint8Array {
  const bytes = new Uint8Array(length);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    bytes[i] = x & 0xff;
  }
  return bytes;
}

const ALL_DTYPES: Dtype[] = ['F32', 'F16', 'BF16', 'I64', 'I32', 'U8', 'BOOL', 'F64', 'I16', 'I8', 'U16', 'U32', 'U64'];

function sampleTensors(): TensorToWrite[] {
  return ALL_DTYPES.map((dtype, i): TensorToWrite => {
    const shape = [3, 5];
    const data = patternBytes(15 * DTYPE_ITEM_SIZE[dtype], i + 1);
    if (dtype === 'BOOL') data.forEach((v, j) => (data[j] = v & 1));
    return { name: `t.${dtype.toLowerCase()}`, dtype, shape, data };
  }).concat([
    { name: 'scalar', dtype: 'F32', shape: [], data: new Float32Array([2.5]) } as TensorToWrite,
    { name: 'empty', dtype: 'F16', shape: [0, 4], data: new Uint8Array(0) },
  ]);
}

/** Byte equality without vitest's element-by-element diffing (slow on a million elements). */
function sameBytes(a: ArrayBufferView, b: ArrayBufferView): boolean {
  return Buffer.compare(Buffer.from(a.buffer, a.byteOffset, a.byteLength), Buffer.from(b.buffer, b.byteOffset, b.byteLength)) === 0;
}

/** A raw safetensors file with any header text and declared length, for bad-input tests. */
async function writeRaw(name: string, header: string | object, data: Uint8Array, declaredLength?: bigint): Promise<string> {
  const json = new TextEncoder().encode(typeof header === 'string' ? header : JSON.stringify(header));
  const bytes = new Uint8Array(8 + json.byteLength + data.byteLength);
  new DataView(bytes.buffer).setBigUint64(0, declaredLength ?? BigInt(json.byteLength), true);
  bytes.set(json, 8);
  bytes.set(data, 8 + json.byteLength);
  const path = join(dir, name);
  await writeFile(path, bytes);
  return path;
}

async function expectWeightsError(promise: Promise<unknown>, code: string, pattern: RegExp): Promise<WeightsError> {
  const err = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(WeightsError);
  expect((err as WeightsError).code, String(err)).toBe(code);
  expect((err as WeightsError).message).toMatch(pattern);
  return err as WeightsError;
}

describe('round trip', () => {
  let path: string;
  let file: SafetensorsFile;
  const tensors = sampleTensors();

  beforeAll(async () => {
    path = join(dir, 'all.safetensors');
    await writeSafetensors(path, tensors, { metadata: { format: 'pt', note: 'round trip' } });
    file = await openSafetensors(path);
  });
  afterAll(async () => {
    await file.close();
  });

  it('keeps names, dtypes, shapes, bytes and metadata of every dtype', async () => {
    expect(file.names()).toEqual(tensors.map((t) => t.name));
    expect(file.metadata).toEqual({ format: 'pt', note: 'round trip' });
    for (const t of tensors) {
      const entry = file.entry(t.name);
      expect(entry.dtype).toBe(t.dtype);
      expect(entry.shape).toEqual(t.shape);
      const want = new Uint8Array((t.data as ArrayBufferView).buffer, (t.data as ArrayBufferView).byteOffset, (t.data as ArrayBufferView).byteLength);
      expect(await file.readTensorBytes(t.name)).toEqual(want);
    }
  });

  it('pads the header so that the data start 8-byte aligned', () => {
    expect(file.header.dataStart % 8).toBe(0);
  });

  it('gives typed arrays by dtype', async () => {
    expect(await file.readTensorToArray('t.f32')).toBeInstanceOf(Float32Array);
    expect(await file.readTensorToArray('t.i64')).toBeInstanceOf(BigInt64Array);
    expect(await file.readTensorToArray('t.bf16')).toBeInstanceOf(Uint16Array);
    expect(await file.readTensorToArray('t.i32')).toBeInstanceOf(Int32Array);
    expect(Array.from(await file.readTensorF32('scalar'))).toEqual([2.5]);
    expect((await file.readTensorBytes('empty')).byteLength).toBe(0);
  });

  it('agrees with the npm safetensors package on every header entry', async () => {
    // The package reads every header key as a tensor, so it cannot parse `__metadata__`: give it a
    // file without metadata.
    const plain = join(dir, 'plain.safetensors');
    await writeSafetensors(plain, tensors);
    const file = await openSafetensors(plain);
    const whole = new Uint8Array(await readFile(plain)); // small file: the package needs it in memory
    const reference = new SafeTensor(whole) as {
      metadata: Map<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
      getTensor(name: string): Uint8Array;
    };
    const referenceNames = [...reference.metadata.keys()].filter((n) => n !== '__metadata__');
    expect(referenceNames.sort()).toEqual(file.names().sort());
    for (const name of file.names()) {
      const mine = file.entry(name);
      const theirs = reference.metadata.get(name)!;
      expect(theirs.dtype).toBe(mine.dtype);
      expect(theirs.shape).toEqual(mine.shape);
      expect(theirs.data_offsets).toEqual([mine.fileOffset, mine.fileOffset + mine.byteLength]);
      expect(reference.getTensor(name)).toEqual(await file.readTensorBytes(name));
    }
    await file.close();
  });
});

describe('chunked streaming', () => {
  const count = 1_000_003;
  let path: string;
  let values: Float32Array;

  beforeAll(async () => {
    values = new Float32Array(count).map((_, i) => i * 0.5 - 7);
    path = join(dir, 'big.safetensors');
    await writeSafetensors(path, [
      { name: 'odd', dtype: 'U8', shape: [3], data: new Uint8Array([1, 2, 3]) },
      { name: 'big', dtype: 'F32', shape: [count], data: values },
    ]);
  });

  it('delivers ordered, bounded, element-aligned chunks that add up to the tensor', async () => {
    const file = await openSafetensors(path);
    try {
      const out = new Uint8Array(count * 4);
      const offsets: number[] = [];
      let buffer: ArrayBufferLike | undefined;
      await file.readTensor(
        'big',
        (bytes, offset) => {
          expect(bytes.byteLength).toBeLessThanOrEqual(65536);
          expect(bytes.byteOffset % 4).toBe(0);
          buffer ??= bytes.buffer;
          expect(bytes.buffer).toBe(buffer); // one reused buffer: bounded memory
          offsets.push(offset);
          out.set(bytes, offset);
        },
        { chunkBytes: 65536 },
      );
      expect(offsets[0]).toBe(0);
      for (let i = 1; i < offsets.length; i++) expect(offsets[i]! - offsets[i - 1]!).toBe(65536);
      expect(sameBytes(out, values)).toBe(true);
    } finally {
      await file.close();
    }
  });

  it('rounds odd chunk sizes to whole elements and can hand out fresh buffers', async () => {
    const file = await openSafetensors(path);
    try {
      const chunks: Array<{ bytes: Uint8Array; offset: number }> = [];
      for await (const chunk of file.tensorChunks('big', { chunkBytes: 1001, reuseBuffer: false })) chunks.push(chunk);
      expect(chunks[0]!.bytes.byteLength).toBe(1000);
      expect(new Set(chunks.map((c) => c.bytes.buffer)).size).toBe(chunks.length);
      const joined = new Uint8Array(count * 4);
      for (const c of chunks) joined.set(c.bytes, c.offset);
      expect(sameBytes(joined, values)).toBe(true);
    } finally {
      await file.close();
    }
  });

  it('names the file, tensor and offset when the file shrinks while reading', async () => {
    const copy = join(dir, 'shrinking.safetensors');
    await writeFile(copy, await readFile(path));
    const file = await openSafetensors(copy);
    try {
      await truncate(copy, file.entry('big').fileOffset + 100_000);
      const err = await expectWeightsError(file.readTensorBytes('big'), 'truncated', /file ends early/);
      expect(err.message).toContain(copy);
      expect(err.tensor).toBe('big');
      expect(err.offset).toBe(file.entry('big').fileOffset + 100_000);
    } finally {
      await file.close();
    }
  });
});

describe('writer', () => {
  it('refuses duplicate names', async () => {
    const path = join(dir, 'dup.safetensors');
    const data = new Float32Array(1);
    await expectWeightsError(
      writeSafetensors(path, [
        { name: 'a', dtype: 'F32', shape: [1], data },
        { name: 'a', dtype: 'F32', shape: [1], data },
      ]),
      'duplicate-tensor',
      /"a"/,
    );
  });

  it('fails on a producer that emits too few or too many bytes and leaves no file behind', async () => {
    const path = join(dir, 'short.safetensors');
    const before = await readdir(dir);
    await expectWeightsError(
      writeSafetensors(path, [
        {
          name: 'w',
          dtype: 'F32',
          shape: [4],
          data: async (emit) => emit(new Uint8Array(12)),
        },
      ]),
      'shape-mismatch',
      /tensor "w".*got 12 bytes, but F32 \[4\] needs 16/,
    );
    await expectWeightsError(
      writeSafetensors(path, [{ name: 'w', dtype: 'F32', shape: [1], data: async (emit) => emit(new Uint8Array(8)) }]),
      'shape-mismatch',
      /more than the 4 bytes/,
    );
    expect(await readdir(dir)).toEqual(before);
  });

  it('replaces an existing file only when the new one is complete', async () => {
    const path = join(dir, 'replace.safetensors');
    await writeSafetensors(path, [{ name: 'x', dtype: 'U8', shape: [2], data: new Uint8Array([1, 2]) }]);
    await writeSafetensors(path, [
      { name: 'x', dtype: 'U8', shape: [2], data: async () => { throw new Error('producer died'); } },
    ]).catch(() => undefined);
    const file = await openSafetensors(path);
    expect(await file.readTensorBytes('x')).toEqual(new Uint8Array([1, 2]));
    await file.close();
  });

  it('builds headers with cumulative offsets', () => {
    const { plan, dataBytes } = buildSafetensorsHeader([
      { name: 'a', dtype: 'F16', shape: [3] },
      { name: 'b', dtype: 'I64', shape: [2, 1] },
    ]);
    expect(plan.map((p) => [p.begin, p.end])).toEqual([
      [0, 6],
      [6, 22],
    ]);
    expect(dataBytes).toBe(22);
  });
});

describe('bad files', () => {
  const good = { w: { dtype: 'F32', shape: [2], data_offsets: [0, 8] } };

  it('truncated file: names file, tensor and byte offset', async () => {
    const path = await writeRaw('truncated.safetensors', good, new Uint8Array(5));
    const err = await expectWeightsError(openSafetensors(path), 'truncated', /extends beyond the end of the file/);
    expect(err.message).toContain(path);
    expect(err.message).toContain('tensor "w"');
    expect(err.offset).toBe(8 + JSON.stringify(good).length);
    expect(err.message).toMatch(/byte offset \d+/);
  });

  it('file shorter than the length field', async () => {
    const path = join(dir, 'tiny.safetensors');
    await writeFile(path, new Uint8Array([1, 2, 3]));
    await expectWeightsError(openSafetensors(path), 'truncated', /too short/);
  });

  it('header length beyond the file', async () => {
    const path = await writeRaw('long-header.safetensors', good, new Uint8Array(8), 10_000n);
    await expectWeightsError(openSafetensors(path), 'truncated', /header length 10000 reaches beyond the end/);
  });

  it('absurd header length', async () => {
    const path = await writeRaw('huge-header.safetensors', good, new Uint8Array(8), 1n << 60n);
    await expectWeightsError(openSafetensors(path), 'bad-header', /exceeds the 100000000-byte limit/);
  });

  it('overlapping offsets', async () => {
    const header = {
      a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] },
      b: { dtype: 'F32', shape: [2], data_offsets: [4, 12] },
    };
    const path = await writeRaw('overlap.safetensors', header, new Uint8Array(12));
    const err = await expectWeightsError(openSafetensors(path), 'overlap', /overlap those of "a"/);
    expect(err.tensor).toBe('b');
  });

  it('out-of-range offsets', async () => {
    const header = { a: { dtype: 'F32', shape: [2], data_offsets: [1000, 1008] } };
    const path = await writeRaw('out-of-range.safetensors', header, new Uint8Array(8));
    await expectWeightsError(openSafetensors(path), 'truncated', /tensor "a".*\[\d+, \d+\) extends beyond/);
  });

  it('offsets that end before they begin', async () => {
    const header = { a: { dtype: 'U8', shape: [0], data_offsets: [8, 0] } };
    const path = await writeRaw('reversed.safetensors', header, new Uint8Array(8));
    await expectWeightsError(openSafetensors(path), 'bad-header', /end before they begin/);
  });

  it('unknown dtype', async () => {
    const header = { a: { dtype: 'Q4_K', shape: [2], data_offsets: [0, 8] } };
    const path = await writeRaw('dtype.safetensors', header, new Uint8Array(8));
    await expectWeightsError(openSafetensors(path), 'unknown-dtype', /tensor "a".*unknown dtype "Q4_K"/);
  });

  it('shape and byte range disagree', async () => {
    const header = { a: { dtype: 'F16', shape: [3, 2], data_offsets: [0, 8] } };
    const path = await writeRaw('shape.safetensors', header, new Uint8Array(8));
    await expectWeightsError(openSafetensors(path), 'shape-mismatch', /shape \[3, 2\] of F16 needs 12 bytes but data_offsets \[0, 8\] hold 8/);
  });

  it('shape whose element count overflows', async () => {
    const header = { a: { dtype: 'F32', shape: [2 ** 40, 2 ** 40], data_offsets: [0, 8] } };
    const path = await writeRaw('overflow.safetensors', header, new Uint8Array(8));
    await expectWeightsError(openSafetensors(path), 'shape-mismatch', /more than 2\^53/);
  });

  it('malformed JSON', async () => {
    const path = await writeRaw('json.safetensors', '{"a": {"dtype": "F32",', new Uint8Array(8));
    await expectWeightsError(openSafetensors(path), 'bad-header', /not valid UTF-8 JSON/);
  });

  it('header that is not an object, and entries with bad fields', async () => {
    await expectWeightsError(openSafetensors(await writeRaw('array.safetensors', '[1, 2]', new Uint8Array(0))), 'bad-header', /not an object/);
    const badShape = { a: { dtype: 'F32', shape: [-1], data_offsets: [0, 4] } };
    await expectWeightsError(openSafetensors(await writeRaw('neg.safetensors', badShape, new Uint8Array(4))), 'bad-header', /not a list of sizes/);
    const badOffsets = { a: { dtype: 'F32', shape: [1], data_offsets: [0] } };
    await expectWeightsError(openSafetensors(await writeRaw('offs.safetensors', badOffsets, new Uint8Array(4))), 'bad-header', /not a pair/);
    const badMeta = { __metadata__: { n: 1 } };
    await expectWeightsError(openSafetensors(await writeRaw('meta.safetensors', badMeta, new Uint8Array(0))), 'bad-header', /__metadata__ value/);
  });

  it('missing tensor names the key', async () => {
    const path = await writeRaw('ok.safetensors', good, new Uint8Array(8));
    const file = await openSafetensors(path);
    try {
      expect(() => file.entry('nope')).toThrow(/tensor "nope": no tensor of this name/);
    } finally {
      await file.close();
    }
  });

  it('missing file', async () => {
    await expectWeightsError(openSafetensors(join(dir, 'absent.safetensors')), 'io', /cannot open/);
  });
});

describe('files over 4 GiB', () => {
  it('reads a tensor that starts beyond 2^32 in a sparse file', async () => {
    const path = join(dir, 'sparse.safetensors');
    const far = 5 * 2 ** 30;
    const header = {
      near: { dtype: 'F32', shape: [2], data_offsets: [0, 8] },
      gap: { dtype: 'U8', shape: [far - 8], data_offsets: [8, far] },
      far: { dtype: 'F32', shape: [3], data_offsets: [far, far + 12] },
    };
    const json = new TextEncoder().encode(JSON.stringify(header));
    const handle = await open(path, 'w');
    try {
      const prefix = new Uint8Array(8);
      new DataView(prefix.buffer).setBigUint64(0, BigInt(json.byteLength), true);
      await handle.write(prefix, 0, 8, 0);
      await handle.write(json, 0, json.byteLength, 8);
      const start = 8 + json.byteLength;
      await handle.write(new Uint8Array(new Float32Array([1, 2]).buffer), 0, 8, start);
      await handle.write(new Uint8Array(new Float32Array([3, 4, 5]).buffer), 0, 12, start + far);
    } finally {
      await handle.close();
    }
    const file = await openSafetensors(path);
    try {
      expect(file.fileSize).toBeGreaterThan(2 ** 32);
      expect(file.entry('far').fileOffset).toBeGreaterThan(2 ** 32);
      expect(Array.from(await file.readTensorF32('far'))).toEqual([3, 4, 5]);
      expect(Array.from(await file.readTensorF32('near'))).toEqual([1, 2]);
      // Chunked reads at positions past 2^32 too.
      const pieces: number[] = [];
      await file.readTensor('far', (bytes, offset) => {
        pieces.push(offset, ...new Float32Array(bytes.slice().buffer));
      }, { chunkBytes: 8 });
      expect(pieces).toEqual([0, 3, 4, 8, 5]);
    } finally {
      await file.close();
      await rm(path);
    }
  });
});
