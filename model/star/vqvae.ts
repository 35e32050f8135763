// VAR's multi-scale VQ-VAE as STAR uses it for generation (models/quant.py VectorQuantizer2,
// models/vqvae.py VQVAE.fhat_to_img): codebook lookup of each scale's tokens, bicubic up-sampling to the
// last scale's grid, the φ convolution chosen for the scale, accumulation into f_hat, the area-downsampled
// next-scale input, and the decoder. Only what text-to-image needs is loaded: decoder, post_quant_conv,
// codebook and φ convs (the encoder and quant_conv are skipped).

import type { Gpu } from '../../engine/device.js';
import { ShapeError } from '../../engine/errors.js';
import type { Tensor } from '../../engine/tensor.js';
import { conv2d } from '../../kernels/conv.js';
import { binary } from '../../kernels/elementwise.js';
import { gatherRows, transpose2d } from '../../kernels/layout.js';
import { gatedResidual } from '../../kernels/norms.js';
import { resize } from '../../kernels/resize.js';
import { expectArchitecture, type StarVqvaeArch } from '../arch.js';
import { Checkpoint, type OpenCheckpointOptions } from '../weights/checkpoint.js';
import { loadTensorToGpu } from '../weights/gpu_load.js';
import { VarDecoder } from './var_decoder.js';

export interface VarVqvaeLoadOptions extends OpenCheckpointOptions {
  /** Largest decoder feature-map chunk in bytes (default: the binding limit). Tests lower it. */
  maxChunkBytes?: number;
}

export interface VarVqvaeConfig {
  codebookSize: number;
  codeDim: number;
  /** Number of φ convs (`quant_resi` ratio 0.5 each: φ(h) = 0.5·h + 0.5·conv(h)). */
  phiCount: number;
  /** Image pixels per latent cell. */
  stride: number;
}

/** Upstream's `quant_resi`: φ(h) = (1 − r)·h + r·conv(h). Not stored in the checkpoint. */
const QUANT_RESI = 0.5;

/**
 * The φ used at scale si of `scales` (PhiPartiallyShared.__getitem__(si/(K−1))): the nearest tick, first
 * on ties; ticks = linspace(1/(3n), 1 − 1/(3n), n) for n = 4 convs, else linspace(1/(2n), 1 − 1/(2n), n).
 */
export function phiIndex(si: number, scales: number, phiCount: number): number {
  const at = scales > 1 ? si / (scales - 1) : 0;
  const lo = phiCount === 4 ? 1 / 3 / phiCount : 1 / 2 / phiCount;
  const hi = 1 - lo;
  let best = 0;
  let bestDist = Infinity;
  for (let i = 0; i < phiCount; i++) {
    // numpy.linspace: start + i·step, with the last point exactly `stop`.
    const tick = phiCount === 1 ? lo : i === phiCount - 1 ? hi : lo + i * ((hi - lo) / (phiCount - 1));
    const d = Math.abs(tick - at);
    if (d < bestDist) [best, bestDist] = [i, d];
  }
  return best;
}

export class VarVqvae {
  private constructor(
    readonly gpu: Gpu,
    readonly arch: StarVqvaeArch,
    readonly config: VarVqvaeConfig,
    readonly codebook: Tensor,
    private readonly phis: Array<{ weight: Tensor; bias: Tensor }>,
    private readonly postQuant: { weight: Tensor; bias: Tensor },
    readonly decoder: VarDecoder,
    private readonly owned: Tensor[],
  ) {}

  /** Loads decoder + φ + codebook from a VQ-VAE checkpoint (or a snapshot's `key: 'trainer.vae_local'`). */
  static async load(gpu: Gpu, path: string, options: VarVqvaeLoadOptions = {}): Promise<VarVqvae> {
    const ckpt = await Checkpoint.open(path, options);
    const owned: Tensor[] = [];
    try {
      const arch = expectArchitecture(ckpt.tensors(), 'star-vqvae', { file: path });
      const p = arch.prefix ?? '';
      const load = async (name: string, shape?: number[]) => {
        const t = await loadTensorToGpu(gpu, ckpt, p + name, { dtype: 'f32', label: name, ...(shape ? { expectShape: shape } : {}) });
        owned.push(t);
        return t;
      };
      const D = arch.codebook_dim;
      const codebook = await load('quantize.embedding.weight', [arch.codebook_size, D]);
      const phis = [];
      for (let k = 0; k < arch.phi_convs; k++) {
        phis.push({ weight: await load(`quantize.quant_resi.qresi_ls.${k}.weight`, [D, D, 3, 3]), bias: await load(`quantize.quant_resi.qresi_ls.${k}.bias`, [D]) });
      }
      if (phis.length === 0) throw new Error(`${path}: no φ convs (quantize.quant_resi.qresi_ls.{k}); only the partially shared φ of STAR's VQ-VAE is supported`);
      const pqShape = ckpt.info(p + 'post_quant_conv.weight').shape;
      const postQuant = { weight: await load('post_quant_conv.weight', [D, D, pqShape[2], pqShape[3]]), bias: await load('post_quant_conv.bias', [D]) };
      const decoderWeights = new Map<string, Tensor>();
      for (const name of ckpt.names()) {
        if (name.startsWith(`${p}decoder.`)) decoderWeights.set(name.slice(p.length), await load(name.slice(p.length)));
      }
      const decoder = VarDecoder.fromWeights(gpu, decoderWeights, path, { maxChunkBytes: options.maxChunkBytes });
      if (decoder.config.codeChannels !== D) throw new Error(`${path}: decoder takes ${decoder.config.codeChannels} channels, the codebook has ${D}`);
      const config = { codebookSize: arch.codebook_size, codeDim: D, phiCount: phis.length, stride: decoder.config.stride };
      return new VarVqvae(gpu, arch, config, codebook, phis, postQuant, decoder, owned);
    } catch (err) {
      for (const t of owned) t.dispose();
      throw err;
    } finally {
      await ckpt.close();
    }
  }

  /** An all-zero f_hat [B, codeDim, side, side]. */
  newFhat(batch: number, side: number): Tensor {
    const shape = [batch, this.config.codeDim, side, side];
    return this.gpu.upload(new Float32Array(batch * this.config.codeDim * side * side), shape, 'f32', 'star-fhat');
  }

  /** Codebook vectors of token indices (i32, B·pn² of them, row-major per image) → h [B, codeDim, pn, pn]. */
  codes(indices: Tensor, batch: number, pn: number): Tensor {
    if (indices.dtype !== 'i32' || indices.numel !== batch * pn * pn) {
      throw new ShapeError('VarVqvae.codes', `indices ${indices} must be i32 with ${batch}·${pn}² entries`);
    }
    const D = this.config.codeDim;
    const rows = gatherRows(this.gpu, this.codebook, indices.reshape([batch * pn * pn]));
    const h = this.gpu.empty([batch, D, pn, pn], 'f32', 'star-codes');
    transpose2d(this.gpu, rows.reshape([batch, pn * pn, D]), { out: h });
    rows.dispose();
    return h;
  }

  /**
   * Scale si of the schedule: f_hat += φ_k(bicubic(h → P×P)) (h as is at the last scale), in place.
   * Returns the next scale's input, area(f_hat → pn_{si+1}) [B, codeDim, pn', pn'], or null after the last.
   * `h` is not consumed.
   */
  addScale(fhat: Tensor, si: number, patchNums: readonly number[], h: Tensor): Tensor | null {
    this.accumulate(fhat, si, patchNums, h);
    return si === patchNums.length - 1 ? null : this.nextInput(fhat, patchNums[si + 1]);
  }

  /** f_hat += φ_k(bicubic(h → P×P)) for scale si (h as is at the last scale), in place; h is not consumed. */
  accumulate(fhat: Tensor, si: number, patchNums: readonly number[], h: Tensor): void {
    const { gpu } = this;
    const K = patchNums.length;
    const P = patchNums[K - 1];
    const [B, D] = fhat.shape;
    if (fhat.rank !== 4 || D !== this.config.codeDim || fhat.shape[2] !== P || fhat.shape[3] !== P) {
      throw new ShapeError('VarVqvae.accumulate', `f_hat ${fhat} must be [B, ${this.config.codeDim}, ${P}, ${P}]`);
    }
    const pn = patchNums[si];
    if (h.rank !== 4 || h.shape[0] !== B || h.shape[1] !== D || h.shape[2] !== pn || h.shape[3] !== pn) {
      throw new ShapeError('VarVqvae.accumulate', `scale ${si} codes ${h} must be [${B}, ${D}, ${pn}, ${pn}]`);
    }
    const last = si === K - 1;
    const up = last ? h : resize(gpu, h, P, P, 'bicubic');
    const phi = this.phis[phiIndex(si, K, this.phis.length)];
    const conv = conv2d(gpu, up, phi.weight, phi.bias, { padding: 1 });
    const mixed = binary(gpu, 'add', up, conv, { alpha: 1 - QUANT_RESI, beta: QUANT_RESI });
    conv.dispose();
    if (!last) up.dispose();
    gatedResidual(gpu, fhat, mixed, null);
    mixed.dispose();
  }

  /** The input of a scale of side pn: area(f_hat → pn×pn) [B, codeDim, pn, pn] (f_hat itself at pn = P). */
  nextInput(fhat: Tensor, pn: number): Tensor {
    return resize(this.gpu, fhat, pn, pn, 'area');
  }

  /** VQVAE.fhat_to_img: clamp(decoder(post_quant_conv(f_hat)), −1, 1) → [B, 3, H, W]. */
  decodeClamped(fhat: Tensor): Tensor {
    const pq = this.postQuant.weight;
    const latent = conv2d(this.gpu, fhat, pq, this.postQuant.bias, { padding: (pq.shape[2] - 1) / 2 });
    const image = this.decoder.decode(latent);
    latent.dispose();
    return image;
  }

  /** The image autoregressive_infer_cfg returns: (clamped decode + 1)/2, in [0, 1]. */
  decode(fhat: Tensor): Tensor {
    const raw = this.decodeClamped(fhat);
    const W = raw.shape[raw.rank - 1];
    const ones = this.gpu.upload(new Float32Array(W).fill(1), [W], 'f32', 'ones');
    const image = binary(this.gpu, 'add', raw, ones, { alpha: 0.5, beta: 0.5 });
    raw.dispose();
    ones.dispose();
    return image;
  }

  dispose(): void {
    for (const t of this.owned) t.dispose();
    this.owned.length = 0;
  }
}
