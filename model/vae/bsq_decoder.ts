// BSQ-VAE decoder of Infinity (2B: 32 code channels, ch_mult 1,2,4,4,4, stride 16; 8B: 14 channels,
// ch_mult 1,2,4,4, stride 8). A ResNet decoder with GroupNorm(32, eps 1e-6) + swish, nearest ×2 + 3×3 conv
// up-sampling and no attention; output clamped to [−1, 1]. The structure (levels, blocks per level,
// channels, which levels up-sample) is read from the tensor names and shapes, so both recipes — and
// any other width — go through this one class.

import type { Gpu } from '../../engine/device.js';
import type { Tensor } from '../../engine/tensor.js';
import { ShapeError } from '../../engine/errors.js';
import { WeightsError, formatShape } from '../weights/errors.js';
import { type FeatureMap, FeatureOps, type ResBlockWeights } from './feature_map.js';

export interface ConvWeights {
  weight: Tensor;
  bias: Tensor | null;
}

export interface NormWeights {
  weight: Tensor;
  bias: Tensor;
}

export type ResBlock = ResBlockWeights;

export interface DecoderLevel {
  blocks: ResBlock[];
  upsample: ConvWeights | null;
}

export interface BsqDecoderConfig {
  codeChannels: number;
  /** Spatial factor from latent to image: 2^(number of up-sampling levels). */
  stride: number;
  levels: number;
  channels: number[];
}

const EPS = 1e-6;

/** Looks a tensor up under both key forms: `…conv.weight` / `…norm.weight` (canonical) and flat `…weight`. */
function lookup(weights: ReadonlyMap<string, Tensor>, prefix: string, wrapper: 'conv' | 'norm', leaf: string): Tensor | undefined {
  return weights.get(`${prefix}.${wrapper}.${leaf}`) ?? weights.get(`${prefix}.${leaf}`);
}

function need(weights: ReadonlyMap<string, Tensor>, source: string, prefix: string, wrapper: 'conv' | 'norm', leaf: string): Tensor {
  const t = lookup(weights, prefix, wrapper, leaf);
  if (!t) {
    throw new WeightsError(`missing tensor of the VAE decoder (also looked for "${prefix}.${leaf}")`, {
      code: 'missing-tensor',
      file: source,
      tensor: `${prefix}.${wrapper}.${leaf}`,
    });
  }
  return t;
}

function conv(weights: ReadonlyMap<string, Tensor>, source: string, prefix: string): ConvWeights {
  return { weight: need(weights, source, prefix, 'conv', 'weight'), bias: lookup(weights, prefix, 'conv', 'bias') ?? null };
}

function norm(weights: ReadonlyMap<string, Tensor>, source: string, prefix: string): NormWeights {
  return { weight: need(weights, source, prefix, 'norm', 'weight'), bias: need(weights, source, prefix, 'norm', 'bias') };
}

function hasPrefix(weights: ReadonlyMap<string, Tensor>, prefix: string): boolean {
  for (const k of weights.keys()) if (k.startsWith(prefix)) return true;
  return false;
}

function expectShape(source: string, name: string, t: Tensor, shape: number[]): void {
  if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
    throw new WeightsError(`has shape ${formatShape(t.shape)}, expected ${formatShape(shape)}`, { code: 'shape-mismatch', file: source, tensor: name });
  }
}

export class BsqDecoder {
  private readonly ops: FeatureOps;

  private constructor(
    readonly gpu: Gpu,
    readonly config: BsqDecoderConfig,
    private readonly convIn: ConvWeights,
    private readonly mid: ResBlock[],
    private readonly up: DecoderLevel[],
    private readonly normOut: NormWeights,
    private readonly convOut: ConvWeights,
    maxChunkBytes: number | undefined,
    private readonly owned: readonly Tensor[],
  ) {
    this.ops = new FeatureOps(gpu, maxChunkBytes);
  }

  /** Frees the decoder's weights (the tensors it was built from) and its cached weight slices. */
  dispose(): void {
    this.ops.dispose();
    for (const t of this.owned) t.dispose();
  }

  /** Builds the decoder from GPU tensors named as in the checkpoint (`decoder.…`). `source` names the file in errors. */
  static fromWeights(gpu: Gpu, weights: ReadonlyMap<string, Tensor>, source = 'VAE', opts: { maxChunkBytes?: number } = {}): BsqDecoder {
    const p = 'decoder';
    const convIn = conv(weights, source, `${p}.conv_in`);
    if (convIn.weight.rank !== 4) {
      throw new WeightsError(`must be 4-D, got ${formatShape(convIn.weight.shape)}`, { code: 'shape-mismatch', file: source, tensor: `${p}.conv_in.weight` });
    }
    const codeChannels = convIn.weight.shape[1];
    const resBlock = (prefix: string, cin: number): { block: ResBlock; cout: number } => {
      const block: ResBlock = {
        norm1: norm(weights, source, `${prefix}.norm1`),
        conv1: conv(weights, source, `${prefix}.conv1`),
        norm2: norm(weights, source, `${prefix}.norm2`),
        conv2: conv(weights, source, `${prefix}.conv2`),
        shortcut: hasPrefix(weights, `${prefix}.nin_shortcut.`) ? conv(weights, source, `${prefix}.nin_shortcut`) : null,
      };
      const cout = block.conv1.weight.shape[0];
      expectShape(source, `${prefix}.conv1.weight`, block.conv1.weight, [cout, cin, 3, 3]);
      expectShape(source, `${prefix}.conv2.weight`, block.conv2.weight, [cout, cout, 3, 3]);
      expectShape(source, `${prefix}.norm1.weight`, block.norm1.weight, [cin]);
      expectShape(source, `${prefix}.norm2.weight`, block.norm2.weight, [cout]);
      if (cin !== cout && !block.shortcut) {
        throw new WeightsError(`changes channels ${cin}→${cout} but has no nin_shortcut`, { code: 'missing-tensor', file: source, tensor: `${prefix}.nin_shortcut.conv.weight` });
      }
      if (block.shortcut) expectShape(source, `${prefix}.nin_shortcut.weight`, block.shortcut.weight, [cout, cin, 1, 1]);
      return { block, cout };
    };

    let ch = convIn.weight.shape[0];
    const mid: ResBlock[] = [];
    for (const name of ['block_1', 'block_2']) {
      const r = resBlock(`${p}.mid.${name}`, ch);
      mid.push(r.block);
      ch = r.cout;
    }
    let levels = 0;
    while (hasPrefix(weights, `${p}.up.${levels}.`)) levels++;
    if (levels === 0) throw new WeightsError('no "decoder.up.{i}" levels: not a BSQ-VAE decoder', { code: 'missing-tensor', file: source });
    // Levels run from the highest index (lowest resolution) down to 0.
    const up: DecoderLevel[] = new Array(levels);
    const channels: number[] = [];
    let upsamplings = 0;
    for (let lvl = levels - 1; lvl >= 0; lvl--) {
      const blocks: ResBlock[] = [];
      for (let b = 0; hasPrefix(weights, `${p}.up.${lvl}.block.${b}.`); b++) {
        const r = resBlock(`${p}.up.${lvl}.block.${b}`, ch);
        blocks.push(r.block);
        ch = r.cout;
      }
      const upsample = hasPrefix(weights, `${p}.up.${lvl}.upsample.`) ? conv(weights, source, `${p}.up.${lvl}.upsample.conv`) : null;
      if (upsample) {
        expectShape(source, `${p}.up.${lvl}.upsample.conv.weight`, upsample.weight, [ch, ch, 3, 3]);
        upsamplings++;
      }
      up[lvl] = { blocks, upsample };
      channels[lvl] = ch;
    }
    const normOut = norm(weights, source, `${p}.norm_out`);
    expectShape(source, `${p}.norm_out.weight`, normOut.weight, [ch]);
    const convOut = conv(weights, source, `${p}.conv_out`);
    expectShape(source, `${p}.conv_out.weight`, convOut.weight, [3, ch, 3, 3]);
    const config = { codeChannels, stride: 2 ** upsamplings, levels, channels };
    return new BsqDecoder(gpu, config, convIn, mid, up, normOut, convOut, opts.maxChunkBytes, [...weights.values()]);
  }

  /** latent [B, codeChannels, h, w] → image [B, 3, stride·h, stride·w] in [−1, 1]; images decode one at a time. */
  decode(latent: Tensor): Tensor {
    if (latent.rank !== 4 || latent.shape[1] !== this.config.codeChannels) {
      throw new ShapeError('vae.decode', `expects a latent [B, ${this.config.codeChannels}, h, w] (${this.config.codeChannels} code channels), got ${formatShape(latent.shape)}`);
    }
    return this.ops.decodeBatch(latent, this.config.stride, (one) => this.decodeOne(one), 'vae-image');
  }

  private decodeOne(latent: Tensor): Tensor {
    const ops = this.ops;
    let h: FeatureMap = ops.convIn(latent, this.convIn);
    for (const block of this.mid) h = ops.resBlock(h, block, EPS);
    for (let lvl = this.config.levels - 1; lvl >= 0; lvl--) {
      const level = this.up[lvl];
      for (const block of level.blocks) h = ops.resBlock(h, block, EPS);
      if (level.upsample) h = ops.upsampleConv(h, level.upsample);
    }
    return ops.outputHead(h, this.normOut, this.convOut, EPS);
  }
}
