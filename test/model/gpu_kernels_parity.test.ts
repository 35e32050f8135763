// The whole Infinity forward on the GPU kernel set (tiled and skinny GEMMs, tiled attention), which a real GPU
// runs and lavapipe does not pick by itself: the infinity-tiny fixture, teacher-forced, on a device created with
// tuning 'gpu'. Same bar as the default path (F32_TOL on every logit, layer output and the latent), and the
// kernels that ran are the GPU ones (infinity-tiny: width 256, 2 heads of 128 — the tiled attention's D).

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Gpu } from '../../engine/device.js';
import type { InfinityModel } from '../../model/infinity/model.js';
import { type ParityEntry, compareWithGolden, fixtureInputs, loadFixtureModel, openInfinityFixture } from '../../model/infinity/parity.js';
import { runTeacherForced } from '../../model/infinity/teacher_forced.js';
import { fixture } from '../helpers.js';
import { expectEntries, printEntries } from './infinity_parity_helpers.js';

describe('infinity-tiny parity on the GPU-tuned kernels', () => {
  let gpu: Gpu;
  let model: InfinityModel;
  let scales = 0;
  const entries: ParityEntry[] = [];

  beforeAll(async () => {
    gpu = await Gpu.create({ tuning: 'gpu', validate: true });
    const f = await openInfinityFixture(fixture('infinity-tiny'));
    try {
      model = await loadFixtureModel(gpu, f);
      const inputs = await fixtureInputs(f);
      const result = await runTeacherForced(gpu, model, {
        textFeatures: inputs.text, textLens: inputs.lens, bitsPerScale: inputs.bits,
        scaleSchedule: f.schedule, ratio: f.ratio, cfg: f.cfg, collectHidden: true,
      });
      scales = f.schedule.length;
      entries.push(...(await compareWithGolden(f, result, model.config.depth)));
    } finally {
      await f.golden.close();
    }
  }, 300_000);

  afterAll(() => {
    printEntries('infinity-tiny (GPU kernels)', entries);
    model?.dispose();
    gpu?.destroy();
  });

  it('ran the GPU kernels: skinny and tiled GEMMs, tiled attention', () => {
    expect(gpu.tuning).toBe('gpu');
    const names = gpu.compiledKernels;
    expect(names.some((n) => n.endsWith('_skinny'))).toBe(true);
    expect(names.some((n) => /_tiled(64|128)$/.test(n))).toBe(true);
    expect(names.some((n) => n.startsWith('attention_tiled_'))).toBe(true);
  });

  it('matches the logits of every scale', () => expectEntries(entries, 'logits.', scales));
  it('matches every layer output of every scale', () => expectEntries(entries, 'hidden.', scales * model.config.depth));
  it('matches the summed latent', () => expectEntries(entries, 'latent', 1));
});
