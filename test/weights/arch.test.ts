// Architecture detection on the shared fixtures (read in place, never copied) and on synthetic
// name/shape lists: nested prefixes, patchify without a VAE, inconsistent checkpoints.
import { existsSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import {
  detectArchitecture,
  expectArchitecture,
  inspectWeights,
  type Architecture,
  type TensorShapeInfo,
} from '../../model/arch.js';
import { Checkpoint } from '../../model/weights/checkpoint.js';
import { WeightsError } from '../../model/weights/errors.js';

const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
/** A path in ../shared/fixtures; throws (never skips) when it is missing. */
function fixture(...parts: string[]): string {
  const p = resolve(repoRoot, '../shared/fixtures', ...parts);
  if (!existsSync(p)) throw new Error(`fixture missing: ${p} (tests read ../shared/fixtures beside the repository)`);
  return p;
}

async function detect(path: string): Promise<Architecture> {
  const ckpt = await Checkpoint.open(path);
  try {
    return detectArchitecture(ckpt.tensors());
  } finally {
    await ckpt.close();
  }
}

describe('fixtures', () => {
  it('infinity-tiny model: Infinity, depth 4, width 256, 2 heads, 2 chunks', async () => {
    expect(await detect(fixture('infinity-tiny', 'model.safetensors'))).toMatchObject({
      kind: 'infinity',
      depth: 4,
      width: 256,
      heads: 2,
      head_dim: 128,
      chunks: 2,
      layers_per_chunk: 2,
      text_width: 256,
      bits: 32,
      head_outputs: 64,
      patchify: false,
      levels: 15,
      has_zero_k_bias: true,
    });
  });

  it('infinity-tiny vae: infinity-vae with codebook_dim 32', async () => {
    expect(await detect(fixture('infinity-tiny', 'vae.safetensors'))).toMatchObject({
      kind: 'infinity-vae',
      codebook_dim: 32,
      base_channels: 32,
      ch_mult: [1, 2, 4, 4, 4],
      decoder_res_blocks: 3,
      upsamples: 4,
      naming: 'canonical',
      has_encoder: false,
    });
  });

  it('infinity8b-tiny: 56 bits, patchify, 2 chunks of 5, depth 10; its VAE has 14 code channels', async () => {
    expect(await detect(fixture('infinity8b-tiny', 'model.safetensors'))).toMatchObject({
      kind: 'infinity',
      bits: 56,
      head_outputs: 112,
      patchify: true,
      vae_codebook_dim: 14,
      chunks: 2,
      layers_per_chunk: 5,
      depth: 10,
    });
    expect(await detect(fixture('infinity8b-tiny', 'vae.safetensors'))).toMatchObject({
      kind: 'infinity-vae',
      codebook_dim: 14,
      ch_mult: [1, 2, 4, 4],
      upsamples: 3,
    });
  });

  it('t5-tiny folder (sharded index): t5-encoder', async () => {
    expect(await detect(fixture('t5-tiny'))).toMatchObject({
      kind: 't5-encoder',
      depth: 3,
      width: 64,
      heads: 4,
      d_kv: 16,
      d_ff: 160,
      gated_ffn: true,
      vocab: 32128,
      relative_buckets: 32,
      has_decoder: true,
    });
  });

  it('star-tiny: star transformer and star-vqvae', async () => {
    expect(await detect(fixture('star-tiny', 'model.safetensors'))).toMatchObject({
      kind: 'star',
      depth: 2,
      width: 128,
      heads: 2,
      levels: 8,
      text_width: 1024,
      pooled_width: 1024,
      vocab: 4096,
      vae_codebook_dim: 32,
      has_sampler: false,
      has_class_emb: true,
    });
    expect(await detect(fixture('star-tiny', 'vae.safetensors'))).toMatchObject({
      kind: 'star-vqvae',
      codebook_size: 4096,
      codebook_dim: 32,
      ch_mult: [1, 1, 2, 2, 4],
      decoder_res_blocks: 3,
      phi_convs: 4,
    });
  });

  it('clip-tiny/text_encoder: clip-text', async () => {
    expect(await detect(fixture('clip-tiny', 'text_encoder'))).toMatchObject({
      kind: 'clip-text',
      depth: 3,
      width: 64,
      heads: null,
      mlp_width: 256,
      vocab: 49408,
      max_positions: 77,
    });
  });

  it('golden files are unknown', async () => {
    expect((await detect(fixture('infinity-tiny', 'golden.safetensors'))).kind).toBe('unknown');
  });

  it('inspects a fixture folder as its weight sets, the VAE settling patchify', async () => {
    const reports = await inspectWeights(fixture('infinity8b-tiny'));
    const kinds = reports.map((r) => r.architecture.kind).sort();
    expect(kinds).toEqual(['infinity', 'infinity-vae', 'unknown']);
    const model = reports.find((r) => r.architecture.kind === 'infinity')!;
    expect(model.architecture).toMatchObject({ patchify: true, vae_codebook_dim: 14 });
    expect(model.tensors).toBe(232);
    expect(Object.keys(model.dtypes)).toEqual(['BF16']);
  });

  it('finds clip-tiny/text_encoder as a sub-folder weight set', async () => {
    const reports = await inspectWeights(fixture('clip-tiny'));
    expect(reports.map((r) => r.architecture.kind).sort()).toEqual(['clip-text', 'unknown']);
  });
});

describe('synthetic name lists', () => {
  const infinity = (prefix = '', bits = 32, blocks = 'block_chunks'): TensorShapeInfo[] => {
    const t: TensorShapeInfo[] = [
      { name: 'word_embed.weight', shape: [64, bits] },
      { name: 'head.weight', shape: [2 * bits, 64] },
      { name: 'shared_ada_lin.1.weight', shape: [384, 64] },
      { name: 'cfg_uncond', shape: [512, 48] },
    ];
    for (let layer = 0; layer < 6; layer++) {
      const base = blocks === 'block_chunks' ? `block_chunks.${Math.floor(layer / 3)}.module.${layer % 3}.` : `blocks.${layer}.`;
      t.push({ name: `${base}sa.mat_qkv.weight`, shape: [192, 64] });
      t.push({ name: `${base}sa.scale_mul_1H11`, shape: [1, 4, 1, 1] });
      t.push({ name: `${base}ffn.fc1.weight`, shape: [256, 64] });
    }
    return t.map((x) => ({ ...x, name: prefix + x.name }));
  };

  it('reads chunks and falls back to cfg_uncond for the text width', () => {
    expect(detectArchitecture(infinity())).toMatchObject({ kind: 'infinity', depth: 6, chunks: 2, layers_per_chunk: 3, heads: 4, text_width: 48 });
  });

  it('handles a single chunk stored as blocks.{i}', () => {
    expect(detectArchitecture(infinity('', 32, 'blocks'))).toMatchObject({ kind: 'infinity', depth: 6, chunks: 1, layers_per_chunk: 6 });
  });

  it('finds weights nested under a prefix (training snapshot)', () => {
    expect(detectArchitecture(infinity('trainer.gpt_fsdp.'))).toMatchObject({ kind: 'infinity', prefix: 'trainer.gpt_fsdp.', depth: 6 });
  });

  it('prefers the transformer of a training snapshot that also holds its VAE', () => {
    const snapshot = [
      ...infinity('trainer.gpt_fsdp.'),
      { name: 'trainer.vae_local.decoder.conv_in.weight', shape: [64, 32, 3, 3] },
      { name: 'trainer.vae_local.decoder.conv_out.weight', shape: [3, 16, 3, 3] },
    ];
    expect(detectArchitecture(snapshot)).toMatchObject({ kind: 'infinity', prefix: 'trainer.gpt_fsdp.' });
    const vaeOnly = snapshot.filter((t) => t.name.startsWith('trainer.vae_local.'));
    expect(detectArchitecture(vaeOnly)).toMatchObject({ kind: 'infinity-vae', prefix: 'trainer.vae_local.', codebook_dim: 32 });
  });

  it('guesses patchify from bits alone, and decides it exactly with the VAE width', () => {
    expect(detectArchitecture(infinity('', 56))).toMatchObject({ patchify: true, vae_codebook_dim: 14 });
    expect(detectArchitecture(infinity('', 64))).toMatchObject({ patchify: false, vae_codebook_dim: 64 });
    expect(detectArchitecture(infinity('', 64), { vaeCodebookDim: 16 })).toMatchObject({ patchify: true, vae_codebook_dim: 16 });
  });

  it('reports a missing layer of a recognised model', () => {
    const broken = infinity().filter((t) => !t.name.startsWith('block_chunks.1.module.1.'));
    expect(() => detectArchitecture(broken)).toThrow(/block_chunks.1 has 2 layers but block_chunks.0 has 3/);
  });

  it('reports a tensor of the wrong rank', () => {
    const broken = infinity().map((t) => (t.name.endsWith('scale_mul_1H11') ? { ...t, shape: [4] } : t));
    expect(() => detectArchitecture(broken)).toThrow(WeightsError);
  });

  it('flat-named Infinity VAE keys (as a raw .pth may hold them)', () => {
    const t: TensorShapeInfo[] = [
      { name: 'vae.decoder.conv_in.weight', shape: [512, 32, 3, 3] },
      { name: 'vae.decoder.conv_out.weight', shape: [3, 128, 3, 3] },
      { name: 'vae.decoder.up.0.block.0.conv2.weight', shape: [128, 128, 3, 3] },
      { name: 'vae.decoder.up.1.block.0.conv2.weight', shape: [256, 256, 3, 3] },
      { name: 'vae.decoder.up.1.upsample.conv.weight', shape: [256, 256, 3, 3] },
      { name: 'vae.encoder.conv_in.weight', shape: [128, 3, 3, 3] },
    ];
    expect(detectArchitecture(t)).toMatchObject({
      kind: 'infinity-vae',
      prefix: 'vae.',
      naming: 'flat',
      codebook_dim: 32,
      ch_mult: [1, 2],
      upsamples: 1,
      has_encoder: true,
    });
  });

  it('expectArchitecture explains what a file is instead', async () => {
    const ckpt = await Checkpoint.open(fixture('infinity-tiny', 'vae.safetensors'));
    try {
      expect(() => expectArchitecture(ckpt.tensors(), 'infinity', { file: ckpt.path })).toThrow(
        /vae\.safetensors: this is an Infinity BSQ-VAE, not an Infinity transformer/,
      );
      expect(expectArchitecture(ckpt.tensors(), 'infinity-vae').codebook_dim).toBe(32);
    } finally {
      await ckpt.close();
    }
  });

  it('unknown for an empty or unrelated set', () => {
    expect(detectArchitecture([])).toEqual({ kind: 'unknown' });
    expect(detectArchitecture([{ name: 'foo.weight', shape: [1] }]).kind).toBe('unknown');
  });
});
