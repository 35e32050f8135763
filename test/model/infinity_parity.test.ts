import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { InfinityModel } from '../../model/infinity/model.js';
import {F32_TOL, compareWithGolden, fixtureInputs, loadFixtureModel, openInfinityFixture, type FixtureInputs, type InfinityFixture, type ParityEntry} from '../../model/infinity/parity.js';
import { relMaxError } from '../../model/parity/measure.js';
import { runTeacherForced } from '../../model/infinity/teacher_forced.js';
import { fixture, releaseTestGpu, testGpu } from '../helpers.js';
import { expectEntries, printEntries } from './infinity_parity_helpers.js';


afterAll(releaseTestGpu);

describe('Infinity-2B code path: infinity-tiny teacher-forced parity (f32)', () => {
  let f: InfinityFixture;
  let model: InfinityModel;
  let inputs: FixtureInputs;
  const entries: ParityEntry[] = [];

  beforeAll(async () => {
    const gpu = await testGpu();
    f = await openInfinityFixture(fixture('infinity-tiny'));
    model = await loadFixtureModel(gpu, f);
    inputs = await fixtureInputs(f);
    const result = await runTeacherForced(gpu, model, {
      textFeatures: inputs.text, textLens: inputs.lens, bitsPerScale: inputs.bits,
      scaleSchedule: f.schedule, ratio: f.ratio, cfg: f.cfg, collectHidden: true,
    });
    entries.push(...(await compareWithGolden(f, result, model.config.depth)));
  }, 300_000);

  afterAll(async () => {
    printEntries('infinity-tiny', entries);
    model?.dispose();
    await f?.golden.close();
  });

  it('infers the architecture from the weights alone', () => {
    const c = model.config;
    const want = f.config as Record<string, number>;
    expect([c.depth, c.width, c.heads, c.chunks, c.textWidth]).toEqual([want.depth, want.embed_dim, want.num_heads, want.block_chunks, want.text_channels]);
    expect([c.bitsPerToken, c.vaeChannels, c.patch]).toEqual([32, 32, 1]);
  });

  it('matches the logits of every scale', () => expectEntries(entries, 'logits.', f.schedule.length));
  it('matches every layer output of every scale', () => expectEntries(entries, 'hidden.', f.schedule.length * model.config.depth));
  it('matches the summed latent', () => expectEntries(entries, 'latent', 1));

  // Batch rows must never mix: prompt A (the fixture's) batched with another prompt B must give A's golden
  // logits in its conditional row 0 and its unconditional row 2; guidance off (cfg 1) runs the conditional
  // branch alone. Four (three) scales keep these runs short.
  it('keeps batched prompts apart, and runs the conditional branch alone when cfg is 1', async () => {
    const gpu = await testGpu();
    const [lenA] = inputs.lens;
    const C = model.config.textWidth;
    const lenB = Math.max(1, lenA - 2);
    const text = new Float32Array((lenA + lenB) * C);
    text.set(inputs.text);
    for (let i = 0; i < lenB; i++) text.set(inputs.text.subarray((lenA - 1 - i) * C, (lenA - i) * C), (lenA + i) * C);
    const bits = inputs.bits.map((b) => {
      const two = new Int32Array(2 * b.length);
      two.set(b);
      two.set(b.map((v) => 1 - v), b.length);
      return two;
    });
    const batched = await runTeacherForced(gpu, model, {
      textFeatures: text, textLens: [lenA, lenB], bitsPerScale: bits, scaleSchedule: f.schedule, ratio: f.ratio, cfg: f.cfg, runScales: 4,
    });
    expect(batched.rows).toBe(4);
    for (let s = 0; s < 4; s++) {
      const golden = await f.golden.readTensorF32(`logits.${s}`);
      const per = golden.length / 2;
      const row = (r: number) => batched.logits[s].subarray(r * per, (r + 1) * per);
      entries.push({ key: `B2 cond.${s}`, error: relMaxError(row(0), golden.subarray(0, per)), tol: F32_TOL });
      entries.push({ key: `B2 uncond.${s}`, error: relMaxError(row(2), golden.subarray(per)), tol: F32_TOL });
      // Prompt B really is another sequence: its rows must not repeat A's.
      expect(relMaxError(row(1), golden.subarray(0, per))).toBeGreaterThan(1e-2);
    }
    expectEntries(entries, 'B2 ', 8);

    const condOnly = await runTeacherForced(gpu, model, {
      textFeatures: inputs.text, textLens: inputs.lens, bitsPerScale: inputs.bits, scaleSchedule: f.schedule, ratio: f.ratio, cfg: 1, runScales: 3,
    });
    expect(condOnly.rows).toBe(1);
    for (let s = 0; s < 3; s++) {
      const golden = await f.golden.readTensorF32(`logits.${s}`);
      entries.push({ key: `cfg1 cond.${s}`, error: relMaxError(condOnly.logits[s], golden.subarray(0, golden.length / 2)), tol: F32_TOL });
    }
    expectEntries(entries, 'cfg1 ', 3);
  });

  // Linear weights stored as f16 on the GPU (the later f16 path's weights): bf16 values of this range are
  // exact in f16, so the f32-activation results stay at f32 rounding.
  it('runs with f16 linear weights', async () => {
    const gpu = await testGpu();
    const f16Model = await InfinityModel.load(gpu, join(f.dir, 'model.safetensors'), { linearDtype: 'f16', vaeChannels: f.vaeChannels });
    try {
      expect(f16Model.weights.layers[0].fc1W.dtype).toBe('f16');
      const run = await runTeacherForced(gpu, f16Model, {
        textFeatures: inputs.text, textLens: inputs.lens, bitsPerScale: inputs.bits, scaleSchedule: f.schedule, ratio: f.ratio, cfg: f.cfg, runScales: 3,
      });
      for (let s = 0; s < 3; s++) {
        entries.push({ key: `f16w logits.${s}`, error: relMaxError(run.logits[s], await f.golden.readTensorF32(`logits.${s}`)), tol: F32_TOL });
      }
      expectEntries(entries, 'f16w ', 3);
    } finally {
      f16Model.dispose();
    }
  });
});
