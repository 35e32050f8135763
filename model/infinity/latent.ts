// The summed bit latent and the next-scale input, exactly as upstream's sampler builds them:
//   codes_s = (2·bits_s − 1)/√d on the VAE grid (pixel-shuffled when the model patchifies)
//   F      += Up(codes_s → final grid)            (the last scale adds codes_s directly)
//   in_s+1  = unshuffle(Down(F → grid of s+1))     → word_embed
// Up and Down are the same bilinear resize (PyTorch 'trilinear' on a T = 1 volume, align_corners false,
// no antialias). F lives on the VAE grid (p·H, p·W); it is the decoder's input after the last scale.

import type { Gpu } from '../../engine/device.js';
import type { Tensor } from '../../engine/tensor.js';
import { add } from '../../kernels/elementwise.js';
import { resize } from '../../kernels/resize.js';
import type { Grid } from '../../sampler/schedule.js';
import { bitsToCodes, gridToTokens, type PatchGeometry } from './patchify.js';

export interface LatentGeometry {
  batch: number;
  /** VAE latent channels d and patch factor p (bits per token = d·p²). */
  channels: number;
  patch: number;
  /** Final transformer grid of the schedule (the accumulation grid is p times it). */
  finalGrid: Grid;
}

export class BitLatent {
  private sum: Tensor;

  constructor(
    private readonly gpu: Gpu,
    readonly geometry: LatentGeometry,
  ) {
    const { batch, channels, patch, finalGrid } = geometry;
    // Pooled, not persistent: the sum is replaced every scale, and a pooled buffer may be released while
    // recorded work still reads it (a destroyed persistent one may not).
    this.sum = gpu.empty([batch, channels, patch * finalGrid[0], patch * finalGrid[1]], 'f32', 'bit-latent');
    this.sum.write(new Float32Array(this.sum.numel));
  }

  /** F [B, d, p·H, p·W]: the decoder's input once every scale is added. */
  get latent(): Tensor {
    return this.sum;
  }

  private patch(grid: Grid): PatchGeometry {
    return { h: grid[0], w: grid[1], channels: this.geometry.channels, patch: this.geometry.patch };
  }

  /** Adds the codes of one scale's bits (i32 [B, h·w, bits], 0/1) on its transformer grid. */
  addBits(bits: Tensor, grid: Grid): void {
    const codes = bitsToCodes(this.gpu, bits, this.patch(grid));
    const [, , H, W] = this.sum.shape;
    const up = codes.shape[2] === H && codes.shape[3] === W ? codes : resize(this.gpu, codes, H, W, 'bilinear');
    const next = this.gpu.empty(this.sum.shape, 'f32', 'bit-latent');
    add(this.gpu, this.sum, up, next);
    this.sum.dispose();
    this.sum = next;
    if (up !== codes) up.dispose();
    codes.dispose();
  }

  /** The next scale's input before word_embed: [B, h·w, bits] for transformer grid (h, w). */
  nextInput(grid: Grid): Tensor {
    const p = this.geometry.patch;
    const down = resize(this.gpu, this.sum, p * grid[0], p * grid[1], 'bilinear');
    const tokens = gridToTokens(this.gpu, down, this.patch(grid));
    down.dispose();
    return tokens;
  }

  dispose(): void {
    this.sum.dispose();
  }
}
