// The Infinity transformer's f16 paths: f16 activations (needs shader-f16) and an f16 KV cache (portable),
// teacher-forced on infinity-tiny against the official code's f32 fixture with the f16 bar (F16_TOL, see
// model/infinity/parity.ts), plus the cache's append/view/attention on f16 directly, and the errors a
// device without shader-f16 gives.

import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Gpu } from '../../engine/device.js';
import { f32ToF16Array, roundThrough } from '../../engine/dtype.js';
import { attention, attentionRef } from '../../kernels/attention.js';
import { layerNorm } from '../../kernels/norms.js';
import { KvCache } from '../../model/kv_cache.js';
import { InfinityModel } from '../../model/infinity/model.js';
import {
  F16_TOL,
  F32_TOL,
  compareWithGolden,
  fixtureInputs,
  loadFixtureModel,
  openInfinityFixture,
  parityTolerance,
  type FixtureInputs,
  type InfinityFixture,
  type ParityEntry,
} from '../../model/infinity/parity.js';
import { runTeacherForced, type TeacherForcedResult } from '../../model/infinity/teacher_forced.js';
import { runParity } from '../../model/parity/fixtures.js';
import { relMaxError } from '../../model/parity/measure.js';
import { expectClose, fixture, randn, releaseTestGpu, rng, runSeed, testGpu } from '../helpers.js';
import { expectEntries, printEntries } from './infinity_parity_helpers.js';

afterAll(releaseTestGpu);

describe(`Infinity f16 paths on infinity-tiny (seed ${runSeed})`, () => {
  let f: InfinityFixture;
  let inputs: FixtureInputs;
  /** Loaded with activations 'f16' (when the device has shader-f16). */
  let f16Model: InfinityModel | null = null;
  /** Loaded with the default precision; f16 caches are asked for per replay. */
  let f32Model: InfinityModel;
  const entries: ParityEntry[] = [];

  const replay = (model: InfinityModel, extra: { runScales?: number; cacheDtype?: 'f32' | 'f16'; collectHidden?: boolean } = {}): Promise<TeacherForcedResult> =>
    runTeacherForced(f32Model.gpu, model, {
      textFeatures: inputs.text, textLens: inputs.lens, bitsPerScale: inputs.bits,
      scaleSchedule: f.schedule, ratio: f.ratio, cfg: f.cfg, ...extra,
    });

  beforeAll(async () => {
    const gpu = await testGpu();
    f = await openInfinityFixture(fixture('infinity-tiny'));
    inputs = await fixtureInputs(f);
    f32Model = await loadFixtureModel(gpu, f);
    if (gpu.hasF16) f16Model = await loadFixtureModel(gpu, f, { activations: 'f16' });
  }, 120_000);

  afterAll(async () => {
    printEntries('infinity-tiny f16 paths', entries);
    f16Model?.dispose();
    f32Model?.dispose();
    await f?.golden.close();
  });

  it('the f16 bar sits between f16 rounding and a wrong operation', () => {
    expect(parityTolerance({})).toBe(F32_TOL);
    expect(parityTolerance({ cacheDtype: 'f16' })).toBe(F16_TOL);
    expect(parityTolerance({ activations: 'f16' })).toBe(F16_TOL);
    expect(F16_TOL).toBeGreaterThan(F32_TOL);
    expect(F16_TOL).toBeLessThan(1e-1);
  });

  it('f16 activations: every logits, hidden and the latent key within the f16 bar, and not the f32 path', async (ctx) => {
    if (!f16Model) return ctx.skip(); // no shader-f16: the refusal is tested below
    expect(f16Model.precision).toEqual({ activations: 'f16', cacheDtype: 'f32' });
    const depth = f16Model.config.depth;
    const result = await replay(f16Model, { collectHidden: true });
    const mine = (await compareWithGolden(f, result, depth, F16_TOL)).map((e) => ({ ...e, key: `f16 ${e.key}` }));
    entries.push(...mine);
    expectEntries(entries, 'f16 logits.', f.schedule.length);
    expectEntries(entries, 'f16 hidden.', f.schedule.length * depth);
    expectEntries(entries, 'f16 latent', 1);

    // The same replay on the f32 path (first scales): the f16 run must differ from it by more than f32
    // noise — f16 storage rounds by up to 4.9e-4 relative, an f32 re-run is bit-identical — so the f16
    // kernels really ran. And the f32 path must still be the more accurate one.
    const scales = 3;
    const ref = await replay(f32Model, { runScales: scales });
    for (let s = 0; s < scales; s++) {
      const golden = await f.golden.readTensorF32(`logits.${s}`);
      const apart = relMaxError(result.logits[s], ref.logits[s]);
      expect(apart, `logits.${s}: f16 vs f32 path`).toBeGreaterThan(1e-5);
      expect(relMaxError(ref.logits[s], golden), `logits.${s}: f32 path`).toBeLessThan(relMaxError(result.logits[s], golden));
    }
  });

  it('f16 KV cache with f32 activations (and with f16 activations): within the f16 bar', async () => {
    const depth = f32Model.config.depth;
    const result = await replay(f32Model, { cacheDtype: 'f16', collectHidden: true });
    entries.push(...(await compareWithGolden(f, result, depth, F16_TOL)).map((e) => ({ ...e, key: `kv16 ${e.key}` })));
    expectEntries(entries, 'kv16 logits.', f.schedule.length);
    expectEntries(entries, 'kv16 hidden.', f.schedule.length * depth);
    // Keys and values rounded to f16 change the result (the cache really is f16), by f16 amounts.
    const ref = await replay(f32Model, { runScales: 2 });
    expect(relMaxError(result.logits[1], ref.logits[1])).toBeGreaterThan(1e-5);
    if (f16Model) {
      const both = await replay(f16Model, { cacheDtype: 'f16', runScales: 4 });
      for (let s = 0; s < 4; s++) {
        entries.push({ key: `f16+kv16 logits.${s}`, error: relMaxError(both.logits[s], await f.golden.readTensorF32(`logits.${s}`)), tol: F16_TOL });
      }
      expectEntries(entries, 'f16+kv16 ', 4);
    }
  });

  it('the refusal of runParity (what `stagevar parity --precision/--kv-cache` runs) for kinds without f16 paths', async () => {
    const gpu = await testGpu();
    await expect(runParity(gpu, fixture('t5-tiny'), undefined, { cacheDtype: 'f16' })).rejects.toThrow(
      /parity: cacheDtype f16 is supported for infinity, infinity-8b, star fixtures only; .* is a t5 fixture/,
    );
    await expect(runParity(gpu, fixture('clip-tiny'), undefined, { activations: 'f16' })).rejects.toThrow(/activations f16 .* is a clip fixture/);
  });
});

describe(`Infinity KV cache in f16 (seed ${runSeed})`, () => {
  // Exact expectations: f32 → f16 on append is the cast kernel's round-to-nearest-even (the host's
  // f32ToF16Array is the same rounding), f16 → f32 widening is exact; attention then sees those values.
  it('appends f32 and f16 keys/values into f16 and f32 caches, keeps per-row lengths, and attends over the views', async () => {
    const gpu = await testGpu();
    const rand = rng(runSeed + 7);
    const [rows, C, H] = [3, 136, 2]; // head dim 68: not a power of two
    for (const cacheDtype of ['f16', 'f32'] as const) {
      const cache = new KvCache(gpu, 2, rows, C, 7, cacheDtype);
      try {
        expect(cache.capacity).toBe(64);
        expect(cache.k[1].dtype).toBe(cacheDtype);
        // Rows 1..2, layer 1: 5 tokens from f32 tensors, then 2 from f16 ones (as the f16 path appends).
        const k1 = randn(2 * 5 * C, rand);
        const v1 = randn(2 * 5 * C, rand);
        const k2 = roundThrough('f16', randn(2 * 2 * C, rand));
        const v2 = roundThrough('f16', randn(2 * 2 * C, rand));
        const range = { start: 1, count: 2 };
        expect(cache.append(1, range, gpu.upload(k1, [10, C], 'f32'), gpu.upload(v1, [10, C], 'f32'), 5)).toBe(5);
        expect(cache.append(1, range, gpu.upload(f32ToF16Array(k2), [4, C], 'f16'), gpu.upload(f32ToF16Array(v2), [4, C], 'f16'), 2)).toBe(7);
        expect(cache.lengths[1]).toEqual([0, 7, 7]);
        expect(cache.lengths[0]).toEqual([0, 0, 0]);
        // What row r of the range must hold: its 5 first tokens, then its 2 later ones.
        const held = (a: Float32Array, b: Float32Array, r: number) => {
          const out = new Float32Array(7 * C);
          out.set(a.subarray(r * 5 * C, (r + 1) * 5 * C));
          out.set(b.subarray(r * 2 * C, (r + 1) * 2 * C), 5 * C);
          return cacheDtype === 'f16' ? roundThrough('f16', out) : out;
        };
        const view = cache.view(1, range);
        expect(view.k.shape).toEqual([2, 64, C]);
        const kAll = await view.k.readF32();
        for (let r = 0; r < 2; r++) {
          expect(Array.from(kAll.subarray(r * 64 * C, (r * 64 + 7) * C)), `k of row ${r + 1}`).toEqual(Array.from(held(k1, k2, r)));
        }
        // Attention of two queries per row over the 7 cached tokens of each row.
        const q = randn(2 * 2 * C, rand);
        const o = attention(gpu, gpu.upload(q, [2, 2, C], 'f32'), view.k, view.v, { heads: H, scale: 0.2, kvLen: 7 });
        const kRef = new Float32Array(2 * 7 * C);
        const vRef = new Float32Array(2 * 7 * C);
        for (let r = 0; r < 2; r++) {
          kRef.set(held(k1, k2, r), r * 7 * C);
          vRef.set(held(v1, v2, r), r * 7 * C);
        }
        const seqs = [0, 1].map((r) => ({ q0: 2 * r, nq: 2, k0: 7 * r, nk: 7 }));
        // f32 attention over exactly the cached values: the attention tests' f32 bound.
        expectClose(await o.read(), attentionRef(q, kRef, vRef, C, { heads: H, scale: 0.2, seqs }), { rtol: 1e-5, atol: 1e-5, what: `attention over a ${cacheDtype} cache` });
        o.dispose();
        expect(() => cache.append(1, range, gpu.upload(k1, [10, C], 'f32'), gpu.upload(v1, [10, C], 'f32'), 60)).toThrow(/exceed the capacity 64/);
      } finally {
        cache.dispose();
      }
    }
    expect(() => new KvCache(gpu, 1, 1, 8, 1, 'bf16' as 'f16')).toThrow(/KV cache dtype must be 'f32' or 'f16', got bf16/);
  });
});

describe('a device without shader-f16', () => {
  let bare: Gpu;
  beforeAll(async () => {
    bare = await Gpu.create({ disableF16: true });
  });
  afterAll(() => bare?.destroy());

  it('refuses f16 activations with an error naming the feature (no silent f32 fallback); an f16 KV cache loads', async () => {
    expect(bare.hasF16).toBe(false);
    const path = join(fixture('infinity-tiny'), 'model.safetensors');
    await expect(InfinityModel.load(bare, path, { activations: 'f16', vaeChannels: 32 })).rejects.toThrow(
      /Infinity: activations 'f16' need the WebGPU feature shader-f16, which this device .* lacks; use activations 'f32'/,
    );
    await expect(InfinityModel.load(bare, path, { activations: 'f32', cacheDtype: 'bf16' as 'f16' })).rejects.toThrow(/cacheDtype must be 'f32' or 'f16', got bf16/);
    const model = await InfinityModel.load(bare, path, { cacheDtype: 'f16', vaeChannels: 32 });
    try {
      expect(model.precision).toEqual({ activations: 'f32', cacheDtype: 'f16' });
      // A per-generation override is checked the same way, before anything is computed.
      expect(() => model.begin({ text: { features: new Float32Array(0), lens: [], guidance: false }, schedule: [[1, 1]], ropeGrid: [1, 1], activations: 'f16' })).toThrow(/shader-f16/);
    } finally {
      model.dispose();
    }
    // The kernels refuse f16 storage there too.
    expect(() => layerNorm(bare, bare.empty([2, 8], 'f32'), { outDtype: 'f16' })).toThrow(/layer_norm: outDtype f16 needs the shader-f16 feature/);
  });
});
