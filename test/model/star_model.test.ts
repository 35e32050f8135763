import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { join } from 'node:path';
import type { Gpu } from '../../engine/device.js';
import type { Tensor } from '../../engine/tensor.js';
import type { StarGeneration } from '../../model/star/generation.js';
import { StarModel } from '../../model/star/model.js';
import { scalePositions } from '../../model/star/rope.js';
import { VarVqvae } from '../../model/star/vqvae.js';
import { fixture, randn, relMaxError, releaseTestGpu, rng, runSeed, testGpu } from '../helpers.js';
import { StarReference, memorySource, randomStarState, type RandomStarSizes, type RefText } from './star_reference.js';

afterAll(releaseTestGpu);

// f32 GPU arithmetic against a float64 reference: ~1e-6 relative; a wrong operation is ≥ 1e-2.
const TOL = 1e-4;

// Nothing like star-tiny: 3 blocks, 3 heads of 20 channels (RoPE with 5 pairs per axis), widths that are
// not powers of two, 2 prompts (4 sequence rows), fewer scales than level embeddings.
const SIZES: RandomStarSizes = { depth: 3, width: 60, heads: 3, levels: 4, textWidth: 36, pooledWidth: 40, vocab: 50, codeDim: 8, ffn: 240 };
const PATCH_NUMS = [1, 2, 3];
const B = 2;
const T = 5;
const MASK = Int32Array.from([1, 1, 1, 0, 0, 1, 1, 1, 1, 0, 1, 1, 0, 0, 0, 1, 1, 0, 0, 0]);

/** (x, y) pairs of a position array. */
const pairs = (p: ArrayLike<number>): Array<[number, number]> => Array.from({ length: p.length / 2 }, (_, i) => [p[2 * i], p[2 * i + 1]]);

describe(`STAR transformer building blocks vs a float64 reference (seed ${runSeed})`, () => {
  const rand = rng(runSeed);
  const dict = randomStarState(SIZES, rand);
  const text: RefText = { hidden: randn(2 * B * T * SIZES.textWidth, rand), mask: MASK, pooled: randn(2 * B * SIZES.pooledWidth, rand), T };
  // Next-scale inputs [B, codeDim, pn, pn] for scales 1 and 2.
  const nexts = PATCH_NUMS.map((pn) => randn(B * SIZES.codeDim * pn * pn, rand));
  let gpu: Gpu;
  let model: StarModel;
  let gen: StarGeneration;
  const ref = new StarReference(dict, SIZES, text);
  const owned: Tensor[] = [];
  const up = (data: Float32Array, shape: number[]) => {
    const t = gpu.upload(data, shape, 'f32');
    owned.push(t);
    return t;
  };
  /** Tokens [L][codeDim] of prompt b of a next-scale input. */
  const tokensOf = (next: Float32Array, b: number, pn: number) =>
    Array.from({ length: pn * pn }, (_, l) => Float32Array.from({ length: SIZES.codeDim }, (_, d) => next[(b * SIZES.codeDim + d) * pn * pn + l]));
  const flat = (rows: Float64Array[][]) => Float64Array.from(rows.flatMap((r) => r.flatMap((x) => [...x])));

  beforeAll(async () => {
    gpu = await testGpu();
    // FFN blocks of a few rows (≥ 3 rows of 240 hidden f32): the row-block path runs on every scale.
    model = await StarModel.load(gpu, memorySource(dict), { ffnBlockBytes: 3 * SIZES.ffn * 4 });
    const hidden = up(text.hidden, [2 * B, T, SIZES.textWidth]);
    const pooled = up(text.pooled, [2 * B, SIZES.pooledWidth]);
    gen = model.begin({ text: { hidden, mask: MASK, pooled }, patchNums: PATCH_NUMS, batch: B });
  });

  afterAll(() => {
    gen?.dispose();
    model?.dispose();
    for (const t of owned) t.dispose();
  });

  it('reads the architecture from names and shapes', () => {
    const c = model.config;
    expect([c.depth, c.width, c.heads, c.headDim, c.levels, c.textWidth, c.pooledWidth, c.vocab, c.codeDim, c.ffnWidth]).toEqual([3, 60, 3, 20, 4, 36, 40, 50, 8, 240]);
  });

  let logits1: Float64Array[][] = [];
  let gpuOut1: Tensor | null = null;

  it('scale 0 and 1 on both branches: logits of every row, cross-attention of row 0 broadcast', async () => {
    for (const si of [0, 1]) {
      const pn = PATCH_NUMS[si];
      const next = si === 0 ? null : up(nexts[si], [B, SIZES.codeDim, pn, pn]);
      const x = model.scaleInput(gen, si, next);
      const out = model.forward(x, gen, gen.step(si));
      x.dispose();
      const logits = model.head(out);
      const rows = new Map<number, Float64Array[]>();
      for (let r = 0; r < 2 * B; r++) rows.set(r, ref.input(si, r, si === 0 ? null : tokensOf(nexts[si], r % B, pn)));
      ref.step(rows, pairs(scalePositions(pn)), 0);
      const want = [...rows.values()].map((xs) => xs.map((v) => ref.head(v)));
      expect(relMaxError(await logits.read(), flat(want))).toBeLessThan(TOL);
      logits.dispose();
      if (si === 1) {
        logits1 = want;
        gpuOut1 = out;
      } else out.dispose();
    }
  });

  it('fuses CFG before the head: (1+t)·cond − t·uncond of the raw logits', async () => {
    const out = gpuOut1!;
    const t = 1.7;
    const mixed = model.guidedHead(out, t);
    const want = flat(logits1.slice(0, B)).map((c, i) => (1 + t) * c - t * flat(logits1.slice(B))[i]);
    expect(relMaxError(await mixed.read(), want)).toBeLessThan(TOL);
    mixed.dispose();
    out.dispose();
  });

  it('last scale on the unconditional rows alone (CFG 0): their own caches, their own text row', async () => {
    const si = 2;
    const pn = PATCH_NUMS[si];
    const rowsRange = gen.uncondRows();
    const x = model.scaleInput(gen, si, up(nexts[si], [B, SIZES.codeDim, pn, pn]), rowsRange);
    const step = gen.step(si, rowsRange);
    expect(step.textRow).toBe(B);
    const out = model.forward(x, gen, step);
    x.dispose();
    const logits = model.head(out);
    out.dispose();
    const rows = new Map<number, Float64Array[]>();
    for (let r = B; r < 2 * B; r++) rows.set(r, ref.input(si, r, tokensOf(nexts[si], r % B, pn)));
    ref.step(rows, pairs(scalePositions(pn)), B);
    const want = [...rows.values()].map((xs) => xs.map((v) => ref.head(v)));
    expect(relMaxError(await logits.read(), flat(want))).toBeLessThan(TOL);
    logits.dispose();
    expect(gen.cache.lengths[0]).toEqual([5, 5, 14, 14]);
  });

  it('one layer on an arbitrary row with arbitrary tokens and RoPE positions (projected rows)', async () => {
    const C = SIZES.width;
    const positions = Float32Array.from([0, 0, 64, 0, 12.5, 40, 3, 64, 64, 64]);
    const xs = Array.from({ length: 5 }, () => Float64Array.from(randn(C, rand)));
    const x = up(Float32Array.from(xs.flatMap((v) => [...v])), [5, C]);
    const rope = model.ropeTable(positions);
    const row = { start: 2 * B - 1, count: 1 };
    model.runLayer(0, x, gen, { rows: row, tokens: 5, rope, textRow: row.start });
    rope.dispose();
    const rows = ref.step(new Map([[row.start, xs]]), pairs(positions), row.start, 1);
    expect(relMaxError(await x.read(), flat([rows.get(row.start)!]))).toBeLessThan(TOL);
    expect(gen.cache.lengths[0][row.start]).toBe(19);
  });
});

describe(`STAR in half precision (seed ${runSeed})`, () => {
  it('an f16 KV cache stays near the f32 logits', async () => {
    const gpu = await testGpu();
    const rand = rng(runSeed + 7);
    const dict = randomStarState(SIZES, rand);
    const hidden = gpu.upload(randn(2 * T * SIZES.textWidth, rand), [2, T, SIZES.textWidth], 'f32');
    const pooled = gpu.upload(randn(2 * SIZES.pooledWidth, rand), [2, SIZES.pooledWidth], 'f32');
    const next = gpu.upload(randn(SIZES.codeDim * 4, rand), [1, SIZES.codeDim, 2, 2], 'f32');
    const text = { hidden, mask: MASK.subarray(0, 2 * T), pooled };
    const run = async (model: StarModel, cacheDtype: 'f32' | 'f16') => {
      const gen = model.begin({ text, patchNums: PATCH_NUMS, cacheDtype });
      let logits: Float32Array = new Float32Array();
      for (const si of [0, 1]) {
        const x = model.scaleInput(gen, si, si === 0 ? null : next);
        const out = model.forward(x, gen, gen.step(si));
        const l = model.head(out);
        logits = (await l.read()) as Float32Array;
        for (const t of [x, out, l]) t.dispose();
      }
      gen.dispose();
      return logits;
    };
    const model = await StarModel.load(gpu, memorySource(dict));
    const want = await run(model, 'f32');
    // f16 keys/values: ~1e-3 relative, far from the 1e-1 of a wrong operation. (f16 matrices go through
    // the same linear with another weight type; compiling those variants on lavapipe costs a minute.)
    expect(relMaxError(await run(model, 'f16'), want)).toBeLessThan(1e-2);
    for (const t of [hidden, pooled, next]) t.dispose();
    model.dispose();
  });
});

describe('STAR loaders name the family of a wrong checkpoint', () => {
  it('refuses an Infinity transformer, a VQ-VAE given as STAR, and the reverse', async () => {
    const gpu = await testGpu();
    await expect(StarModel.load(gpu, join(fixture('infinity-tiny'), 'model.safetensors'))).rejects.toThrow(/is an Infinity transformer, not a STAR transformer/);
    await expect(StarModel.load(gpu, join(fixture('star-tiny'), 'vae.safetensors'))).rejects.toThrow(/is STAR's VQ-VAE, not a STAR transformer/);
    await expect(VarVqvae.load(gpu, join(fixture('star-tiny'), 'model.safetensors'))).rejects.toThrow(/is a STAR transformer, not STAR's VQ-VAE/);
    await expect(VarVqvae.load(gpu, join(fixture('infinity-tiny'), 'vae.safetensors'))).rejects.toThrow(/is an Infinity BSQ-VAE, not STAR's VQ-VAE/);
  });

  it('reads star-tiny\'s sizes from its tensors', async () => {
    const gpu = await testGpu();
    const model = await StarModel.load(gpu, join(fixture('star-tiny'), 'model.safetensors'));
    const c = model.config;
    expect([c.depth, c.width, c.heads, c.headDim, c.levels, c.textWidth, c.pooledWidth, c.vocab, c.codeDim, c.ffnWidth]).toEqual([2, 128, 2, 64, 8, 1024, 1024, 4096, 32, 512]);
    model.dispose();
  });
});
