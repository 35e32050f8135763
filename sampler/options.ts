// User-facing knobs → schedule: image size (256/512/768/1024) → upstream resolution name, aspect ratio →
// nearest h/w template, per-scale lists given as "3" or "1,2,3,…"; batch and seeds; the checks of text
// features against a model. Shared by the Engine and the CLI so both give the same messages.

import { randomInt } from 'node:crypto';
import type { TextFeatures } from './text.js';
import { RESOLUTIONS, imageSize, nearestTemplate, parseRatio, scaleSchedule, type Grid, type ResolutionName } from './schedule.js';

/** `--size` values and the upstream resolution (prefix of the 1M schedule) each one uses. */
export const SIZES: Readonly<Record<number, ResolutionName>> = { 256: '0.06M', 512: '0.25M', 768: '0.60M', 1024: '1M' };

export function resolutionForSize(size: number): ResolutionName {
  const r = SIZES[size];
  if (!r) throw new RangeError(`size ${size} is not supported: use one of ${Object.keys(SIZES).join(', ')} (the image's class of pixels, e.g. 1024 ≈ 1024×1024)`);
  return r;
}

export interface ResolvedShape {
  /** The h/w template used. */
  template: number;
  /** The requested h/w (before snapping to a template). */
  requested: number;
  resolution: ResolutionName;
  schedule: Grid[];
  /** Output [height, width] in pixels. */
  pixels: Grid;
}

/** Size and ratio ("H:W", "1.25" or a number h/w) → template, schedule and pixel size. */
export function resolveShape(size: number, ratio: number | string = 1): ResolvedShape {
  const resolution = resolutionForSize(size);
  const requested = typeof ratio === 'number' ? ratio : parseRatio(ratio);
  if (!(requested > 0) || !Number.isFinite(requested)) throw new RangeError(`aspect ratio h/w must be a positive number, got ${ratio}`);
  const template = nearestTemplate(requested);
  const schedule = scaleSchedule(template, resolution);
  return { template, requested, resolution, schedule, pixels: imageSize(schedule) };
}

/** A note when the template is far from the request (more than 5 % in h/w), else null. */
export function templateNote(shape: ResolvedShape): string | null {
  const off = Math.abs(shape.template / shape.requested - 1);
  if (off <= 0.05) return null;
  const [h, w] = shape.pixels;
  return `aspect ratio h/w ${shape.requested.toFixed(3)} has no template; using the nearest, ${shape.template} (${h}×${w} pixels)`;
}

/** "3" → 3, "1,2.5,3" → [1, 2.5, 3]; a clear error for anything else. */
export function parseNumberList(name: string, text: string): number | number[] {
  const parts = text.split(',').map((s) => s.trim());
  const values = parts.map(Number);
  if (parts.some((s) => s === '') || values.some((v) => !Number.isFinite(v))) {
    throw new RangeError(`${name} "${text}" is not a number or a comma-separated list of numbers`);
  }
  return values.length === 1 ? values[0] : values;
}

/** All sizes and resolutions, for help texts. */
export const SIZE_HELP = Object.entries(SIZES)
  .map(([s, r]) => `${s} (${RESOLUTIONS[r]} scales)`)
  .join(', ');

/** The model must have a level embedding for every scale of the schedule. */
export function checkLevels(size: number, scales: number, levels: number): void {
  if (scales > levels) throw new RangeError(`size ${size} needs ${scales} scales but the model has level embeddings for ${levels}; use a smaller size`);
}

/** Images and their seeds from the prompt count, `batch` and `seed`. */
export function resolveBatch(prompts: number, batch: number | undefined, seed: number | readonly number[] | undefined): { batch: number; seeds: number[] } {
  const seedList = typeof seed === 'object' ? [...seed] : null;
  const B = batch ?? Math.max(prompts, seedList?.length ?? 1);
  if (!Number.isInteger(B) || B < 1) throw new RangeError(`batch ${batch} must be a positive integer`);
  if (prompts !== 1 && prompts !== B) throw new RangeError(`${prompts} prompts for a batch of ${B} images (give one prompt, or one per image)`);
  if (seedList && seedList.length !== B) throw new RangeError(`${seedList.length} seeds for a batch of ${B} images (give one seed, or one per image)`);
  const first = typeof seed === 'number' ? seed : seedList ? null : randomInt(0, 2 ** 31);
  const seeds = seedList ?? Array.from({ length: B }, (_, i) => first! + i);
  for (const s of seeds) {
    if (!Number.isSafeInteger(s) || s < 0) throw new RangeError(`seed ${s} must be a non-negative integer (at most ${Number.MAX_SAFE_INTEGER})`);
  }
  return { batch: B, seeds };
}

/** Text features must have the model's text width and at most its number of text tokens per prompt. */
export function checkFeatures(what: string, f: TextFeatures, width: number, maxLen: number): void {
  if (f.width !== width) {
    throw new Error(`${what} are ${f.width} wide but the model expects ${width} (its text encoder's width${width === 2048 ? ', Flan-T5-XL' : ''})`);
  }
  if (f.features.length !== f.lens.reduce((a, b) => a + b, 0) * width) throw new Error(`${what}: ${f.features.length} values do not match lens [${f.lens.join(', ')}] × ${width}`);
  f.lens.forEach((l, i) => {
    if (l > maxLen) throw new Error(`${what}: prompt ${i} has ${l} tokens; the model takes at most ${maxLen}`);
  });
}

