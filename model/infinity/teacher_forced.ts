// Teacher-forced replay: run the model scale by scale with the sampler's bits replaced by given ones,
// and return what the official code's fixtures record (raw logits per scale, optionally every layer's
// output, the next-scale inputs and the summed latent). This is the parity harness of the model and a
// reference for how a sampler drives the building blocks.

import type { Gpu } from '../../engine/device.js';
import type { Tensor } from '../../engine/tensor.js';
import { nearestTemplate, ropeGrid, type Grid } from '../../sampler/schedule.js';
import { BitLatent } from './latent.js';
import type { InfinityModel, Precision } from './model.js';

/** `activations` and `cacheDtype` (Precision) override the model's default precision for this replay. */
export interface TeacherForcedOptions extends Partial<Precision> {
  /** Packed text features of the B prompts [Σ textLens, textWidth] (T5 output, real tokens only). */
  textFeatures: Float32Array | Tensor;
  textLens: readonly number[];
  /** Forced bits per scale: [B, h·w, bitsPerToken] of 0/1 (transformer token layout). */
  bitsPerScale: ReadonlyArray<Int32Array>;
  /** Transformer grids (h, w) of the scales to run. */
  scaleSchedule: readonly Grid[];
  /** The aspect template (h/w) whose 1M final grid sets the RoPE positions; the nearest template is used. */
  ratio: number;
  /** CFG per scale (or one value): only decides whether the unconditional branch runs (any value ≠ 1). */
  cfg: number | readonly number[];
  /** Also return every layer's output per scale. */
  collectHidden?: boolean;
  /** Run only the first n scales (default all). The latent and the next-scale inputs still live on the
   *  schedule's final grid, as when a sampler stops early or skips the last scales. */
  runScales?: number;
}

export interface TeacherForcedResult {
  /** Per scale: raw head output [rows, h·w, 2·bits] before CFG and temperature; rows 0..B-1 conditional,
   *  B..2B-1 unconditional (when CFG is on). Pair (2j, 2j+1) = logits of bit j being 0 and 1. */
  logits: Float32Array[];
  /** hidden[s][l]: output of layer l at scale s, [rows, h·w, C] (only with collectHidden). */
  hidden?: Float32Array[][];
  /** inputs[s] for s ≥ 1: the next-scale input before word_embed, [B, h·w, bits]; inputs[0] is empty. */
  inputs: Float32Array[];
  /** The summed codes [B, d, p·H, p·W] (the VAE decoder's input). */
  latent: Float32Array;
  latentShape: number[];
  rows: number;
}

export async function runTeacherForced(gpu: Gpu, model: InfinityModel, o: TeacherForcedOptions): Promise<TeacherForcedResult> {
  const { config } = model;
  const schedule = o.scaleSchedule;
  const batch = o.textLens.length;
  const runScales = o.runScales ?? schedule.length;
  if (!Number.isInteger(runScales) || runScales < 1 || runScales > schedule.length) throw new Error(`runScales ${runScales} outside 1..${schedule.length}`);
  if (o.bitsPerScale.length < runScales) throw new Error(`${o.bitsPerScale.length} scales of bits for ${runScales} scales`);
  const cfgs = typeof o.cfg === 'number' ? [o.cfg] : o.cfg;
  const gen = model.begin({
    text: { features: o.textFeatures, lens: o.textLens, guidance: cfgs.some((c) => c !== 1) },
    schedule,
    ropeGrid: ropeGrid(nearestTemplate(o.ratio)),
    ...(o.activations ? { activations: o.activations } : {}),
    ...(o.cacheDtype ? { cacheDtype: o.cacheDtype } : {}),
  });
  const latent = new BitLatent(gpu, { batch, channels: config.vaeChannels, patch: config.patch, finalGrid: schedule[schedule.length - 1] });
  const logits: Float32Array[] = [];
  const hidden: Float32Array[][] = [];
  const inputs: Float32Array[] = [new Float32Array(0)];
  try {
    let x: Tensor | null = model.sosInput(gen);
    for (let si = 0; si < runScales; si++) {
      const step = gen.step(si);
      let cur = model.addLevel(x!, si);
      x!.dispose();
      const layerOut: Tensor[] = [];
      const keep = (_layer: number, h: Tensor) => {
        const copy = gpu.empty(h.shape, 'f32', 'hidden-copy');
        gpu.copy(h, copy);
        layerOut.push(copy);
      };
      for (let c = 0; c < config.chunks; c++) {
        const next = model.runChunk(c, cur, gen, step, o.collectHidden ? keep : undefined);
        cur.dispose();
        cur = next;
      }
      const out = model.head(cur, gen, step);
      cur.dispose();
      logits.push(await out.readF32());
      out.dispose();
      if (o.collectHidden) hidden.push(await readAll(layerOut));

      // The sampler's bits, replaced by the forced ones.
      const [h, w] = schedule[si];
      const bits = o.bitsPerScale[si];
      if (bits.length !== batch * h * w * config.bitsPerToken) {
        throw new Error(`bits of scale ${si}: ${bits.length} values, expected [${batch}, ${h * w}, ${config.bitsPerToken}]`);
      }
      const bitsT = gpu.upload(bits, [batch, h * w, config.bitsPerToken], 'i32', 'forced-bits');
      latent.addBits(bitsT, schedule[si]);
      bitsT.dispose();
      x = null;
      if (si + 1 < runScales) {
        const tokens = latent.nextInput(schedule[si + 1]);
        inputs.push(await tokens.readF32());
        x = model.embedTokens(gen, tokens);
        tokens.dispose();
      }
    }
    const result: TeacherForcedResult = {
      logits,
      inputs,
      latent: await latent.latent.readF32(),
      latentShape: [...latent.latent.shape],
      rows: gen.rows,
    };
    if (o.collectHidden) result.hidden = hidden;
    return result;
  } finally {
    latent.dispose();
    gen.dispose();
  }
}

async function readAll(tensors: Tensor[]): Promise<Float32Array[]> {
  const out: Float32Array[] = [];
  for (const t of tensors) {
    out.push(await t.readF32());
    t.dispose();
  }
  return out;
}
