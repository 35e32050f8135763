// Parity of the Infinity transformer against a fixture made with the official code (../shared/fixtures/
// infinity-tiny, infinity8b-tiny; their README says what every golden key holds). The fixture's config.json
// gives only what a run chooses (schedule, aspect template, cfg); the architecture comes from the weights,
// and the VAE latent width from the VAE file's first decoder conv, as a real run would find them.
// Each entry: max|engine − golden| / max|golden| for one golden key, and the tolerance it must stay under.

import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Gpu } from '../../engine/device.js';
import { scheduleFromList, type Grid } from '../../sampler/schedule.js';
import { F32_TOL, parityTolerance, type ParityEntry, relMaxError } from '../parity/measure.js';
import { loadBsqDecoder } from '../vae/load.js';
import { openSafetensors, type SafetensorsFile } from '../weights/safetensors.js';
import { InfinityModel, type Precision } from './model.js';
import { runTeacherForced, type TeacherForcedResult } from './teacher_forced.js';

export type { ParityEntry };

export { F16_TOL, F32_TOL, parityTolerance } from '../parity/measure.js';

export interface InfinityFixture {
  dir: string;
  schedule: Grid[];
  /** h/w aspect template of the RoPE grid. */
  ratio: number;
  cfg: number | number[];
  golden: SafetensorsFile;
  /** Latent channels of the paired VAE (undefined when the fixture has no VAE file). */
  vaeChannels: number | undefined;
  config: Record<string, unknown>;
}

export async function openInfinityFixture(dir: string): Promise<InfinityFixture> {
  const config = JSON.parse(await readFile(join(dir, 'config.json'), 'utf8')) as Record<string, unknown>;
  const golden = await openSafetensors(join(dir, 'golden.safetensors'));
  let vaeChannels: number | undefined;
  try {
    const vae = await openSafetensors(join(dir, 'vae.safetensors'));
    if (vae.has('decoder.conv_in.conv.weight')) vaeChannels = vae.entry('decoder.conv_in.conv.weight').shape[1];
    await vae.close();
  } catch {
    vaeChannels = undefined; // no VAE: the model's default (56 bits → 14 channels, else unpatchified)
  }
  return {
    dir,
    schedule: scheduleFromList(config.scale_schedule as number[][]),
    ratio: Number(config.ratio ?? 1),
    cfg: (config.cfg_list ?? config.cfg ?? 1) as number | number[],
    golden,
    vaeChannels,
    config,
  };
}

export interface FixtureInputs {
  text: Float32Array;
  lens: number[];
  bits: Int32Array[];
}

export async function fixtureInputs(f: InfinityFixture): Promise<FixtureInputs> {
  const bits: Int32Array[] = [];
  for (let s = 0; s < f.schedule.length && f.golden.has(`bits.${s}`); s++) bits.push((await f.golden.readTensorToArray(`bits.${s}`)) as Int32Array);
  const lens = Array.from((await f.golden.readTensorToArray('text.lens')) as Int32Array);
  return { text: await f.golden.readTensorF32('text.kv_compact'), lens, bits };
}

/** The fixture's model, with the given precision (default f32 activations and cache). */
export function loadFixtureModel(gpu: Gpu, f: InfinityFixture, precision: Partial<Precision> = {}): Promise<InfinityModel> {
  return InfinityModel.load(gpu, join(f.dir, 'model.safetensors'), { ...precision, ...(f.vaeChannels === undefined ? {} : { vaeChannels: f.vaeChannels }) });
}

/** Compares a teacher-forced result with every golden key it covers. */
export async function compareWithGolden(f: InfinityFixture, result: TeacherForcedResult, depth: number, tol = F32_TOL): Promise<ParityEntry[]> {
  const out: ParityEntry[] = [];
  const compare = async (key: string, got: ArrayLike<number>) => {
    const want = await f.golden.readTensorF32(key);
    const error = got.length === want.length ? relMaxError(got, want) : Infinity;
    out.push({ key, error, tol });
  };
  for (let s = 0; s < result.logits.length; s++) {
    if (s > 0 && f.golden.has(`x_in.${s}`)) await compare(`x_in.${s}`, result.inputs[s]);
    await compare(`logits.${s}`, result.logits[s]);
    for (let l = 0; l < depth && result.hidden; l++) if (f.golden.has(`hidden.${s}.${l}`)) await compare(`hidden.${s}.${l}`, result.hidden[s][l]);
  }
  if (f.golden.has('latent')) await compare('latent', result.latent);
  return out;
}

/** Decodes the engine's latent with the fixture's VAE and compares the image. */
async function compareImage(gpu: Gpu, f: InfinityFixture, result: TeacherForcedResult, tol = F32_TOL): Promise<ParityEntry> {
  const decoder = await loadBsqDecoder(gpu, join(f.dir, 'vae.safetensors'));
  try {
    const latent = gpu.upload(result.latent, result.latentShape, 'f32', 'latent');
    const image = decoder.decode(latent);
    latent.dispose();
    const got = await image.readF32();
    image.dispose();
    return { key: 'image', error: relMaxError(got, await f.golden.readTensorF32('image')), tol };
  } finally {
    decoder.dispose();
  }
}

export interface InfinityParityOptions extends Partial<Precision> {
  collectHidden?: boolean;
  /** Pass bar; default `parityTolerance(precision)`. */
  tol?: number;
}

/**
 * Replays a fixture teacher-forced and compares logits, next-scale inputs, layer outputs and the latent
 * (and the decoded image when the fixture has a VAE), on the f32 path or the requested f16 one.
 */
export async function runInfinityParity(gpu: Gpu, dir: string, options: InfinityParityOptions = {}): Promise<ParityEntry[]> {
  const { activations, cacheDtype } = options;
  const tol = options.tol ?? parityTolerance({ activations, cacheDtype });
  const f = await openInfinityFixture(dir);
  const model = await loadFixtureModel(gpu, f, { activations, cacheDtype });
  try {
    const inputs = await fixtureInputs(f);
    const result = await runTeacherForced(gpu, model, {
      textFeatures: inputs.text,
      textLens: inputs.lens,
      bitsPerScale: inputs.bits,
      scaleSchedule: f.schedule,
      ratio: f.ratio,
      cfg: f.cfg,
      collectHidden: options.collectHidden ?? true,
    });
    const entries = await compareWithGolden(f, result, model.config.depth, tol);
    if (f.golden.has('image') && f.vaeChannels !== undefined) entries.push(await compareImage(gpu, f, result, tol));
    return entries;
  } finally {
    model.dispose();
    await f.golden.close();
  }
}
