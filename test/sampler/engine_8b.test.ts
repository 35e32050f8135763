// Infinity-8B through the Engine like 2B (issue #6): the infinity8b-tiny transformer (2×2 patchify, 56-bit
// tokens, 5-layer block chunks) generates with the official 8B defaults (cfg 3, τ 1) when none are given,
// and a StageVAR policy with one rank per 5-layer chunk runs. The decoder is a probe VAE with the 14 code
// channels (one pixel per latent cell, test/sampler/probe_vae.ts): the 8B decoder itself is proven in
// vae.test.ts and the parity tests, and a full decode per run would only slow the suite down.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Gpu } from '../../engine/device.js';
import { openSafetensors } from '../../model/weights/safetensors.js';
import { Engine } from '../../sampler/engine.js';
import { parsePolicy } from '../../sampler/policy.js';
import { policyPlanHook } from '../../sampler/policy_plan.js';
import type { TextFeatures } from '../../sampler/text.js';
import { fixture, releaseTestGpu, testGpu } from '../helpers.js';
import { writeProbeVae } from './probe_vae.js';

afterAll(releaseTestGpu);

const DIR = fixture('infinity8b-tiny');

describe('Infinity-8B (infinity8b-tiny) through the Engine', () => {
  let gpu: Gpu;
  let engine: Engine;
  let text: TextFeatures;
  let scratch: string;
  let probe14: string;
  let probe32: string;

  beforeAll(async () => {
    scratch = await mkdtemp(join(tmpdir(), 'stagevar-8b-'));
    [probe14, probe32] = [join(scratch, 'probe14.safetensors'), join(scratch, 'probe32.safetensors')];
    await writeProbeVae(probe14, 14);
    await writeProbeVae(probe32, 32);
    gpu = await testGpu();
    engine = await Engine.create({ gpu });
    const golden = await openSafetensors(join(DIR, 'golden.safetensors'));
    const features = await golden.readTensorF32('text.kv_compact');
    const [L, width] = golden.entry('text.kv_compact').shape;
    await golden.close();
    text = { features, lens: [L], width };
  });

  afterAll(async () => {
    engine?.dispose();
    await rm(scratch, { recursive: true, force: true });
  });

  it('loads as the 8B form and samples with cfg 3 and τ 1 by default', async () => {
    const info = await engine.load({ model: join(DIR, 'model.safetensors'), vae: probe14 });
    expect(info).toMatchObject({ family: 'infinity', bitsPerToken: 56, vaeChannels: 14, chunks: 2, depth: 10 });
    const r = await engine.generate({ textFeatures: text, seed: 4, size: 256 });
    expect(r.resolution).toBe('0.06M');
    expect(r.schedule).toHaveLength(7);
    expect(r.plans.every((p) => p.tau === 1 && p.cfg === 3 && p.branches === 'both')).toBe(true);
    const [h, w] = r.schedule.at(-1)!;
    // Tokens are 2×2 VAE cells: the image is 2·side·stride of the VAE.
    expect([r.images[0].height, r.images[0].width]).toEqual([2 * h * info.vaeStride, 2 * w * info.vaeStride]);
    // A 2B model keeps its own default, τ 0.5.
    const two = await Engine.create({ gpu });
    try {
      await two.load({ model: fixture('infinity-tiny', 'model.safetensors'), vae: probe32 });
      const r2 = await two.generate({ textFeatures: { ...text, features: new Float32Array(7 * 256).fill(0.1), lens: [7], width: 256 }, seed: 4, size: 256 });
      expect(r2.plans.every((p) => p.tau === 0.5)).toBe(true);
    } finally {
      two.dispose();
    }
  });

  it('runs StageVAR per 5-layer chunk: CFG 0 + RP/RTR with one rank per chunk, the last scale skipped', async () => {
    const policy = parsePolicy({ name: '8b-test', scales: { 5: { cfg: 0, tokens: { kind: 'rp', ratios: [0.05, 0.3] } }, 6: { run: false } } });
    const info = engine.model!;
    const r = await engine.generate({ textFeatures: text, seed: 4, size: 256, plan: policyPlanHook(policy, { chunks: info.chunks, depth: info.depth }) });
    expect(r.plans[5]).toMatchObject({ branches: 'uncond', cfg: 0, tokens: { kind: 'random-projection', ranks: [Math.floor(0.05 * 144) + 1, Math.floor(0.3 * 144) + 1] } });
    expect(r.stats.scales[5]).toMatchObject({ run: true, rows: 1 });
    expect(r.stats.scales[6]).toMatchObject({ run: false });
    expect(r.images).toHaveLength(1);
    const again = await engine.generate({ textFeatures: text, seed: 4, size: 256, plan: policyPlanHook(policy, { chunks: info.chunks, depth: info.depth }) });
    expect(Buffer.compare(Buffer.from(again.images[0].data), Buffer.from(r.images[0].data))).toBe(0);
  });
});
