// The Infinity architecture read from a state dict's names and shapes: real checkpoints carry no config.
// Everything the forward pass needs is recoverable: depth and chunking from the block names, width from
// `word_embed`, heads from `scale_mul_1H11`, text width and pooling heads from the text path, bits per
// token from `word_embed`'s input. Constants that weights cannot tell (eps, RoPE base) are upstream's.

import { WeightsError, formatShape } from '../weights/errors.js';

export interface InfinityConfig {
  /** Residual width C (= condition width D for text-to-image). */
  width: number;
  depth: number;
  heads: number;
  headDim: number;
  ffnHidden: number;
  /** Block chunks (`block_chunks.{c}.module.{j}`); 1 when the checkpoint uses `blocks.{i}`. */
  chunks: number;
  layersPerChunk: number;
  /** Text feature width (T5: 2048) and the learned unconditional text length (`cfg_uncond` rows). */
  textWidth: number;
  textMaxLen: number;
  /** Attentive pooling heads (text → sos/condition) and their head dim. */
  poolHeads: number;
  poolHeadDim: number;
  /** Bits per token (the head predicts 2 logits per bit): 32 for 2B, 56 = 14·2·2 for 8B. */
  bitsPerToken: number;
  /** VAE latent channels and the spatial patchify factor: bitsPerToken = vaeChannels · patch². */
  vaeChannels: number;
  patch: number;
  /** Rows of `lvl_embed` (scale embeddings). */
  levels: number;
  /** Layer-norm / RMS-norm epsilon (upstream norm_eps). */
  eps: number;
  /** Key prefix of global layer l, e.g. `block_chunks.1.module.0.`. */
  layerPrefix: (layer: number) => string;
}

export interface ConfigOptions {
  /**
   * Latent channels of the VAE the model is paired with (`decoder.conv_in.conv.weight` input channels).
   * Default: 14 when the model predicts 56 bits (the 8B patchify recipe), else bitsPerToken.
   */
  vaeChannels?: number;
}

/** Shapes by tensor name (what a weights header gives). */
export type ShapeTable = ReadonlyMap<string, readonly number[]>;

function shapeOf(shapes: ShapeTable, name: string, rank?: number): readonly number[] {
  const s = shapes.get(name);
  if (!s) throw new WeightsError('tensor needed to infer the Infinity architecture is missing', { code: 'missing-tensor', tensor: name });
  if (rank !== undefined && s.length !== rank) {
    throw new WeightsError(`expected a rank-${rank} tensor, got shape ${formatShape(s)}`, { code: 'shape-mismatch', tensor: name });
  }
  return s;
}

/** Layer naming: chunked (`block_chunks.c.module.j`) or flat (`blocks.i`, single-chunk models). */
function layerLayout(names: Iterable<string>): { chunks: number; perChunk: number; prefix: (l: number) => string } {
  const chunked = new Map<number, number>();
  const flat = new Set<number>();
  for (const n of names) {
    let m = /^block_chunks\.(\d+)\.module\.(\d+)\./.exec(n);
    if (m) {
      const c = Number(m[1]);
      chunked.set(c, Math.max(chunked.get(c) ?? 0, Number(m[2]) + 1));
      continue;
    }
    m = /^blocks\.(\d+)\./.exec(n);
    if (m) flat.add(Number(m[1]));
  }
  if (chunked.size > 0) {
    const chunks = Math.max(...chunked.keys()) + 1;
    const perChunk = chunked.get(0) ?? 0;
    for (let c = 0; c < chunks; c++) {
      if (chunked.get(c) !== perChunk) {
        throw new WeightsError(`block chunk ${c} has ${chunked.get(c) ?? 0} layers, chunk 0 has ${perChunk}`, {
          code: 'missing-tensor',
          tensor: `block_chunks.${c}.module.*`,
        });
      }
    }
    return { chunks, perChunk, prefix: (l) => `block_chunks.${Math.floor(l / perChunk)}.module.${l % perChunk}.` };
  }
  if (flat.size > 0) {
    const depth = Math.max(...flat) + 1;
    return { chunks: 1, perChunk: depth, prefix: (l) => `blocks.${l}.` };
  }
  throw new WeightsError('no transformer layers (block_chunks.* or blocks.*): not an Infinity checkpoint?', {
    code: 'missing-tensor',
    tensor: 'block_chunks.0.module.0.*',
  });
}

export function inferInfinityConfig(shapes: ShapeTable, options: ConfigOptions = {}): InfinityConfig {
  const [width, bitsPerToken] = shapeOf(shapes, 'word_embed.weight', 2);
  const layout = layerLayout(shapes.keys());
  const first = layout.prefix(0);
  const heads = shapeOf(shapes, `${first}sa.scale_mul_1H11`).reduce((a, b) => a * b, 1);
  if (width % heads !== 0) {
    throw new WeightsError(`width ${width} is not divisible by ${heads} heads`, { code: 'shape-mismatch', tensor: `${first}sa.scale_mul_1H11` });
  }
  const [ffnHidden] = shapeOf(shapes, `${first}ffn.fc1.weight`, 2);
  const [textMaxLen, textWidth] = shapeOf(shapes, 'cfg_uncond', 2);
  const poolQ = shapeOf(shapes, 'text_proj_for_sos.ca.mat_q', 3);
  if (poolQ[1] * poolQ[2] !== width) {
    throw new WeightsError(`pooling query ${formatShape(poolQ)} does not split the width ${width} into heads`, {
      code: 'shape-mismatch',
      tensor: 'text_proj_for_sos.ca.mat_q',
    });
  }
  const [levels] = shapeOf(shapes, 'lvl_embed.weight', 2);
  const vaeChannels = options.vaeChannels ?? (bitsPerToken === 56 ? 14 : bitsPerToken);
  const patch = Math.round(Math.sqrt(bitsPerToken / vaeChannels));
  if (patch * patch * vaeChannels !== bitsPerToken) {
    throw new WeightsError(`${bitsPerToken} bits per token is not ${vaeChannels} VAE channels × a square patch`, {
      code: 'shape-mismatch',
      tensor: 'word_embed.weight',
    });
  }
  return {
    width,
    depth: layout.chunks * layout.perChunk,
    heads,
    headDim: width / heads,
    ffnHidden,
    chunks: layout.chunks,
    layersPerChunk: layout.perChunk,
    textWidth,
    textMaxLen,
    poolHeads: poolQ[1],
    poolHeadDim: poolQ[2],
    bitsPerToken,
    vaeChannels,
    patch,
    levels,
    eps: 1e-6,
    layerPrefix: layout.prefix,
  };
}

/** Every tensor the forward pass reads, with its expected shape (zero_k_bias buffers are optional). */
export function expectedShapes(cfg: InfinityConfig): Map<string, number[]> {
  const C = cfg.width;
  const T = cfg.textWidth;
  const m = new Map<string, number[]>([
    ['cfg_uncond', [cfg.textMaxLen, T]],
    ['text_norm.weight', [T]],
    ['text_proj_for_sos.ca.mat_q', [1, cfg.poolHeads, cfg.poolHeadDim]],
    ['text_proj_for_sos.ca.mat_kv.weight', [2 * C, T]],
    ['text_proj_for_sos.ca.v_bias', [C]],
    ['text_proj_for_sos.ca.proj.weight', [C, C]],
    ['text_proj_for_sos.ca.proj.bias', [C]],
    ['text_proj_for_ca.0.weight', [C, T]],
    ['text_proj_for_ca.0.bias', [C]],
    ['text_proj_for_ca.2.weight', [C, C]],
    ['text_proj_for_ca.2.bias', [C]],
    ['pos_start', [1, 1, C]],
    ['lvl_embed.weight', [cfg.levels, C]],
    ['word_embed.weight', [C, cfg.bitsPerToken]],
    ['word_embed.bias', [C]],
    ['shared_ada_lin.1.weight', [6 * C, C]],
    ['shared_ada_lin.1.bias', [6 * C]],
    ['head_nm.ada_lin.1.weight', [2 * C, C]],
    ['head_nm.ada_lin.1.bias', [2 * C]],
    ['head.weight', [2 * cfg.bitsPerToken, C]],
    ['head.bias', [2 * cfg.bitsPerToken]],
  ]);
  for (let l = 0; l < cfg.depth; l++) {
    const p = cfg.layerPrefix(l);
    const layer: Array<[string, number[]]> = [
      ['ada_gss', [1, 1, 6, C]],
      ['sa.scale_mul_1H11', [1, cfg.heads, 1, 1]],
      ['sa.q_bias', [C]],
      ['sa.v_bias', [C]],
      ['sa.mat_qkv.weight', [3 * C, C]],
      ['sa.proj.weight', [C, C]],
      ['sa.proj.bias', [C]],
      ['ca.mat_q.weight', [C, C]],
      ['ca.mat_q.bias', [C]],
      ['ca.mat_kv.weight', [2 * C, C]],
      ['ca.v_bias', [C]],
      ['ca.proj.weight', [C, C]],
      ['ca.proj.bias', [C]],
      ['ffn.fc1.weight', [cfg.ffnHidden, C]],
      ['ffn.fc1.bias', [cfg.ffnHidden]],
      ['ffn.fc2.weight', [C, cfg.ffnHidden]],
      ['ffn.fc2.bias', [C]],
      ['ca_norm.weight', [C]],
      ['ca_norm.bias', [C]],
    ];
    for (const [k, s] of layer) m.set(p + k, s);
  }
  return m;
}

/** The optional all-zero key-bias buffers; checked for shape when present, never read. */
export function optionalZeroBiases(cfg: InfinityConfig): Map<string, number[]> {
  const m = new Map<string, number[]>([['text_proj_for_sos.ca.zero_k_bias', [cfg.width]]]);
  for (let l = 0; l < cfg.depth; l++) {
    m.set(`${cfg.layerPrefix(l)}sa.zero_k_bias`, [cfg.width]);
    m.set(`${cfg.layerPrefix(l)}ca.zero_k_bias`, [cfg.width]);
  }
  return m;
}
