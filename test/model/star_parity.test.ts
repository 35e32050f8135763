import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { runStarParity, type ParityEntry } from '../../model/star/parity.js';
import { fixture, releaseTestGpu, testGpu } from '../helpers.js';

afterAll(releaseTestGpu);

// The official STAR code in f32 on CPU; an independent f32 replay matched within 4e-6. The bar is 1e-3:
// each typical mistake (QK-scale clamp, RoPE axes, per-row cross-attention, text mask, bilinear for
// bicubic) moves the logits by 3e-2 or more (fixtures/README.md).
describe('STAR: star-tiny teacher-forced parity (f32)', () => {
  const dir = fixture('star-tiny');
  const config = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')) as { patch_nums: number[]; transformer: { depth: number } };
  let entries: ParityEntry[] = [];
  let seconds = 0;

  beforeAll(async () => {
    const gpu = await testGpu();
    const t0 = performance.now();
    entries = await runStarParity(gpu, dir);
    seconds = (performance.now() - t0) / 1000;
  });

  afterAll(() => {
    const worst = [...entries].sort((a, b) => b.error - a.error).slice(0, 8);
    console.log(`star-tiny parity: ${entries.length} keys in ${seconds.toFixed(1)} s; worst: ${worst.map((e) => `${e.key} ${e.error.toExponential(2)}`).join(', ')}`);
  });

  it('measures every recorded output key (and the fused CFG head of each scale)', () => {
    const K = config.patch_nums.length;
    const depth = config.transformer.depth;
    const expected = ['latent', 'image'];
    for (let s = 0; s < K; s++) {
      expected.push(`x_in.${s}`, `logits.${s}`, `cfg.${s}`, `fhat.${s}`);
      if (s < K - 1) expected.push(`next.${s}`);
      for (let l = 0; l < depth; l++) expected.push(`hidden.${s}.${l}`, `cross.${s}.${l}`);
    }
    expect(entries.map((e) => e.key).sort()).toEqual(expected.sort());
  });

  it('matches every key within 1e-3', () => {
    const bad = entries.filter((e) => !(e.error < e.tol));
    expect(bad).toEqual([]);
  });
});
