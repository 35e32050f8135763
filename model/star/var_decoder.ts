// The decoder of VAR's multi-scale VQ-VAE (models/basic_vae.py Decoder, enable_movq=False), as STAR uses it:
// conv_in → mid (ResBlock, attention, ResBlock) → levels from the lowest resolution up, each with its
// ResBlocks (every one followed by an attention block at the lowest level) and a nearest ×2 + 3×3 conv
// up-sampling on all but level 0 → GroupNorm + SiLU → conv_out. GroupNorm: 32 groups, eps 1e-6, affine.
// Convolutions, GroupNorm and up-sampling go through FeatureOps (channel-chunked maps for big images);
// the attention blocks are single-head over all positions with head dim = channels (640 in the released
// VAE, more than the flash kernel takes), so they form the score matrix explicitly, in query blocks.

import type { Gpu } from '../../engine/device.js';
import { ShapeError } from '../../engine/errors.js';
import type { Tensor } from '../../engine/tensor.js';
import { conv2d } from '../../kernels/conv.js';
import { copyRows, transpose2d } from '../../kernels/layout.js';
import { matmul } from '../../kernels/matmul.js';
import { gatedResidual, groupNorm } from '../../kernels/norms.js';
import { WeightsError, formatShape } from '../weights/errors.js';
import { type FeatureMap, FeatureOps, type ResBlockWeights } from '../vae/feature_map.js';
import { softmaxRows } from './softmax.js';

interface Conv {
  weight: Tensor;
  bias: Tensor | null;
}

interface Norm {
  weight: Tensor;
  bias: Tensor;
}

type ResBlock = ResBlockWeights;

interface AttnBlock {
  norm: Norm;
  qkv: Conv;
  proj: Conv;
}

interface Level {
  blocks: ResBlock[];
  /** One per block at the lowest-resolution level, else empty. */
  attn: AttnBlock[];
  upsample: Conv | null;
}

export interface VarDecoderConfig {
  codeChannels: number;
  /** Image pixels per latent cell: 2^(up-samplings). */
  stride: number;
  /** Output channels of each level, index = level. */
  channels: number[];
}

const GROUPS = 32;
const EPS = 1e-6;
/** Largest score block of the attention (bytes): query rows per block are cut to stay under it. */
const SCORE_BLOCK_BYTES = 32 << 20;

export class VarDecoder {
  private readonly ops: FeatureOps;

  private constructor(
    readonly gpu: Gpu,
    readonly config: VarDecoderConfig,
    private readonly convIn: Conv,
    private readonly mid: { block1: ResBlock; attn: AttnBlock; block2: ResBlock },
    private readonly levels: Level[],
    private readonly normOut: Norm,
    private readonly convOut: Conv,
    maxChunkBytes?: number,
  ) {
    this.ops = new FeatureOps(gpu, maxChunkBytes, GROUPS);
  }

  /** Builds the decoder from GPU tensors named as in the checkpoint (`decoder.…`, VAR's flat names). */
  static fromWeights(gpu: Gpu, weights: ReadonlyMap<string, Tensor>, source = 'VQ-VAE', opts: { maxChunkBytes?: number } = {}): VarDecoder {
    const get = (name: string, shape?: number[]): Tensor => {
      const t = weights.get(name);
      if (!t) throw new WeightsError('missing tensor of the VQ-VAE decoder', { code: 'missing-tensor', file: source, tensor: name });
      if (shape && (t.rank !== shape.length || t.shape.some((d, i) => d !== shape[i]))) {
        throw new WeightsError(`has shape ${formatShape(t.shape)}, expected ${formatShape(shape)}`, { code: 'shape-mismatch', file: source, tensor: name });
      }
      return t;
    };
    const has = (prefix: string) => [...weights.keys()].some((k) => k.startsWith(prefix));
    const conv = (p: string, cout: number, cin: number, k: number): Conv => ({ weight: get(`${p}.weight`, [cout, cin, k, k]), bias: get(`${p}.bias`, [cout]) });
    const norm = (p: string, c: number): Norm => ({ weight: get(`${p}.weight`, [c]), bias: get(`${p}.bias`, [c]) });
    const resBlock = (p: string, cin: number): { block: ResBlock; cout: number } => {
      const cout = get(`${p}.conv1.weight`).shape[0];
      const block: ResBlock = {
        norm1: norm(`${p}.norm1`, cin),
        conv1: conv(`${p}.conv1`, cout, cin, 3),
        norm2: norm(`${p}.norm2`, cout),
        conv2: conv(`${p}.conv2`, cout, cout, 3),
        shortcut: cin !== cout ? conv(`${p}.nin_shortcut`, cout, cin, 1) : null,
      };
      return { block, cout };
    };
    const attnBlock = (p: string, c: number): AttnBlock => ({ norm: norm(`${p}.norm`, c), qkv: conv(`${p}.qkv`, 3 * c, c, 1), proj: conv(`${p}.proj_out`, c, c, 1) });

    const inW = get('decoder.conv_in.weight');
    if (inW.rank !== 4) throw new WeightsError(`must be 4-D, got ${formatShape(inW.shape)}`, { code: 'shape-mismatch', file: source, tensor: 'decoder.conv_in.weight' });
    const [top, codeChannels] = inW.shape;
    const convIn = conv('decoder.conv_in', top, codeChannels, 3);
    const b1 = resBlock('decoder.mid.block_1', top);
    const attn = attnBlock('decoder.mid.attn_1', b1.cout);
    const b2 = resBlock('decoder.mid.block_2', b1.cout);
    let ch = b2.cout;
    let count = 0;
    while (has(`decoder.up.${count}.`)) count++;
    if (count === 0) throw new WeightsError('no "decoder.up.{i}" levels', { code: 'missing-tensor', file: source });
    const levels: Level[] = new Array(count);
    const channels: number[] = new Array(count);
    let upsamplings = 0;
    for (let lvl = count - 1; lvl >= 0; lvl--) {
      const level: Level = { blocks: [], attn: [], upsample: null };
      for (let b = 0; has(`decoder.up.${lvl}.block.${b}.`); b++) {
        const r = resBlock(`decoder.up.${lvl}.block.${b}`, ch);
        level.blocks.push(r.block);
        ch = r.cout;
        if (has(`decoder.up.${lvl}.attn.${b}.`)) level.attn.push(attnBlock(`decoder.up.${lvl}.attn.${b}`, ch));
      }
      if (level.attn.length !== 0 && level.attn.length !== level.blocks.length) {
        throw new WeightsError(`level ${lvl} has ${level.blocks.length} blocks but ${level.attn.length} attention blocks`, { code: 'missing-tensor', file: source, tensor: `decoder.up.${lvl}.attn` });
      }
      if (has(`decoder.up.${lvl}.upsample.`)) {
        level.upsample = conv(`decoder.up.${lvl}.upsample.conv`, ch, ch, 3);
        upsamplings++;
      }
      levels[lvl] = level;
      channels[lvl] = ch;
    }
    const normOut = norm('decoder.norm_out', ch);
    const convOut = conv('decoder.conv_out', 3, ch, 3);
    return new VarDecoder(gpu, { codeChannels, stride: 2 ** upsamplings, channels }, convIn, { block1: b1.block, attn, block2: b2.block }, levels, normOut, convOut, opts.maxChunkBytes);
  }

  /** latent [B, codeChannels, h, w] (after post_quant_conv) → clamped image [B, 3, stride·h, stride·w] in [−1, 1]. */
  decode(latent: Tensor): Tensor {
    const { codeChannels: D, stride: s } = this.config;
    if (latent.rank !== 4 || latent.shape[1] !== D) throw new ShapeError('VarDecoder.decode', `expects [B, ${D}, h, w], got ${formatShape(latent.shape)}`);
    return this.ops.decodeBatch(latent, s, (one) => this.decodeOne(one), 'vqvae-image');
  }

  private decodeOne(latent: Tensor): Tensor {
    const ops = this.ops;
    let h: FeatureMap = ops.convIn(latent, this.convIn);
    h = ops.resBlock(h, this.mid.block1, EPS);
    h = this.attnBlock(h, this.mid.attn);
    h = ops.resBlock(h, this.mid.block2, EPS);
    for (let lvl = this.levels.length - 1; lvl >= 0; lvl--) {
      const level = this.levels[lvl];
      level.blocks.forEach((block, i) => {
        h = ops.resBlock(h, block, EPS);
        if (level.attn.length) h = this.attnBlock(h, level.attn[i]);
      });
      if (level.upsample) h = ops.upsampleConv(h, level.upsample);
    }
    return ops.outputHead(h, this.normOut, this.convOut, EPS);
  }

  /**
   * x + proj_out(attention(GN x)): q, k, v from one 1×1 conv (channels 0..C, C..2C, 2C..3C), one head
   * over the H·W positions, softmax(q·kᵀ / √C). Attention levels are small (the latent grid), one chunk.
   */
  private attnBlock(x: FeatureMap, a: AttnBlock): FeatureMap {
    const { gpu } = this;
    const C = x.C;
    const N = x.H * x.W;
    // Attention mixes all channels of a position, so it needs the whole map in one tensor. Chunked maps
    // (a lowered chunk cap) are merged; a map over one binding could not be attended anyway.
    let t = x.chunks[0].t;
    if (x.chunks.length > 1) {
      t = gpu.empty([1, C, x.H, x.W], 'f32', 'vqvae-attn-map');
      const flat = t.reshape([C, N]);
      for (const c of x.chunks) gpu.copy(c.t, flat.rows(c.c0, c.t.shape[1]).reshape(c.t.shape));
    }
    const normed = groupNorm(gpu, t, { groups: GROUPS, weight: a.norm.weight, bias: a.norm.bias, eps: EPS });
    const qkvMap = conv2d(gpu, normed, a.qkv.weight, a.qkv.bias);
    const qkv = qkvMap.reshape([3 * C, N]);
    normed.dispose();
    const part = (i: number): Tensor => {
      const view = qkv.rows(i * C, C);
      if (view.byteOffset % gpu.limits.minStorageBufferOffsetAlignment === 0) return view;
      const copy = gpu.empty([C, N], 'f32', 'vqvae-attn-part');
      copyRows(gpu, qkv, copy, { srcRow: i * C, rows: C });
      return copy;
    };
    const [q, k, v] = [part(0), part(1), part(2)];
    const qT = transpose2d(gpu, q); // [N, C]: query blocks are row ranges
    const o = gpu.empty([N, C], 'f32', 'vqvae-attn-out');
    // Blocks of 64 query rows keep every block's byte offset aligned.
    const block = Math.max(64, Math.floor(SCORE_BLOCK_BYTES / (N * 4) / 64) * 64);
    for (let i0 = 0; i0 < N; i0 += block) {
      const nb = Math.min(block, N - i0);
      const scores = matmul(gpu, qT.rows(i0, nb), k); // [nb, N] = q·k over channels
      const probs = softmaxRows(gpu, scores, 1 / Math.sqrt(C));
      scores.dispose();
      matmul(gpu, probs, v, { transB: true, out: o.rows(i0, nb) }); // [nb, C] = Σ_j p_ij v_j
      probs.dispose();
    }
    qT.dispose();
    for (const p of [q, k, v]) if (p.buffer !== qkv.buffer) p.dispose();
    qkvMap.dispose();
    const h = transpose2d(gpu, o);
    o.dispose();
    const y = conv2d(gpu, h.reshape([1, C, x.H, x.W]), a.proj.weight, a.proj.bias);
    h.dispose();
    gatedResidual(gpu, t, y, null);
    y.dispose();
    if (x.chunks.length === 1) return x;
    this.ops.free(x);
    const split = this.ops.wrap(t);
    if (split.chunks[0].t !== t) t.dispose();
    return split;
  }
}
