import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { InfinityModel } from '../../model/infinity/model.js';
import { compareWithGolden, fixtureInputs, loadFixtureModel, openInfinityFixture, type InfinityFixture, type ParityEntry } from '../../model/infinity/parity.js';
import { runTeacherForced } from '../../model/infinity/teacher_forced.js';
import { fixture, releaseTestGpu, testGpu } from '../helpers.js';
import { expectEntries, printEntries } from './infinity_parity_helpers.js';


afterAll(releaseTestGpu);

// The 8B code paths: 56 bits per token = 14 VAE channels × 2×2 pixel shuffle, codes ±1/√14, accumulation
// on the VAE grid (2h, 2w), a "0.25M" schedule run as its own schedule; 5 layers per block chunk.
describe('Infinity-8B code path: infinity8b-tiny teacher-forced parity (f32)', () => {
  let f: InfinityFixture;
  let model: InfinityModel;
  const entries: ParityEntry[] = [];

  beforeAll(async () => {
    const gpu = await testGpu();
    f = await openInfinityFixture(fixture('infinity8b-tiny'));
    model = await loadFixtureModel(gpu, f);
    const inputs = await fixtureInputs(f);
    const result = await runTeacherForced(gpu, model, {
      textFeatures: inputs.text, textLens: inputs.lens, bitsPerScale: inputs.bits,
      scaleSchedule: f.schedule, ratio: f.ratio, cfg: f.cfg, collectHidden: true,
    });
    entries.push(...(await compareWithGolden(f, result, model.config.depth)));
  }, 600_000);

  afterAll(async () => {
    printEntries('infinity8b-tiny', entries);
    model?.dispose();
    await f?.golden.close();
  });

  it('infers the patchified architecture from the weights and the VAE width', () => {
    const c = model.config;
    const want = f.config as Record<string, number>;
    expect([c.depth, c.width, c.heads, c.chunks, c.layersPerChunk]).toEqual([want.depth, want.embed_dim, want.num_heads, want.block_chunks, want.depth / want.block_chunks]);
    expect([c.bitsPerToken, c.vaeChannels, c.patch]).toEqual([want.bits_per_token, want.codebook_dim, 2]);
  });

  it('matches the next-scale inputs (before word_embed) of every scale', () => expectEntries(entries, 'x_in.', f.schedule.length - 1));
  it('matches the logits of every scale', () => expectEntries(entries, 'logits.', f.schedule.length));
  it('matches every recorded layer output', () => {
    const recorded = f.golden.names().filter((n) => n.startsWith('hidden.')).length;
    expect(recorded).toBeGreaterThan(0);
    expectEntries(entries, 'hidden.', recorded);
  });
  it('matches the summed latent on the VAE grid', () => expectEntries(entries, 'latent', 1));
});
