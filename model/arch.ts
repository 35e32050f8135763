// Recognises what a set of weights is — Infinity transformer, its BSQ-VAE, T5 encoder, STAR, its
// VQ-VAE, CLIP text encoder — and reads the architecture's sizes, from tensor names and shapes only.
// Released checkpoints carry no config, so this is the single place that turns a state dict into
// "depth 32, width 2048, 16 heads, …"; model builders call it and use `expectArchitecture` to fail
// with "this file is a VAE, not a transformer" instead of a missing-key error deep inside.

import type { Dtype } from './weights/dtype_convert.js';
import { WeightsError, formatShape } from './weights/errors.js';
import { Checkpoint, listWeightSets, type CheckpointSummary, type OpenCheckpointOptions } from './weights/checkpoint.js';
import { stat } from 'node:fs/promises';

export type ArchKind = 'infinity' | 'infinity-vae' | 't5-encoder' | 'star' | 'star-vqvae' | 'clip-text' | 'unknown';

export interface TensorShapeInfo {
  name: string;
  shape: readonly number[];
  dtype?: Dtype;
}

interface ArchBase {
  /** Prefix in front of every name when the weights sit inside a larger dict (e.g. `trainer.var_wo_ddp.`). */
  prefix?: string;
}

export interface InfinityArch extends ArchBase {
  kind: 'infinity';
  depth: number;
  width: number;
  heads: number;
  head_dim: number;
  /** Number of `block_chunks.{c}`; 1 when the layers are stored as `blocks.{i}`. */
  chunks: number;
  layers_per_chunk: number;
  /** Width of the text features (T5 width). */
  text_width: number;
  /** Bits per token = `word_embed` input features (32, or 56 with the 8B's spatial patchify). */
  bits: number;
  /** 2 × bits logits. */
  head_outputs: number;
  /** bits = 4 × VAE code channels: tokens cover 2×2 VAE cells. */
  patchify: boolean;
  /** VAE code channels this transformer expects (bits, or bits / 4 with patchify). */
  vae_codebook_dim: number;
  ffn_width: number;
  /** Rows of `lvl_embed` (max scales). */
  levels: number;
  /** Rows of the learned unconditional text (`cfg_uncond`). */
  text_max_len: number;
  has_zero_k_bias: boolean;
}

export interface InfinityVaeArch extends ArchBase {
  kind: 'infinity-vae';
  codebook_dim: number;
  base_channels: number;
  ch_mult: number[];
  /** ResBlocks per decoder level (the training config's num_res_blocks + 1). */
  decoder_res_blocks: number;
  /** Decoder up-sampling steps; the latent stride is 2^upsamples. */
  upsamples: number;
  /** `canonical` = `….conv.weight` / `….norm.weight` wrappers, `flat` = plain names. */
  naming: 'canonical' | 'flat';
  has_encoder: boolean;
}

export interface T5EncoderArch extends ArchBase {
  kind: 't5-encoder';
  depth: number;
  width: number;
  heads: number;
  d_kv: number;
  d_ff: number;
  gated_ffn: boolean;
  vocab: number;
  relative_buckets: number;
  has_decoder: boolean;
}

export interface StarArch extends ArchBase {
  kind: 'star';
  depth: number;
  width: number;
  heads: number;
  head_dim: number;
  /** Rows of `lvl_embed`: the number of scales K. */
  levels: number;
  /** Width of the per-token text states (cross-attention keys/values). */
  text_width: number;
  /** Width of the pooled text vector (`encoder_proj` input). */
  pooled_width: number;
  vocab: number;
  vae_codebook_dim: number;
  ffn_width: number;
  has_sampler: boolean;
  has_class_emb: boolean;
}

export interface StarVqvaeArch extends ArchBase {
  kind: 'star-vqvae';
  codebook_size: number;
  codebook_dim: number;
  base_channels: number;
  ch_mult: number[];
  /** ResBlocks per decoder level (the training config's num_res_blocks + 1). */
  decoder_res_blocks: number;
  upsamples: number;
  /** Number of φ convs (`quantize.quant_resi.qresi_ls.{k}`). */
  phi_convs: number;
  has_encoder: boolean;
}

export interface ClipTextArch extends ArchBase {
  kind: 'clip-text';
  depth: number;
  width: number;
  /** Not recoverable from weights (q/k/v are width × width): read it from config.json. */
  heads: null;
  mlp_width: number;
  vocab: number;
  max_positions: number;
  has_projection: boolean;
}

export interface UnknownArch extends ArchBase {
  kind: 'unknown';
}

export type Architecture = InfinityArch | InfinityVaeArch | T5EncoderArch | StarArch | StarVqvaeArch | ClipTextArch | UnknownArch;

export interface DetectOptions {
  /** VAE code channels, when known (e.g. from the VAE file): decides patchify exactly. */
  vaeCodebookDim?: number;
}

/** Code widths of Infinity's released BSQ-VAEs (`vae_type`); used to guess patchify without a VAE. */
const INFINITY_CODEBOOK_DIMS = new Set([14, 16, 18, 20, 24, 32, 64]);

// ---------------------------------------------------------------- shape lookups

class ShapeTable {
  constructor(
    private readonly shapes: ReadonlyMap<string, readonly number[]>,
    readonly prefix: string,
  ) {}

  has(name: string): boolean {
    return this.shapes.has(this.prefix + name);
  }

  shape(name: string): readonly number[] | undefined {
    return this.shapes.get(this.prefix + name);
  }

  /** Dimension `dim` of a tensor that must exist with `rank` dims. */
  dim(name: string, dim: number, rank?: number): number {
    const shape = this.shape(name);
    if (!shape) {
      throw new WeightsError('tensor needed to read the architecture is missing', { code: 'missing-tensor', tensor: this.prefix + name });
    }
    if ((rank !== undefined && shape.length !== rank) || dim >= shape.length) {
      throw new WeightsError(`has shape ${formatShape(shape)}; expected ${rank ?? dim + 1} dims`, {
        code: 'shape-mismatch',
        tensor: this.prefix + name,
      });
    }
    return shape[dim]!;
  }

  /** Names (without prefix) matching `pattern`, with their capture groups. */
  *match(pattern: RegExp): Generator<RegExpExecArray> {
    for (const full of this.shapes.keys()) {
      if (!full.startsWith(this.prefix)) continue;
      const m = pattern.exec(full.slice(this.prefix.length));
      if (m) yield m;
    }
  }

  /** Distinct integer values of capture group 1 of `pattern`, sorted. */
  indices(pattern: RegExp): number[] {
    const found = new Set<number>();
    for (const m of this.match(pattern)) found.add(Number(m[1]));
    return [...found].sort((a, b) => a - b);
  }

  any(pattern: RegExp): boolean {
    return !this.match(pattern).next().done;
  }
}

/** Checks that indices are 0..n-1 (a gap means a corrupt or partial checkpoint). */
function countConsecutive(indices: number[], what: string, prefix: string): number {
  indices.forEach((value, i) => {
    if (value !== i) {
      throw new WeightsError(`${what} ${i} is missing (found ${indices.join(', ')})`, { code: 'missing-tensor', tensor: `${prefix}${what}.${i}` });
    }
  });
  return indices.length;
}

// ---------------------------------------------------------------- detectors

function detectInfinity(t: ShapeTable, options: DetectOptions): InfinityArch | undefined {
  if (!t.has('word_embed.weight') || !t.has('head.weight') || !t.has('shared_ada_lin.1.weight')) return undefined;
  const chunkIndices = t.indices(/^block_chunks\.(\d+)\.module\.\d+\.sa\.mat_qkv\.weight$/);
  let chunks: number;
  let layersPerChunk: number;
  let firstLayer: string;
  if (chunkIndices.length > 0) {
    chunks = countConsecutive(chunkIndices, 'block_chunks', t.prefix);
    const perChunk = chunkIndices.map((c) =>
      t.indices(new RegExp(`^block_chunks\\.${c}\\.module\\.(\\d+)\\.sa\\.mat_qkv\\.weight$`)),
    );
    layersPerChunk = countConsecutive(perChunk[0]!, 'block_chunks.0.module', t.prefix);
    perChunk.forEach((layers, c) => {
      if (layers.length !== layersPerChunk) {
        throw new WeightsError(`block_chunks.${c} has ${layers.length} layers but block_chunks.0 has ${layersPerChunk}`, {
          code: 'shape-mismatch',
          tensor: `${t.prefix}block_chunks.${c}`,
        });
      }
    });
    firstLayer = 'block_chunks.0.module.0.';
  } else {
    const layers = t.indices(/^blocks\.(\d+)\.sa\.mat_qkv\.weight$/);
    if (layers.length === 0) return undefined;
    chunks = 1;
    layersPerChunk = countConsecutive(layers, 'blocks', t.prefix);
    firstLayer = 'blocks.0.';
  }
  const width = t.dim('word_embed.weight', 0, 2);
  const bits = t.dim('word_embed.weight', 1, 2);
  const heads = t.dim(`${firstLayer}sa.scale_mul_1H11`, 1, 4);
  const patchify =
    options.vaeCodebookDim !== undefined
      ? bits === 4 * options.vaeCodebookDim
      : !INFINITY_CODEBOOK_DIMS.has(bits) && bits % 4 === 0 && INFINITY_CODEBOOK_DIMS.has(bits / 4);
  const textWidth = t.has('text_proj_for_ca.0.weight') ? t.dim('text_proj_for_ca.0.weight', 1, 2) : t.dim('cfg_uncond', 1, 2);
  return {
    kind: 'infinity',
    depth: chunks * layersPerChunk,
    width,
    heads,
    head_dim: width / heads,
    chunks,
    layers_per_chunk: layersPerChunk,
    text_width: textWidth,
    bits,
    head_outputs: t.dim('head.weight', 0, 2),
    patchify,
    vae_codebook_dim: patchify ? bits / 4 : bits,
    ffn_width: t.dim(`${firstLayer}ffn.fc1.weight`, 0, 2),
    levels: t.has('lvl_embed.weight') ? t.dim('lvl_embed.weight', 0, 2) : 0,
    text_max_len: t.has('cfg_uncond') ? t.dim('cfg_uncond', 0, 2) : 0,
    has_zero_k_bias: t.any(/\.zero_k_bias$/),
  };
}

/** Decoder layout shared by both VAEs: base width, per-level multipliers, blocks, up-samplings. */
function decoderLayout(t: ShapeTable, wrap: (kind: 'conv' | 'norm') => string) {
  const levels = t.indices(/^decoder\.up\.(\d+)\.block\.0\./);
  const baseChannels = t.dim(`decoder.conv_out${wrap('conv')}.weight`, 1, 4);
  const chMult = levels.map((level) => t.dim(`decoder.up.${level}.block.0.conv2${wrap('conv')}.weight`, 0, 4) / baseChannels);
  const blocks = levels.length > 0 ? t.indices(/^decoder\.up\.0\.block\.(\d+)\./).length : 0;
  return {
    base_channels: baseChannels,
    ch_mult: chMult,
    decoder_res_blocks: blocks,
    upsamples: t.indices(/^decoder\.up\.(\d+)\.upsample\./).length,
    has_encoder: t.any(/^encoder\./),
  };
}

function detectVae(t: ShapeTable): InfinityVaeArch | StarVqvaeArch | undefined {
  const canonical = t.has('decoder.conv_in.conv.weight');
  if (!canonical && !t.has('decoder.conv_in.weight')) return undefined;
  if (t.has('quantize.embedding.weight')) {
    // VAR / STAR multi-scale VQ-VAE: a learned codebook and φ convs.
    return {
      kind: 'star-vqvae',
      codebook_size: t.dim('quantize.embedding.weight', 0, 2),
      codebook_dim: t.dim('quantize.embedding.weight', 1, 2),
      ...decoderLayout(t, () => ''),
      phi_convs: t.indices(/^quantize\.quant_resi\.qresi_ls\.(\d+)\.weight$/).length,
    };
  }
  // Infinity's BSQ-VAE: no codebook (binary codes); conv_in's input channels are the code width.
  const wrap = (kind: 'conv' | 'norm'): string => (canonical ? `.${kind}` : '');
  return {
    kind: 'infinity-vae',
    codebook_dim: t.dim(`decoder.conv_in${wrap('conv')}.weight`, 1, 4),
    ...decoderLayout(t, wrap),
    naming: canonical ? 'canonical' : 'flat',
  };
}

function detectT5(t: ShapeTable): T5EncoderArch | undefined {
  const q = 'encoder.block.0.layer.0.SelfAttention.q.weight';
  if (!t.has(q)) return undefined;
  const depth = countConsecutive(t.indices(/^encoder\.block\.(\d+)\.layer\.0\.SelfAttention\.q\.weight$/), 'encoder.block', t.prefix);
  const bias = 'encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight';
  const heads = t.dim(bias, 1, 2);
  const gated = t.has('encoder.block.0.layer.1.DenseReluDense.wi_0.weight');
  const embedding = t.has('shared.weight') ? 'shared.weight' : 'encoder.embed_tokens.weight';
  return {
    kind: 't5-encoder',
    depth,
    width: t.dim(q, 1, 2),
    heads,
    d_kv: t.dim(q, 0, 2) / heads,
    d_ff: t.dim(`encoder.block.0.layer.1.DenseReluDense.${gated ? 'wi_0' : 'wi'}.weight`, 0, 2),
    gated_ffn: gated,
    vocab: t.dim(embedding, 0, 2),
    relative_buckets: t.dim(bias, 0, 2),
    has_decoder: t.any(/^decoder\.block\./),
  };
}

function detectStar(t: ShapeTable): StarArch | undefined {
  if (!t.has('head_logits.weight') || !t.has('word_embed.weight') || !t.has('blocks.0.attn.mat_qkv.weight')) return undefined;
  const depth = countConsecutive(t.indices(/^blocks\.(\d+)\.attn\.mat_qkv\.weight$/), 'blocks', t.prefix);
  const width = t.dim('word_embed.weight', 0, 2);
  const heads = t.dim('blocks.0.attn.scale_mul_1H11', 1, 4);
  return {
    kind: 'star',
    depth,
    width,
    heads,
    head_dim: width / heads,
    levels: t.dim('lvl_embed.weight', 0, 2),
    text_width: t.dim('blocks.0.cross_attn.mat_kv.weight', 1, 2),
    pooled_width: t.dim('encoder_proj.weight', 1, 2),
    vocab: t.dim('head_logits.weight', 0, 2),
    vae_codebook_dim: t.dim('word_embed.weight', 1, 2),
    ffn_width: t.dim('blocks.0.ffn.fc1.weight', 0, 2),
    has_sampler: t.any(/^(feat_extract_blocks|head_logits2)\./),
    has_class_emb: t.has('class_emb.weight'),
  };
}

function detectClip(t: ShapeTable): ClipTextArch | undefined {
  const tokens = 'text_model.embeddings.token_embedding.weight';
  if (!t.has(tokens) || !t.has('text_model.encoder.layers.0.self_attn.q_proj.weight')) return undefined;
  return {
    kind: 'clip-text',
    depth: countConsecutive(
      t.indices(/^text_model\.encoder\.layers\.(\d+)\.self_attn\.q_proj\.weight$/),
      'text_model.encoder.layers',
      t.prefix,
    ),
    width: t.dim(tokens, 1, 2),
    heads: null,
    mlp_width: t.dim('text_model.encoder.layers.0.mlp.fc1.weight', 0, 2),
    vocab: t.dim(tokens, 0, 2),
    max_positions: t.dim('text_model.embeddings.position_embedding.weight', 0, 2),
    has_projection: t.has('text_projection.weight'),
  };
}

const DETECTORS: ReadonlyArray<(t: ShapeTable, options: DetectOptions) => Architecture | undefined> = [
  detectInfinity,
  detectStar,
  (t) => detectVae(t),
  (t) => detectT5(t),
  (t) => detectClip(t),
];

/** Names whose presence marks the start of a model; what precedes them is a candidate prefix. */
const ANCHORS = [
  'word_embed.weight',
  'decoder.conv_in.conv.weight',
  'decoder.conv_in.weight',
  'encoder.block.0.layer.0.SelfAttention.q.weight',
  'text_model.embeddings.token_embedding.weight',
];

function candidatePrefixes(names: Iterable<string>): string[] {
  const prefixes = new Set<string>();
  for (const name of names) {
    for (const anchor of ANCHORS) {
      if (name.length > anchor.length && name.endsWith(`.${anchor}`)) prefixes.add(name.slice(0, name.length - anchor.length));
    }
  }
  return [...prefixes].sort((a, b) => a.length - b.length || a.localeCompare(b));
}

/**
 * What the tensors are, from names and shapes only. Weights nested in a bigger dict (a training
 * snapshot's `trainer.var_wo_ddp.`, a `vae.` entry) are found too; `prefix` then says where.
 * Throws WeightsError only when a recognised model is internally inconsistent (a missing layer,
 * a tensor of the wrong rank).
 */
export function detectArchitecture(tensors: Iterable<TensorShapeInfo>, options: DetectOptions = {}): Architecture {
  const shapes = new Map<string, readonly number[]>();
  for (const t of tensors) shapes.set(t.name, t.shape);
  const tables = ['', ...candidatePrefixes(shapes.keys())].map((prefix) => new ShapeTable(shapes, prefix));
  // Detectors outermost: in a training snapshot holding a transformer and a copy of its VAE, the
  // transformer is what the file is for.
  for (const detect of DETECTORS) {
    for (const table of tables) {
      const found = detect(table, options);
      if (found) return table.prefix === '' ? found : { ...found, prefix: table.prefix };
    }
  }
  return { kind: 'unknown' };
}

const KIND_DESCRIPTIONS: Readonly<Record<ArchKind, string>> = {
  infinity: 'an Infinity transformer',
  'infinity-vae': 'an Infinity BSQ-VAE',
  't5-encoder': 'a T5 encoder',
  star: 'a STAR transformer',
  'star-vqvae': "STAR's VQ-VAE",
  'clip-text': 'a CLIP text encoder',
  unknown: 'not a recognised model',
};

/** Detects and insists on one kind: "model.safetensors is an Infinity BSQ-VAE, not an Infinity transformer". */
export function expectArchitecture<K extends ArchKind>(
  tensors: Iterable<TensorShapeInfo>,
  kind: K,
  context: { file?: string } & DetectOptions = {},
): Extract<Architecture, { kind: K }> {
  const found = detectArchitecture(tensors, context);
  if (found.kind !== kind) {
    throw new WeightsError(`this is ${KIND_DESCRIPTIONS[found.kind]}, not ${KIND_DESCRIPTIONS[kind]}`, {
      code: 'bad-argument',
      ...(context.file !== undefined ? { file: context.file } : {}),
    });
  }
  return found as Extract<Architecture, { kind: K }>;
}

// ---------------------------------------------------------------- inspection (used by the CLI)

export interface WeightSetReport extends CheckpointSummary {
  path: string;
  format: string;
  files: string[];
  architecture: Architecture;
}

/** Opens (validating every data range) and describes one weight set. */
export async function inspectWeightSet(path: string, options: OpenCheckpointOptions & DetectOptions = {}): Promise<WeightSetReport> {
  const checkpoint = await Checkpoint.open(path, options);
  try {
    return {
      path,
      format: checkpoint.format,
      files: [...checkpoint.files],
      ...checkpoint.summary(),
      architecture: detectArchitecture(checkpoint.tensors(), options),
    };
  } finally {
    await checkpoint.close();
  }
}

/**
 * A file gives one report; a folder gives one per weight set (its index, else each weight file, and
 * sub-folders such as `text_encoder/`). In a folder that also holds an Infinity VAE, the VAE's code
 * width settles the transformer's patchify flag.
 */
export async function inspectWeights(path: string, options: OpenCheckpointOptions = {}): Promise<WeightSetReport[]> {
  const isFolder = (await stat(path).catch(() => undefined))?.isDirectory() ?? false;
  if (!isFolder) return [await inspectWeightSet(path, options)];
  const sets = await listWeightSets(path);
  if (sets.length === 0) {
    throw new WeightsError('folder holds no weight files', { code: 'missing-tensor', file: path });
  }
  const reports: WeightSetReport[] = [];
  for (const set of sets) reports.push(await inspectWeightSet(set, options));
  const vae = reports.find((r) => r.architecture.kind === 'infinity-vae')?.architecture as InfinityVaeArch | undefined;
  if (vae) {
    for (const [i, report] of reports.entries()) {
      if (report.architecture.kind === 'infinity') {
        reports[i] = await inspectWeightSet(report.path, { ...options, vaeCodebookDim: vae.codebook_dim });
      }
    }
  }
  return reports;
}
