// The unified Checkpoint view: single files, sharded indexes (t5-tiny and hand-made), folders,
// symbolic-link placeholders, key/only selection, shape checks.
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Checkpoint, withCheckpoint } from '../../model/weights/checkpoint.js';
import { WeightsError } from '../../model/weights/errors.js';
import { openSafetensors } from '../../model/weights/safetensors.js';
import { writeSafetensors } from '../../model/weights/safetensors_writer.js';

const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
function fixture(...parts: string[]): string {
  const p = resolve(repoRoot, '../shared/fixtures', ...parts);
  if (!existsSync(p)) throw new Error(`fixture missing: ${p} (tests read ../shared/fixtures beside the repository)`);
  return p;
}

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'stagevar-ckpt-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function expectError(promise: Promise<unknown>, code: string, pattern: RegExp): Promise<void> {
  const err = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(WeightsError);
  expect((err as WeightsError).code, String(err)).toBe(code);
  expect((err as WeightsError).message).toMatch(pattern);
}

/** A small sharded checkpoint: a, b in shard 1, c in shard 2. */
async function makeSharded(folder: string, weightMap?: Record<string, string>): Promise<string> {
  await mkdir(folder, { recursive: true });
  await writeSafetensors(join(folder, 'model-00001-of-00002.safetensors'), [
    { name: 'a', dtype: 'F32', shape: [2], data: new Float32Array([1, 2]) },
    { name: 'b', dtype: 'F16', shape: [1], data: new Uint16Array([0x3c00]) },
  ]);
  await writeSafetensors(join(folder, 'model-00002-of-00002.safetensors'), [
    { name: 'c', dtype: 'I64', shape: [1], data: new BigInt64Array([-4n]) },
  ]);
  const map = weightMap ?? { a: 'model-00001-of-00002.safetensors', b: 'model-00001-of-00002.safetensors', c: 'model-00002-of-00002.safetensors' };
  const index = join(folder, 'model.safetensors.index.json');
  await writeFile(index, JSON.stringify({ metadata: { total_size: 18 }, weight_map: map }));
  return index;
}

describe('sharded checkpoints', () => {
  it('t5-tiny: every name of the index, from both shards', async () => {
    await withCheckpoint(fixture('t5-tiny'), {}, async (ckpt) => {
      expect(ckpt.format).toBe('sharded-safetensors');
      expect(ckpt.size).toBe(47);
      expect(ckpt.files.length).toBe(3);
      const shared = ckpt.info('shared.weight');
      expect(shared.shape).toEqual([32128, 64]);
      expect(shared.file).toMatch(/model-00001-of-00002\.safetensors$/);
      expect(ckpt.info('encoder.final_layer_norm.weight').file).toMatch(/model-00002-of-00002\.safetensors$/);
      const norm = await ckpt.getTensorF32('encoder.final_layer_norm.weight', [64]);
      const shard = await openSafetensors(fixture('t5-tiny', 'model-00002-of-00002.safetensors'));
      expect(norm).toEqual(await shard.readTensorF32('encoder.final_layer_norm.weight'));
      await shard.close();
    });
  });

  it('--only selects the encoder of a full T5 checkpoint', async () => {
    await withCheckpoint(fixture('t5-tiny', 'model.safetensors.index.json'), { only: ['encoder.', 'shared.'] }, async (ckpt) => {
      expect(ckpt.names().every((n) => n.startsWith('encoder.') || n === 'shared.weight')).toBe(true);
      expect(ckpt.has('lm_head.weight')).toBe(false);
    });
  });

  it('reads a hand-made index', async () => {
    const index = await makeSharded(join(dir, 'sharded'));
    await withCheckpoint(index, {}, async (ckpt) => {
      expect(ckpt.names()).toEqual(['a', 'b', 'c']);
      expect(Array.from(await ckpt.getTensorF32('a'))).toEqual([1, 2]);
      expect(Array.from(await ckpt.getTensorF32('b'))).toEqual([1]);
      expect(Array.from(await ckpt.getTensorF32('c'))).toEqual([-4]);
    });
  });

  it('a tensor listed in the index but absent from its shard', async () => {
    const index = await makeSharded(join(dir, 'wrong-shard'), { a: 'model-00002-of-00002.safetensors' });
    await expectError(Checkpoint.open(index), 'missing-tensor', /tensor "a": listed in the index but missing from shard model-00002-of-00002\.safetensors/);
  });

  it('a shard path that leaves the folder', async () => {
    const index = await makeSharded(join(dir, 'escape'), { a: '../../etc/passwd' });
    await expectError(Checkpoint.open(index), 'bad-header', /invalid shard/);
  });

  it('a missing shard file', async () => {
    const index = await makeSharded(join(dir, 'missing-shard'), { a: 'model-00009-of-00009.safetensors' });
    await expectError(Checkpoint.open(index), 'io', /model-00009-of-00009\.safetensors: cannot open/);
  });

  it('an index that is not JSON', async () => {
    const folder = join(dir, 'bad-index');
    await mkdir(folder);
    await writeFile(join(folder, 'model.safetensors.index.json'), '{"weight_map": ');
    await expectError(Checkpoint.open(folder), 'bad-header', /index is not readable JSON/);
  });
});

describe('files and folders', () => {
  it('a folder with one weight file opens it; several files must be named', async () => {
    await withCheckpoint(fixture('clip-tiny', 'text_encoder'), {}, async (ckpt) => {
      expect(ckpt.format).toBe('safetensors');
      expect(ckpt.has('text_model.final_layer_norm.weight')).toBe(true);
    });
    await expectError(Checkpoint.open(fixture('infinity-tiny')), 'bad-argument', /several weight files \(golden\.safetensors, model\.safetensors, vae\.safetensors\)/);
    const empty = join(dir, 'empty');
    await mkdir(empty);
    await expectError(Checkpoint.open(empty), 'missing-tensor', /holds no weight file/);
  });

  it('follows symbolic links checked out as text (stagevar-tiny)', async () => {
    await withCheckpoint(fixture('stagevar-tiny', 'model.safetensors'), {}, async (ckpt) => {
      expect(ckpt.files[0]).toMatch(/infinity-tiny[/\\]model\.safetensors$/);
      expect(ckpt.has('word_embed.weight')).toBe(true);
    });
  });

  it('key and only on a safetensors file; missing tensors name the key', async () => {
    const path = join(dir, 'nested.safetensors');
    await writeSafetensors(path, [
      { name: 'vae.decoder.w', dtype: 'F32', shape: [1], data: new Float32Array([1]) },
      { name: 'vae.encoder.w', dtype: 'F32', shape: [1], data: new Float32Array([2]) },
      { name: 'step', dtype: 'I64', shape: [], data: new BigInt64Array([5n]) },
    ]);
    await withCheckpoint(path, { key: 'vae', only: ['decoder.'] }, async (ckpt) => {
      expect(ckpt.names()).toEqual(['decoder.w']);
      expect(ckpt.info('decoder.w').sourceName).toBe('vae.decoder.w');
      await expectError(ckpt.readTensorBytes('encoder.w'), 'missing-tensor', /tensor "encoder\.w": not in this checkpoint/);
    });
    await expectError(Checkpoint.open(path, { key: 'ema' }), 'missing-tensor', /top-level keys: vae, step/);
  });

  it('summarises counts, bytes and dtypes', async () => {
    await withCheckpoint(fixture('infinity8b-tiny', 'vae.safetensors'), {}, async (ckpt) => {
      const summary = ckpt.summary();
      expect(summary.tensors).toBe(130);
      expect(summary.dtypes.I64).toEqual({ tensors: 2, bytes: 224 });
      expect(summary.bytes).toBe(Object.values(summary.dtypes).reduce((s, d) => s + d.bytes, 0));
    });
  });

  it('streams chunks in order with their offsets', async () => {
    await withCheckpoint(fixture('t5-tiny'), {}, async (ckpt) => {
      const info = ckpt.info('shared.weight');
      const offsets: number[] = [];
      let total = 0;
      await ckpt.readTensor(
        'shared.weight',
        (bytes, offset) => {
          offsets.push(offset);
          total += bytes.byteLength;
        },
        { chunkBytes: 1 << 20 },
      );
      expect(total).toBe(info.byteLength);
      expect(offsets).toEqual(offsets.map((_, i) => i << 20));
    });
  });

  it('a file that is not a checkpoint', async () => {
    const path = join(dir, 'notes.bin');
    await writeFile(path, 'just text, long enough to have an end record search');
    await expectError(Checkpoint.open(path), 'bad-zip', /notes\.bin.*no zip end-of-central-directory record/);
  });
});
