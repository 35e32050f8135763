// `stagevar generate` end to end on the infinity-tiny weights with --text-features (the fixture's golden
// text features written to a file here): image size per size/ratio, PNGs that decode, batches, the trace,
// determinism of the PNG bytes, and bad input (clear message, exit ≠ 0, no output file).

import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { decode } from 'fast-png';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { register as registerDemo } from '../../cli/commands/demo.js';
import { register as registerGenerate } from '../../cli/commands/generate.js';
import { openSafetensors } from '../../model/weights/safetensors.js';
import { writeSafetensors } from '../../model/weights/safetensors_writer.js';
import { expectRefusal, runCli } from './run_cli.js';
import { fixture } from '../helpers.js';
import { writeProbeVae } from '../sampler/probe_vae.js';

const dir = fixture('infinity-tiny');
const MODEL = join(dir, 'model.safetensors');
const VAE = join(dir, 'vae.safetensors');
let scratch: string;
let PROBE: string;
let FEATURES: string;
let TWO_PROMPTS: string;
let NARROW: string;
let LONG: string;
let NOTES: string;

const cli = (args: string[]) => runCli([registerGenerate, registerDemo], args);

const base = (out: string, ...rest: string[]) => ['generate', '--model', MODEL, '--vae', PROBE, '--text-features', FEATURES, '--out', out, '--size', '256', ...rest];

beforeAll(async () => {
  scratch = await mkdtemp(join(tmpdir(), 'stagevar-generate-'));
  PROBE = join(scratch, 'probe-vae.safetensors');
  await writeProbeVae(PROBE);
  const golden = await openSafetensors(join(dir, 'golden.safetensors'));
  const kv = await golden.readTensorF32('text.kv_compact');
  await golden.close();
  FEATURES = join(scratch, 'features.safetensors');
  await writeSafetensors(FEATURES, [
    { name: 'features', dtype: 'F32', shape: [7, 256], data: kv },
    { name: 'lens', dtype: 'I32', shape: [1], data: new Int32Array([7]) },
  ]);
  TWO_PROMPTS = join(scratch, 'two.safetensors');
  await writeSafetensors(TWO_PROMPTS, [
    { name: 'features', dtype: 'F32', shape: [7, 256], data: kv },
    { name: 'lens', dtype: 'I32', shape: [2], data: new Int32Array([3, 4]) },
  ]);
  NARROW = join(scratch, 'narrow.safetensors');
  await writeSafetensors(NARROW, [{ name: 'features', dtype: 'F32', shape: [7, 64], data: new Float32Array(7 * 64) }]);
  NOTES = join(scratch, 'notes.txt');
  await writeFile(NOTES, 'these are not weights\n'.repeat(100));
  LONG = join(scratch, 'long.safetensors');
  await writeSafetensors(LONG, [{ name: 'features', dtype: 'F32', shape: [600, 256], data: new Float32Array(600 * 256).fill(0.1) }]);
});

afterAll(async () => {
  await rm(scratch, { recursive: true, force: true });
});

async function png(path: string) {
  const img = decode(await readFile(path));
  return { width: img.width, height: img.height, channels: img.channels, depth: img.depth };
}

describe('stagevar generate (infinity-tiny, --text-features)', () => {
  it('writes a 256×256 RGB PNG through the fixture decoder, with one progress line per scale', async () => {
    const out = join(scratch, 'real', 'cat.png');
    await mkdir(join(scratch, 'real'));
    const r = await cli(['generate', '--model', MODEL, '--vae', VAE, '--text-features', FEATURES, '--out', out, '--size', '256', '--seed', '3']);
    expect(r.code, r.stderr).toBe(0);
    expect(await png(out)).toEqual({ width: 256, height: 256, channels: 3, depth: 8 });
    expect(r.stderr.match(/scale +\d+\/7/g)).toHaveLength(7);
    expect(r.stderr).toMatch(/16×16 +256 tokens/);
    expect(r.stderr).toMatch(/wrote .*cat\.png \(256×256, seed 3\)/);
    expect(await readdir(join(scratch, 'real'))).toEqual(['cat.png']);
  });

  it('sizes the image by the ratio template (probe decoder: one pixel per latent cell)', async () => {
    // 16:9 (h:w) → template 1.75, "0.06M" final grid 21×12; 1:3 → template 0.333, final grid 9×27.
    for (const [ratio, w, h] of [['16:9', 12, 21], ['1:3', 27, 9], ['1:1', 16, 16]] as const) {
      const out = join(scratch, `ratio-${ratio.replace(':', 'x')}.png`);
      const r = await cli(base(out, '--ratio', ratio, '--seed', '1'));
      expect(r.code, r.stderr).toBe(0);
      expect(await png(out)).toEqual({ width: w, height: h, channels: 3, depth: 8 });
    }
  });

  it('gives identical PNG bytes for the same seed and different ones for another seed', async () => {
    const [a, b, c] = ['a', 'b', 'c'].map((n) => join(scratch, `det-${n}.png`));
    expect((await cli(base(a, '--seed', '42', '--quiet'))).code).toBe(0);
    expect((await cli(base(b, '--seed', '42', '--quiet'))).code).toBe(0);
    expect((await cli(base(c, '--seed', '43', '--quiet'))).code).toBe(0);
    expect(Buffer.compare(await readFile(a), await readFile(b))).toBe(0);
    expect(Buffer.compare(await readFile(a), await readFile(c))).not.toBe(0);
  });

  it('runs a StageVAR policy file: CFG 0 + RP/RTR at 12×12, the last scale skipped, marked in the trace', async () => {
    const policy = join(scratch, 'stagevar-256.json');
    await writeFile(policy, JSON.stringify({ name: 'sv256', scales: { 5: { cfg: 0, tokens: { kind: 'rp', ranks: [9, 40], rope: 'first-rows' } }, 6: { run: false } } }));
    const out = join(scratch, 'sv.png');
    const trace = join(scratch, 'sv-trace');
    const r = await cli(base(out, '--policy', policy, '--seed', '9', '--trace', trace, '--quiet'));
    expect(r.code, r.stderr).toBe(0);
    // The skipped 16×16 scale still decodes at the full grid: the latent of the scales that ran.
    expect(await png(out)).toMatchObject({ width: 16, height: 16 });
    const timings = JSON.parse(await readFile(join(trace, 'timings.json'), 'utf8'));
    expect(timings.scales[4]).toMatchObject({ run: true, branches: 'both', policy: 'all' });
    expect(timings.scales[5]).toMatchObject({ run: true, branches: 'uncond', cfg: 0, policy: { kind: 'random-projection', ranks: [9, 40] } });
    expect(timings.scales[6]).toMatchObject({ run: false });
    const again = join(scratch, 'sv-again.png');
    expect((await cli(base(again, '--policy', policy, '--seed', '9', '--quiet'))).code).toBe(0);
    expect(Buffer.compare(await readFile(out), await readFile(again))).toBe(0); // RP/RTR draws are seeded
  });

  it('runs the f16 activation path with an f16 KV cache (parity of that path: test/model/infinity_f16.test.ts)', async () => {
    await mkdir(join(scratch, 'f16'));
    const [a, b] = [join(scratch, 'f16', 'f32.png'), join(scratch, 'f16', 'f16.png')];
    expect((await cli(base(a, '--seed', '8', '--quiet', '--vae', PROBE))).code).toBe(0);
    const r = await cli(base(b, '--seed', '8', '--quiet', '--vae', PROBE, '--precision', 'f16', '--kv-cache', 'f16'));
    expect(r.code, r.stderr).toBe(0);
    expect(await png(b)).toEqual(await png(a));
  });

  it('writes out-0.png, out-1.png… for a batch, and the per-scale trace with timings', async () => {
    const folder = join(scratch, 'batch');
    await mkdir(folder);
    const trace = join(scratch, 'trace');
    const r = await cli(base(join(folder, 'out.png'), '--batch', '2', '--seed', '5', '--trace', trace, '--quiet'));
    expect(r.code, r.stderr).toBe(0);
    expect((await readdir(folder)).sort()).toEqual(['out-0.png', 'out-1.png']);
    expect(Buffer.compare(await readFile(join(folder, 'out-0.png')), await readFile(join(folder, 'out-1.png')))).not.toBe(0);
    const files = (await readdir(trace)).sort();
    expect(files.filter((f) => f.endsWith('.png'))).toHaveLength(14);
    expect(files).toContain('scale-00-0.png');
    expect(files).toContain('scale-06-1.png');
    expect(await png(join(trace, 'scale-00-1.png'))).toMatchObject({ width: 16, height: 16 });
    const timings = JSON.parse(await readFile(join(trace, 'timings.json'), 'utf8'));
    expect(timings.seeds).toEqual([5, 6]);
    expect(timings.scales).toHaveLength(7);
    expect(timings.scales[6]).toMatchObject({ scale: 6, grid: [16, 16], tokens: 256, run: true });
    expect(timings.peak_bytes).toBeGreaterThan(0);

    // Several prompts in the features file: one image each, no --batch needed.
    const two = join(folder, 'two.png');
    const t = await cli(['generate', '--model', MODEL, '--vae', PROBE, '--text-features', TWO_PROMPTS, '--out', two, '--size', '256', '--seed', '1', '--quiet']);
    expect(t.code, t.stderr).toBe(0);
    expect((await readdir(folder)).sort()).toEqual(['out-0.png', 'out-1.png', 'two-0.png', 'two-1.png']);
  });

  describe('bad input: a clear message, exit code 1, no file', () => {
    const cases: Array<[string, (out: string) => string[], RegExp]> = [
      ['missing model file', (o) => ['generate', '--model', join(scratch, 'nope.safetensors'), '--vae', VAE, '--text-features', FEATURES, '--out', o], /model file not found/],
      ['a VAE given as --model', (o) => ['generate', '--model', VAE, '--vae', VAE, '--text-features', FEATURES, '--out', o], /vae\.safetensors: this is an Infinity BSQ-VAE, not an Infinity transformer/],
      ['a transformer given as --vae', (o) => ['generate', '--model', MODEL, '--vae', MODEL, '--text-features', FEATURES, '--out', o], /model\.safetensors: this is an Infinity transformer, not an Infinity BSQ-VAE/],
      ['not a weights file', (o) => ['generate', '--model', NOTES, '--vae', VAE, '--text-features', FEATURES, '--out', o], /notes\.txt/],
      ['text features that are not a features file', (o) => ['generate', '--model', MODEL, '--vae', VAE, '--text-features', VAE, '--out', o], /no tensor "features"/],
      ['an impossible size', (o) => base(o, '--size', '300'), /size 300 is not supported: use one of 256, 512, 768, 1024/],
      ['an impossible ratio', (o) => base(o, '--ratio', '0:1'), /aspect ratio/],
      ['cfg out of range', (o) => base(o, '--cfg', '100'), /cfg 100 is out of range/],
      ['a cfg list of the wrong length', (o) => base(o, '--cfg', '1,2'), /2 values but size 256 has 7 scales/],
      ['tau of zero', (o) => base(o, '--tau', '0'), /tau 0 is out of range/],
      ['top-p above 1', (o) => base(o, '--top-p', '1.5'), /top-p 1.5 is out of range/],
      ['top-p of 0', (o) => base(o, '--top-p', '0'), /top-p 0 is out of range/],
      ['a negative seed', (o) => base(o, '--seed', '-4'), /--seed "-4" must be an integer/],
      ['an unknown precision', (o) => base(o, '--precision', 'f64'), /--precision "f64" is not one of f32, f16/],
      ['an unknown KV cache dtype', (o) => base(o, '--kv-cache', 'bf16'), /--kv-cache "bf16" is not one of f32, f16/],
      ['a prompt with --text-features', (o) => base(o, '--prompt', 'a cat'), /--prompt cannot be used with --text-features/],
      ['no text source', (o) => ['generate', '--model', MODEL, '--vae', VAE, '--out', o], /exactly one of --text-encoder/],
      ['features of the wrong width', (o) => ['generate', '--model', MODEL, '--vae', PROBE, '--text-features', NARROW, '--out', o, '--size', '256'], /text features are 64 wide but the model expects 256/],
      ['a prompt over 512 tokens', (o) => ['generate', '--model', MODEL, '--vae', PROBE, '--text-features', LONG, '--out', o, '--size', '256'], /prompt 0 has 600 tokens; the model takes at most 512/],
      ['a missing output folder', () => base(join(scratch, 'no-such-dir', 'x.png')), /the folder of --out .* does not exist/],
      ['a batch the prompts do not fit', (o) => ['generate', '--model', MODEL, '--vae', PROBE, '--text-features', TWO_PROMPTS, '--out', o, '--size', '256', '--batch', '3'], /2 prompts for a batch of 3/],
    ];
    it.each(cases)('%s', (_name, args, message) => expectRefusal(cli, scratch, args, message));

    it('a missing required option is a usage error', async () => {
      const r = await cli(['generate', '--model', MODEL, '--vae', VAE, '--text-features', FEATURES]);
      expect(r.code).toBe(1);
      expect(r.stderr).toMatch(/--out/);
    });

    it("a text encoder whose width is not the model's", () =>
      expectRefusal(cli, scratch, (o) => ['generate', '--model', MODEL, '--vae', PROBE, '--text-encoder', fixture('t5-tiny'), '--tokenizer', fixture('t5-tokenizer'), '--prompt', 'a cat', '--out', o, '--size', '256'], /gives 64-wide features but the model expects 256/));
  });
});
