// Text sources of a generation: the T5 prompt encoder (t5-tiny weights + the Flan-T5 tokenizer), the
// --text-features file reader, and the packing of prompts per image.

import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeSafetensors, type TensorToWrite } from '../../model/weights/safetensors_writer.js';
import { DemoPromptEncoder } from '../../sampler/demo_model.js';
import { T5PromptEncoder, readFeaturesFile, selectPrompts } from '../../sampler/text.js';
import { fixture, releaseTestGpu, testGpu } from '../helpers.js';

let scratch: string;
beforeAll(async () => {
  scratch = await mkdtemp(join(tmpdir(), 'stagevar-text-'));
});
afterAll(async () => {
  await rm(scratch, { recursive: true, force: true });
  await releaseTestGpu();
});

describe('T5 prompt encoder', () => {
  it('encodes prompts to packed real-token rows (EOS included) and warns on prompts over 512 tokens', async () => {
    const gpu = await testGpu();
    const warnings: string[] = [];
    const enc = await T5PromptEncoder.load(gpu, fixture('t5-tiny'), { tokenizer: fixture('t5-tokenizer'), onWarning: (m) => warnings.push(m) });
    try {
      expect(enc.width).toBe(64);
      const out = await enc.encode(['a cat', 'a photo of a dog on a mat']);
      expect(out.lens).toHaveLength(2);
      expect(out.lens[0]).toBeLessThan(out.lens[1]);
      expect(out.features.length).toBe((out.lens[0] + out.lens[1]) * 64);
      expect(out.features.every(Number.isFinite)).toBe(true);
      // The same rows as the encoder run on its own for the first prompt.
      const alone = await enc.encode(['a cat']);
      const n = alone.lens[0] * 64;
      for (let i = 0; i < n; i++) expect(Math.abs(alone.features[i] - out.features[i])).toBeLessThan(1e-5);
      expect(warnings).toEqual([]);
      const long = await enc.encode([Array.from({ length: 700 }, (_, i) => `word${i % 50}`).join(' ')]);
      expect(long.lens).toEqual([512]);
      expect(warnings.join('\n')).toMatch(/only the first 512 are kept/);
    } finally {
      enc.dispose();
    }
  });

  it('the demo encoder turns different prompts into different rows', async () => {
    const enc = new DemoPromptEncoder();
    const a = await enc.encode(['a cat']);
    const b = await enc.encode(['a dog']);
    expect(a.lens).toEqual([6]);
    expect(Array.from(a.features)).not.toEqual(Array.from(b.features));
  });
});

describe('--text-features files', () => {
  const write = async (name: string, tensors: TensorToWrite[]) => {
    const p = join(scratch, name);
    await writeSafetensors(p, tensors);
    return p;
  };
  const f32 = (name: string, shape: number[], fill = 0.5): TensorToWrite => ({ name, dtype: 'F32', shape, data: new Float32Array(shape.reduce((a, b) => a * b, 1)).fill(fill) });

  it('reads features, lens and negative features', async () => {
    const p = await write('ok.safetensors', [f32('features', [5, 8]), { name: 'lens', dtype: 'I64', shape: [2], data: new BigInt64Array([2n, 3n]) }, f32('negative', [4, 8], -1)]);
    const f = await readFeaturesFile(p);
    expect(f.prompts.lens).toEqual([2, 3]);
    expect(f.prompts.width).toBe(8);
    expect(f.negative?.lens).toEqual([4]);
    // One packed entry per image: prompt 1, prompt 0, prompt 1.
    const per = selectPrompts(f.prompts, [1, 0, 1]);
    expect(per.lens).toEqual([3, 2, 3]);
    expect(per.features.length).toBe(8 * 8);
  });

  it('says what is wrong with a bad file', async () => {
    await expect(readFeaturesFile(join(scratch, 'missing.safetensors'))).rejects.toThrow(/text features file not found/);
    const cases: Array<[TensorToWrite[], RegExp]> = [
      [[f32('feats', [5, 8])], /no tensor "features" \(the file holds feats\)/],
      [[f32('features', [40])], /must be a 2-D \(L, C\) tensor/],
      [[f32('features', [5, 8]), { name: 'lens', dtype: 'I32', shape: [2], data: new Int32Array([2, 2]) }], /must be positive lengths summing to the 5 rows/],
      [[f32('features', [5, 8]), f32('lens', [1], 5)], /must hold integers/],
      [[f32('features', [2, 8], NaN)], /non-finite value/],
      [[f32('features', [2, 8]), f32('negative', [2, 4])], /negative is 4 wide but features are 8/],
    ];
    for (const [i, [tensors, message]] of cases.entries()) {
      await expect(readFeaturesFile(await write(`bad-${i}.safetensors`, tensors))).rejects.toThrow(message);
    }
  });
});
