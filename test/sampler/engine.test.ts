// The library API on the infinity-tiny transformer with a probe decoder (one pixel per latent cell, so
// decoding is instant): progress events, traces, negative features, custom plans, aborts, errors.

import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { openSafetensors } from '../../model/weights/safetensors.js';
import { InfinityModel } from '../../model/infinity/model.js';
import { DemoPromptEncoder, demoDecoder, loadDemoInfinity } from '../../sampler/demo_model.js';
import { Engine, GenerationProgressEvent, WarningEvent, type GenerateOptions, type ProgressInfo } from '../../sampler/engine.js';
import { checkLevels } from '../../sampler/options.js';
import type { TextFeatures } from '../../sampler/text.js';
import { fixture } from '../helpers.js';
import { writeProbeVae } from './probe_vae.js';

let engine: Engine;
let scratch: string;
let text: TextFeatures;
const warnings: string[] = [];

beforeAll(async () => {
  scratch = await mkdtemp(join(tmpdir(), 'stagevar-engine-'));
  const vae = join(scratch, 'probe.safetensors');
  await writeProbeVae(vae);
  const dir = fixture('infinity-tiny');
  const golden = await openSafetensors(join(dir, 'golden.safetensors'));
  text = { features: await golden.readTensorF32('text.kv_compact'), lens: [7], width: 256 };
  await golden.close();
  engine = await Engine.create();
  engine.addEventListener('warning', (e) => warnings.push((e as WarningEvent).message));
  await expect(engine.generate({ textFeatures: text })).rejects.toThrow(/no model loaded/);
  const info = await engine.loadInfinity({ model: join(dir, 'model.safetensors'), vae });
  expect(info).toMatchObject({ name: 'infinity', depth: 4, width: 256, textWidth: 256, bitsPerToken: 32, vaeChannels: 32, vaeStride: 1, textEncoder: null });
});

afterAll(async () => {
  engine?.dispose();
  await rm(scratch, { recursive: true, force: true });
});

const opts = (extra: Partial<GenerateOptions> = {}): GenerateOptions => ({ textFeatures: text, size: 256, seed: 21, keepBits: true, ...extra });

describe('Engine', () => {
  it('reports progress by callback and by event, and returns images, seeds and per-scale stats', async () => {
    const byCallback: ProgressInfo[] = [];
    const byEvent: ProgressInfo[] = [];
    const listener = (e: Event) => byEvent.push((e as GenerationProgressEvent).info);
    engine.addEventListener('progress', listener);
    const traced: Array<[number, Uint8Array]> = [];
    const r = await engine.generate(opts({ onProgress: (p) => byCallback.push(p), onScaleImages: (s, imgs) => void traced.push([s, imgs[0].data]) }));
    engine.removeEventListener('progress', listener);
    expect(byEvent).toEqual(byCallback);
    expect(byCallback.map((p) => (p.phase === 'scale' ? `scale ${p.stats.scale}` : p.phase))).toEqual([
      'text',
      ...[0, 1, 2, 3, 4, 5, 6].map((s) => `scale ${s}`),
      'decode',
    ]);
    expect(r.images).toHaveLength(1);
    expect(r.images[0]).toMatchObject({ width: 16, height: 16 });
    expect(r.images[0].data).toHaveLength(16 * 16 * 3);
    expect(r).toMatchObject({ seeds: [21], template: 1, resolution: '0.06M' });
    expect(r.stats.scales.map((s) => s.tokens)).toEqual([1, 4, 16, 36, 64, 144, 256]);
    expect(r.stats.transformerMs).toBeGreaterThan(0);
    expect(r.stats.totalMs).toBeGreaterThanOrEqual(r.stats.transformerMs + r.stats.decodeMs);
    expect(r.stats.peakBytes).toBeGreaterThan(5_000_000); // the bf16 weights alone are ~10 MB
    // The trace: one decode per scale, the last one is the result.
    expect(traced.map(([s]) => s)).toEqual([0, 1, 2, 3, 4, 5, 6]);
    expect(Array.from(traced[6][1])).toEqual(Array.from(r.images[0].data));
    expect(Array.from(traced[0][1])).not.toEqual(Array.from(r.images[0].data));
  });

  it('uses negative features in place of the learned unconditional text, and warns when guidance is off', async () => {
    const plain = await engine.generate(opts());
    const negative = { ...text, features: text.features.map((v) => -v) };
    const neg = await engine.generate(opts({ negativeFeatures: negative }));
    expect(neg.bits!.flatMap((b) => Array.from(b))).not.toEqual(plain.bits!.flatMap((b) => Array.from(b)));
    warnings.length = 0;
    const off = await engine.generate(opts({ cfg: 1, negativeFeatures: negative }));
    const offPlain = await engine.generate(opts({ cfg: 1 }));
    expect(warnings.join('\n')).toMatch(/negative prompt is ignored: guidance is off/);
    expect(off.bits!.flatMap((b) => Array.from(b))).toEqual(offPlain.bits!.flatMap((b) => Array.from(b)));
    expect(off.stats.scales.every((s) => s.rows === 1)).toBe(true);
  });

  it('lets a caller change the per-scale plan', async () => {
    const r = await engine.generate(opts({ plan: (plans) => plans.map((p) => (p.scale === 6 ? { ...p, run: false } : p)) }));
    expect(r.plans[6].run).toBe(false);
    expect(r.stats.scales[6]).toMatchObject({ run: false, ms: 0 });
    await expect(engine.generate(opts({ plan: (plans) => plans.slice(1) }))).rejects.toThrow(/6 scale plans/);
  });

  it('rejects bad requests before any GPU work, and honours an aborted signal', async () => {
    await expect(engine.generate(opts({ prompt: 'a cat', textFeatures: undefined }))).rejects.toThrow(/prompts need a text encoder/);
    await expect(engine.generate(opts({ prompt: 'a cat' }))).rejects.toThrow(/prompts or text features, not both/);
    await expect(engine.generate({ size: 256 })).rejects.toThrow(/nothing to generate from/);
    await expect(engine.generate(opts({ topP: 2 }))).rejects.toThrow(/top-p 2 is out of range/);
    await expect(engine.generate(opts({ size: 640 }))).rejects.toThrow(/size 640 is not supported/);
    await expect(engine.generate(opts({ textFeatures: { ...text, width: 128, features: new Float32Array(7 * 128) } }))).rejects.toThrow(/128 wide/);
    expect(() => checkLevels(1024, 13, 7)).toThrow(/needs 13 scales but the model has level embeddings for 7/);
    const first = engine.generate(opts());
    await expect(engine.generate(opts())).rejects.toThrow(/already running/);
    await first;
    const ctl = new AbortController();
    ctl.abort();
    await expect(engine.generate(opts({ signal: ctl.signal }))).rejects.toThrow(/abort/i);
    // Still usable afterwards.
    expect((await engine.generate(opts())).images).toHaveLength(1);
  });

  it('is unusable after dispose', async () => {
    const other = await Engine.create({ gpu: engine.gpu });
    other.dispose();
    await expect(other.generate(opts())).rejects.toThrow(/disposed/);
    // The shared GPU was not the other engine's to destroy.
    expect((await engine.generate(opts())).images).toHaveLength(1);
  });
});

describe('Engine.inspectFiles pairs a transformer with its VAE from the headers alone', () => {
  it('names both files and what each expects when a 2B transformer meets the 14-bit VAE, or the reverse', async () => {
    const two = fixture('infinity-tiny');
    const eight = fixture('infinity8b-tiny');
    await expect(Engine.inspectFiles({ model: join(two, 'model.safetensors'), vae: join(eight, 'vae.safetensors') })).rejects.toThrow(
      /infinity-tiny\/model\.safetensors predicts 32 bits per token but .*infinity8b-tiny\/vae\.safetensors decodes 14 code channels.*needs a VAE with 32 code channels.*needs a transformer with 14 or 56 bits/,
    );
    await expect(Engine.inspectFiles({ model: join(eight, 'model.safetensors'), vae: join(two, 'vae.safetensors') })).rejects.toThrow(
      /predicts 56 bits per token but .* decodes 32 code channels.*needs a VAE with 56 code channels, or 14 with 2×2 patchify/,
    );
    const ok = await Engine.inspectFiles({ model: join(eight, 'model.safetensors'), vae: join(eight, 'vae.safetensors') });
    expect([ok.model.bits, ok.vae.codebook_dim, ok.model.patchify]).toEqual([56, 14, true]);
  });
});

describe('Engine.loadParts takes a pipeline the caller loaded (in-memory or synthetic weights)', () => {
  it('generates exactly what loadDemo gives from the same parts, checks the set, and frees the parts on unload', async () => {
    const gpu = engine.gpu;
    const viaDemo = await Engine.create({ gpu });
    const viaParts = await Engine.create({ gpu });
    try {
      await viaDemo.loadDemo();
      const request: GenerateOptions = { prompt: 'a red door', seed: 5, size: 256, keepBits: true };
      const expected = await viaDemo.generate(request);
      viaDemo.unload();

      const model = await loadDemoInfinity(gpu);
      const { decoder, weights } = demoDecoder(gpu);
      const text = new DemoPromptEncoder();
      // A set that does not fit is refused before anything is taken: the 8B-tiny transformer's latent has
      // 14 channels (56 bits, 2×2 patchify) but the demo decoder takes 32; a text encoder must give the
      // model's text width (the demo's: 64).
      const eight = await InfinityModel.load(gpu, join(fixture('infinity8b-tiny'), 'model.safetensors'));
      try {
        expect(() => viaParts.loadParts({ model: eight, decoder })).toThrow(/decoder takes 32 code channels but the model's latent has 14 \(56 bits per token, 2×2 patchify\)/);
      } finally {
        eight.dispose();
      }
      const narrow = { name: 'narrow', width: 63, encode: () => text.encode([]), dispose: () => {} };
      expect(() => viaParts.loadParts({ model, decoder, text: narrow })).toThrow(/text encoder "narrow" gives 63-wide features but the model expects 64/);
      expect(viaParts.model).toBeNull();
      weights[0].assertAlive(); // still the caller's

      const info = viaParts.loadParts({ model, decoder, text, name: 'demo parts' });
      expect(info).toMatchObject({ name: 'demo parts', family: 'infinity', depth: 4, width: 128, bitsPerToken: 32, vaeChannels: 32, vaeStride: 16, textWidth: 64 });
      const got = await viaParts.generate(request);
      expect(got.bits!.map((b) => Array.from(b))).toEqual(expected.bits!.map((b) => Array.from(b)));
      expect(Array.from(got.images[0].data)).toEqual(Array.from(expected.images[0].data));
      // The engine owns the parts now: unload frees the decoder's weights with the model.
      viaParts.unload();
      expect(() => weights[0].assertAlive()).toThrow(/after dispose/);
      await expect(viaParts.generate(request)).rejects.toThrow(/no model loaded/);
    } finally {
      viaDemo.dispose();
      viaParts.dispose();
    }
  });
});
