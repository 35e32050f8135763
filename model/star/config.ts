// STAR's sizes, read from a state dict (model/arch.ts does the reading: depth from `blocks.{i}`, width
// from `word_embed.weight`, heads from `scale_mul_1H11`, K from `lvl_embed.weight`, text width from
// `cross_attn.mat_kv.weight`), plus the constants the checkpoint cannot carry (norm eps, RoPE θ and range)
// and the scale lists of the released checkpoints, which are not stored in the weights either.

import type { StarArch } from '../arch.js';

export interface StarConfig {
  depth: number;
  width: number;
  heads: number;
  headDim: number;
  /** Rows of `lvl_embed`: the number of scales K the model was trained with. */
  levels: number;
  /** Per-token text state width (cross-attention keys/values input). */
  textWidth: number;
  /** Pooled text width (`encoder_proj` input). */
  pooledWidth: number;
  vocab: number;
  /** VQ-VAE code channels (`word_embed` input). */
  codeDim: number;
  ffnWidth: number;
  /** Non-affine LayerNorm eps of every block norm and of `logit_norm`. */
  eps: number;
  ropeTheta: number;
  /** RoPE positions of every scale span [0, ropeNormalize]. */
  ropeNormalize: number;
}

export function starConfig(arch: StarArch): StarConfig {
  if (arch.width % arch.heads !== 0) throw new Error(`STAR width ${arch.width} is not a multiple of ${arch.heads} heads`);
  const headDim = arch.width / arch.heads;
  if (headDim % 4 !== 0) throw new Error(`STAR head dim ${headDim} must be a multiple of 4 (2D RoPE pairs per axis)`);
  return {
    depth: arch.depth,
    width: arch.width,
    heads: arch.heads,
    headDim,
    levels: arch.levels,
    textWidth: arch.text_width,
    pooledWidth: arch.pooled_width,
    vocab: arch.vocab,
    codeDim: arch.vae_codebook_dim,
    ffnWidth: arch.ffn_width,
    eps: 1e-6,
    ropeTheta: 10000,
    ropeNormalize: 64,
  };
}

/** Scale sides of the released checkpoints (configs/*.json and sample.py of STAR-T2I). */
export const STAR_PATCH_NUMS = {
  256: [1, 2, 3, 4, 5, 6, 8, 10, 13, 16],
  512: [1, 2, 3, 4, 6, 9, 13, 18, 24, 32],
  1024: [1, 2, 3, 4, 5, 7, 9, 12, 16, 21, 27, 36, 48, 64],
} as const;

/**
 * The scale list of a model with K levels when it is unambiguous: 14 levels is the 1024 model. The 256
 * and 512 models both have 10, so they need the list (the training snapshot's `trainer.config.patch_nums`).
 */
export function defaultPatchNums(levels: number): number[] {
  if (levels === STAR_PATCH_NUMS[1024].length) return [...STAR_PATCH_NUMS[1024]];
  throw new Error(
    `a STAR model with ${levels} scales needs its scale list (patch_nums): the released 256 and 512 models both have 10 ` +
      `(${STAR_PATCH_NUMS[256].join(',')} / ${STAR_PATCH_NUMS[512].join(',')})`,
  );
}

/** Checks a scale list against the model: at most `levels` scales, positive increasing sides. */
export function checkPatchNums(patchNums: readonly number[], levels: number): void {
  if (patchNums.length === 0 || patchNums.length > levels) {
    throw new Error(`scale list [${patchNums.join(', ')}] has ${patchNums.length} scales; the model has level embeddings for ${levels}`);
  }
  patchNums.forEach((pn, i) => {
    if (!Number.isInteger(pn) || pn < 1 || (i > 0 && pn <= patchNums[i - 1])) {
      throw new Error(`scale list [${patchNums.join(', ')}] must hold increasing positive integers`);
    }
  });
}

/** First token index of each scale, plus the total at the end. */
export function scaleStarts(patchNums: readonly number[]): number[] {
  const out = [0];
  for (const pn of patchNums) out.push(out[out.length - 1] + pn * pn);
  return out;
}

/** The CFG weight of scale si: t = cfg·si/(K−1), a linear ramp from 0 (upstream, var_drop.py). */
export function cfgRamp(cfg: number, si: number, scales: number): number {
  return scales <= 1 ? 0 : (cfg * si) / (scales - 1);
}
