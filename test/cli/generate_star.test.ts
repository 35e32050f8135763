// `stagevar generate` on STAR checkpoints: the family comes from the weights; prompts through the CLIP tower
// (clip-tiny + the SD-2 tokenizer fixture) into a random STAR transformer of that text width, decoded by
// star-tiny's VQ-VAE; --text-features with star-tiny's own transformer; the StageVAR preset; seeds; and
// bad input (clear message, exit 1, no file).

import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { decode } from 'fast-png';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { register as registerGenerate } from '../../cli/commands/generate.js';
import { openSafetensors } from '../../model/weights/safetensors.js';
import { writeSafetensors } from '../../model/weights/safetensors_writer.js';
import { expectRefusal, runCli } from './run_cli.js';
import { fixture, rng } from '../helpers.js';
import { randomStarState } from '../model/star_reference.js';

const STAR = fixture('star-tiny');
const VQ = join(STAR, 'vae.safetensors');
const PATCH = '1,2,3,4,5,7,9,12';
let scratch: string;
let MODEL: string; // random STAR transformer with CLIP-tiny's 64-wide text
let FEATURES: string; // star-tiny's golden text as a features file (with the "" rows as negative)
let NO_NEGATIVE: string;

const cli = (args: string[]) => runCli([registerGenerate], args);

const clip = (out: string, ...rest: string[]) => [
  'generate', '--model', MODEL, '--vae', VQ, '--text-encoder', fixture('clip-tiny'), '--tokenizer', fixture('clip-tokenizer'),
  '--prompt', 'a red fox in the snow', '--patch-nums', PATCH, '--out', out, ...rest,
];

beforeAll(async () => {
  scratch = await mkdtemp(join(tmpdir(), 'stagevar-star-'));
  const state = randomStarState({ depth: 3, width: 96, heads: 4, levels: 8, textWidth: 64, pooledWidth: 64, vocab: 4096, codeDim: 32, ffn: 160 }, rng(20261205));
  MODEL = join(scratch, 'star.safetensors');
  await writeSafetensors(MODEL, [...state].map(([name, t]) => ({ name, dtype: 'F32' as const, shape: t.shape, data: t.data })));
  // star-tiny's text rows: row 0 the prompt, row 1 the "" text; keep the valid positions of each.
  const golden = await openSafetensors(join(STAR, 'golden.safetensors'));
  const hidden = await golden.readTensorF32('text.hidden');
  const pooled = await golden.readTensorF32('text.pooled');
  const [, T, C] = golden.entry('text.hidden').shape;
  const mask = Array.from((await golden.readTensorToArray('text.mask')) as ArrayLike<number | bigint>, Number);
  await golden.close();
  const valid = (row: number) => {
    const rows = [...Array(T).keys()].filter((t) => mask[row * T + t] === 1);
    const out = new Float32Array(rows.length * C);
    rows.forEach((t, i) => out.set(hidden.subarray((row * T + t) * C, (row * T + t + 1) * C), i * C));
    return { data: out, len: rows.length };
  };
  const [p, u] = [valid(0), valid(1)];
  FEATURES = join(scratch, 'features.safetensors');
  await writeSafetensors(FEATURES, [
    { name: 'features', dtype: 'F32', shape: [p.len, C], data: p.data },
    { name: 'pooled', dtype: 'F32', shape: [1, C], data: pooled.subarray(0, C) },
    { name: 'negative', dtype: 'F32', shape: [u.len, C], data: u.data },
    { name: 'negative_pooled', dtype: 'F32', shape: [1, C], data: pooled.subarray(C, 2 * C) },
  ]);
  NO_NEGATIVE = join(scratch, 'no-negative.safetensors');
  await writeSafetensors(NO_NEGATIVE, [{ name: 'features', dtype: 'F32', shape: [p.len, C], data: p.data }]);
});

afterAll(async () => {
  await rm(scratch, { recursive: true, force: true });
});

async function png(path: string) {
  const img = decode(await readFile(path));
  return { width: img.width, height: img.height, channels: img.channels };
}

describe('stagevar generate on STAR', () => {
  it('encodes the prompt with CLIP, runs the 8 scales and writes a 192×192 PNG; a seed gives one image', async () => {
    const [a, b, c] = ['a.png', 'b.png', 'c.png'].map((n) => join(scratch, n));
    const r = await cli(clip(a, '--seed', '3'));
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/loaded STAR \(3 layers, width 96, 4096 codes\)/);
    expect(r.stderr.match(/scale +\d+\/8/g)).toHaveLength(8);
    expect(await png(a)).toEqual({ width: 192, height: 192, channels: 3 });
    // Seeds, on the first 5 scales (each decode of the 192² image costs seconds on lavapipe).
    const short = ['--patch-nums', '1,2,3,4,5', '--quiet'];
    expect((await cli(clip(b, '--seed', '3', ...short))).code).toBe(0);
    expect((await cli(clip(a, '--seed', '3', ...short))).code).toBe(0);
    expect((await cli(clip(c, '--seed', '4', ...short))).code).toBe(0);
    expect(await png(a)).toEqual({ width: 80, height: 80, channels: 3 });
    expect(Buffer.compare(await readFile(a), await readFile(b))).toBe(0);
    expect(Buffer.compare(await readFile(a), await readFile(c))).not.toBe(0);
  });

  it('--policy stagevar: the last two scales on the "" rows, per-layer RP at the last; seeded', async () => {
    const [a, b, v] = ['sv-a.png', 'sv-b.png', 'vanilla.png'].map((n) => join(scratch, n));
    const r = await cli(clip(join(scratch, 'sv-full.png'), '--seed', '5', '--policy', 'stagevar', '--quiet'));
    expect(r.code, r.stderr).toBe(0);
    expect(await png(join(scratch, 'sv-full.png'))).toEqual({ width: 192, height: 192, channels: 3 });
    // The rest on the first 5 scales (the preset then works on scales 3 and 4), to keep the decodes small:
    // the trace, one image per scale and timings.json marking the branches and the per-layer ranks …
    const short = ['--patch-nums', '1,2,3,4,5', '--quiet'];
    const trace = join(scratch, 'trace');
    const t = await cli(clip(a, '--seed', '5', '--policy', 'stagevar', '--trace', trace, ...short));
    expect(t.code, t.stderr).toBe(0);
    expect((await readdir(trace)).filter((f) => f.endsWith('.png'))).toHaveLength(5);
    const timings = JSON.parse(await readFile(join(trace, 'timings.json'), 'utf8'));
    expect(timings.scales.map((s: { branches: string }) => s.branches)).toEqual(['both', 'both', 'both', 'uncond', 'uncond']);
    expect([timings.template, timings.resolution]).toEqual([1, null]); // 80² is no released size class
    expect(timings.scales[4]).toMatchObject({ run: true, cfg: 0, rows: 1, policy: { kind: 'random-projection', rope: 'sampled-slots' } });
    expect(timings.scales[4].policy.ranks).toHaveLength(3);
    // … and the seeded draws: the same seed gives the same image, vanilla another.
    expect((await cli(clip(b, '--seed', '5', '--policy', 'stagevar', ...short))).code).toBe(0);
    expect((await cli(clip(v, '--seed', '5', ...short))).code).toBe(0);
    expect(Buffer.compare(await readFile(a), await readFile(b))).toBe(0);
    expect(Buffer.compare(await readFile(a), await readFile(v))).not.toBe(0);
  });

  it('--text-features with the "" rows as negative (star-tiny\'s own transformer), batch 2', async () => {
    const out = join(scratch, 'features.png');
    const r = await cli(['generate', '--model', join(STAR, 'model.safetensors'), '--vae', VQ, '--text-features', FEATURES, '--patch-nums', '1,2,3,4,5', '--batch', '2', '--seed', '1', '--out', out, '--quiet']);
    expect(r.code, r.stderr).toBe(0);
    expect(await png(join(scratch, 'features-0.png'))).toEqual({ width: 80, height: 80, channels: 3 });
    expect(await png(join(scratch, 'features-1.png'))).toEqual({ width: 80, height: 80, channels: 3 });
    expect(Buffer.compare(await readFile(join(scratch, 'features-0.png')), await readFile(join(scratch, 'features-1.png')))).not.toBe(0);
  });

  it('warns when a prompt is cut at 77 tokens', async () => {
    const r = await cli(clip(join(scratch, 'long.png'), '--seed', '1', '--quiet', '--prompt', 'word '.repeat(90), '--patch-nums', '1,2,3', '--kv-cache', 'f16', '--precision', 'f16'));
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/warning: CLIP tokenizer: the prompt has 90 tokens; only the first 75 are kept/);
  });

  describe('bad input: a clear message, exit code 1, no file', () => {
    const cases: Array<[string, (out: string) => string[], RegExp]> = [
      ['a non-square ratio', (o) => clip(o, '--ratio', '16:9'), /STAR generates square images only/],
      ['an Infinity preset', (o) => clip(o, '--policy', 'fastvar'), /fastvar is an Infinity preset; STAR has vanilla, stagevar/],
      ['an alpha STAR has no row for', (o) => clip(o, '--policy', 'stagevar', '--alpha', '0.5'), /no row in STAR's StageVAR rank table: use one of 0\.999, 0\.99/],
      ['a size the model has no levels for', (o) => clip(o, '--patch-nums', '1,2,3,4,5,6,7,8,9'), /9 scales; the model has level embeddings for 8/],
      ['the default 1024 list on an 8-level model', (o) => clip(o).filter((_, i, a) => a[i] !== '--patch-nums' && a[i - 1] !== '--patch-nums'), /size 1024 needs 14 scales but the model has level embeddings for 8/],
      ['features without the "" rows', (o) => ['generate', '--model', join(STAR, 'model.safetensors'), '--vae', VQ, '--text-features', NO_NEGATIVE, '--patch-nums', PATCH, '--out', o], /STAR's unconditional rows are the CLIP states of ""/],
      ['an Infinity VAE with a STAR model', (o) => ['generate', '--model', MODEL, '--vae', fixture('infinity-tiny', 'vae.safetensors'), '--text-features', FEATURES, '--out', o], /this is an Infinity BSQ-VAE, not STAR's VQ-VAE/],
      ['a STAR VQ-VAE with an Infinity model', (o) => ['generate', '--model', fixture('infinity-tiny', 'model.safetensors'), '--vae', VQ, '--text-features', FEATURES, '--out', o], /this is STAR's VQ-VAE, not an Infinity BSQ-VAE/],
      ['--patch-nums with an Infinity model', (o) => ['generate', '--model', fixture('infinity-tiny', 'model.safetensors'), '--vae', fixture('infinity-tiny', 'vae.safetensors'), '--text-features', FEATURES, '--patch-nums', '1,2', '--out', o], /--patch-nums applies to STAR models only/],
      ['a missing text encoder folder', (o) => clip(o).map((a) => (a === fixture('clip-tiny') ? join(scratch, 'no-clip') : a)), /text encoder folder not found: .*no-clip/],
    ];
    it.each(cases)('%s', (_name, args, message) => expectRefusal(cli, scratch, args, message));
  });
});
