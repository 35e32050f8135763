// The tokenizers against the shared fixtures: every case of clip-tokenizer/expected.json (transformers'
// slow CLIPTokenizer with ftfy, as STAR calls it) and t5-tokenizer/expected.json (T5TokenizerFast).
import { mkdtemp, copyFile, mkdir, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ClipTokenizer, T5Tokenizer, detectTokenizer, loadTokenizer } from '../../model/text/tokenizer.js';
import { clipCases, fixtureDir, t5Cases } from './fixtures.js';

const CLIP_DIR = fixtureDir('clip-tokenizer');
const T5_DIR = fixtureDir('t5-tokenizer');

describe('CLIP tokenizer (clip-tokenizer/expected.json)', () => {
  const warnings: string[] = [];
  let clip: ClipTokenizer;
  beforeAll(async () => {
    clip = await ClipTokenizer.fromDirectory(CLIP_DIR, { onWarning: (m) => warnings.push(m) });
  });

  const cases = clipCases();
  it('has every prompt of the fixture', () => {
    expect(cases.length).toBe(35);
  });

  it.each(cases.map((c) => [c.name, c] as const))('%s: input_ids, attention_mask, length', (_name, c) => {
    warnings.length = 0;
    const out = clip.encode(c.text);
    expect(out.ids).toEqual(c.input_ids);
    expect(out.attentionMask).toEqual(c.attention_mask);
    expect(out.length).toBe(c.length);
    expect(out.truncated).toBe(c.hf_tokens.length > 75);
    expect(warnings.length).toBe(out.truncated ? 1 : 0);
  });

  it.each(cases.map((c) => [c.name, c] as const))('%s: BPE tokens', (_name, c) => {
    expect(clip.tokenize(c.text)).toEqual(c.hf_tokens);
  });

  it('reads the pad token from the folder: SD-2 pads with "!" = id 0, and every "!" is that token', () => {
    expect([clip.bosId, clip.eosId, clip.padId]).toEqual([49406, 49407, 0]);
    expect(clip.encode('!!!').ids.slice(0, 5)).toEqual([49406, 0, 0, 0, 49407]);
  });

  it('without padding returns only the real tokens', async () => {
    const unpadded = await ClipTokenizer.fromDirectory(CLIP_DIR, { pad: false });
    const out = unpadded.encode('a photo of a cat');
    expect(out.ids).toEqual([49406, 320, 1125, 539, 320, 2368, 49407]);
    expect(out.attentionMask).toEqual([1, 1, 1, 1, 1, 1, 1]);
  });
});

describe('T5 tokenizer (t5-tokenizer/expected.json)', () => {
  const warnings: string[] = [];
  let t5: T5Tokenizer;
  let uncapped: T5Tokenizer;
  beforeAll(async () => {
    t5 = await T5Tokenizer.fromDirectory(T5_DIR, { onWarning: (m) => warnings.push(m) });
    uncapped = await T5Tokenizer.fromDirectory(T5_DIR, { maxLength: 100_000 });
  });

  const cases = t5Cases();
  it('has every case of the fixture', () => {
    expect(cases.length).toBe(33);
  });

  it.each(cases.map((c) => [c.name, c] as const))('%s: ids (EOS appended, 512 cap)', (_name, c) => {
    warnings.length = 0;
    const out = t5.encode(c.text);
    const expected = c.ids_max512 ?? c.ids;
    expect(out.ids).toEqual(expected);
    expect(out.length).toBe(expected.length);
    expect(out.attentionMask).toBeUndefined();
    expect(out.truncated).toBe(c.ids.length > 512);
    expect(warnings.length).toBe(out.truncated ? 1 : 0);
    expect(out.ids[out.ids.length - 1]).toBe(1);
  });

  it.each(cases.map((c) => [c.name, c] as const))('%s: untruncated ids and tokens', (_name, c) => {
    expect(uncapped.encode(c.text).ids).toEqual(c.ids);
    expect(uncapped.tokenize(c.text)).toEqual(c.tokens);
  });

  it('the long prompt keeps its first 511 ids, then EOS', () => {
    const long = cases.find((c) => c.ids_max512)!;
    const out = t5.encode(long.text);
    expect(out.ids.length).toBe(512);
    expect(out.ids.slice(0, 511)).toEqual(long.ids.slice(0, 511));
  });
});

describe('loadTokenizer', () => {
  let scratch: string;
  beforeAll(async () => {
    scratch = await mkdtemp(path.join(os.tmpdir(), 'stagevar-tok-'));
  });
  afterAll(async () => {
    await rm(scratch, { recursive: true, force: true });
  });

  it('detects CLIP from vocab.json + merges.txt and pads to 77', async () => {
    const tok = await loadTokenizer(CLIP_DIR);
    expect(tok.kind).toBe('clip');
    const out = tok.encode('a red fox');
    expect(out.ids.length).toBe(77);
    expect(out.length).toBe(5);
  });

  it('detects T5 from tokenizer.json and returns real tokens only', async () => {
    const tok = await loadTokenizer(T5_DIR);
    expect(tok.kind).toBe('t5');
    expect(tok.encode('a cat')).toEqual({ ids: [3, 9, 1712, 1], truncated: false, length: 4 });
  });

  it('finds the tokenizer in a tokenizer/ subfolder (STAR CLIP/ layout)', async () => {
    const model = path.join(scratch, 'CLIP');
    await mkdir(path.join(model, 'tokenizer'), { recursive: true });
    for (const f of ['vocab.json', 'merges.txt', 'special_tokens_map.json', 'tokenizer_config.json']) {
      await copyFile(path.join(CLIP_DIR, f), path.join(model, 'tokenizer', f));
    }
    expect(await detectTokenizer(model)).toEqual({ kind: 'clip', dir: path.join(model, 'tokenizer') });
  });

  it('names the missing file of a half CLIP folder', async () => {
    const half = path.join(scratch, 'half');
    await mkdir(half, { recursive: true });
    await copyFile(path.join(CLIP_DIR, 'vocab.json'), path.join(half, 'vocab.json'));
    await expect(loadTokenizer(half)).rejects.toThrow(path.join(half, 'merges.txt'));
  });

  it('says what it expected in a folder without tokenizer files', async () => {
    const empty = path.join(scratch, 'empty');
    await mkdir(empty, { recursive: true });
    await expect(loadTokenizer(empty)).rejects.toThrow(/tokenizer\.json.*vocab\.json \+ merges\.txt/);
  });

  it('rejects a folder that does not exist', async () => {
    await expect(loadTokenizer(path.join(scratch, 'nope'))).rejects.toThrow(/tokenizer folder not found/);
  });
});
