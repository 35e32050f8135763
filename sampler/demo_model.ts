// A tiny Infinity with random weights, built in memory from a seeded Philox stream, so `stagevar demo`
// runs the whole pipeline (text → next-scale loop → BSQ-VAE decoder → PNG) with no downloads.
//
// The transformer is the real architecture (the weights go through the same loader, by name, as a
// checkpoint's); only the sizes are small. The text encoder is a toy (UTF-8 bytes → rows of a random
// table), so different prompts give different images. The decoder is the real BSQ-VAE decoder recipe
// with an initialisation that keeps it close to a smooth colour map of the latent (identity-like
// residual blocks, blurring up-sampling convs), so the picture shows the coarse-to-fine structure of
// the sampled bits instead of conv noise.

import type { Gpu } from '../engine/device.js';
import type { Tensor } from '../engine/tensor.js';
import { randomNormalCpu } from '../kernels/rng.js';
import { expectedShapes, type InfinityConfig } from '../model/infinity/config.js';
import { InfinityModel } from '../model/infinity/model.js';
import { BsqDecoder } from '../model/vae/bsq_decoder.js';
import type { TensorSource } from '../model/weights/gpu_load.js';
import type { TensorChunk, TensorInfo } from '../model/weights/safetensors.js';
import type { PromptEncoder, TextFeatures } from './text.js';

/** The demo's sizes: Infinity's architecture at width 128, 4 layers in 2 block chunks. */
export const DEMO = {
  seed: 20250101,
  width: 128,
  depth: 4,
  heads: 2,
  chunks: 2,
  ffnHidden: 512,
  textWidth: 64,
  textMaxLen: 512,
  bits: 32,
  levels: 13,
  /** Decoder: 32 channels at every level, 4 ×2 up-samplings (stride 16). */
  vaeChannels: 32,
  vaeLevels: 5,
  /** Toy text: up to this many UTF-8 bytes per prompt, then EOS. */
  maxPromptBytes: 126,
} as const;

function demoConfig(): InfinityConfig {
  const perChunk = DEMO.depth / DEMO.chunks;
  return {
    width: DEMO.width,
    depth: DEMO.depth,
    heads: DEMO.heads,
    headDim: DEMO.width / DEMO.heads,
    ffnHidden: DEMO.ffnHidden,
    chunks: DEMO.chunks,
    layersPerChunk: perChunk,
    textWidth: DEMO.textWidth,
    textMaxLen: DEMO.textMaxLen,
    poolHeads: 1,
    poolHeadDim: DEMO.width,
    bitsPerToken: DEMO.bits,
    vaeChannels: DEMO.bits,
    patch: 1,
    levels: DEMO.levels,
    eps: 1e-6,
    layerPrefix: (l) => `block_chunks.${Math.floor(l / perChunk)}.module.${l % perChunk}.`,
  };
}

/** Host tensors served by name, the way a checkpoint serves them to the model loader. */
export class MemoryTensors implements TensorSource {
  private readonly tensors = new Map<string, { shape: number[]; data: Float32Array }>();

  set(name: string, shape: readonly number[], data: Float32Array): void {
    if (data.length !== shape.reduce((a, b) => a * b, 1)) throw new Error(`${name}: ${data.length} values for shape [${shape.join(', ')}]`);
    this.tensors.set(name, { shape: [...shape], data });
  }

  get(name: string): { shape: number[]; data: Float32Array } {
    const t = this.tensors.get(name);
    if (!t) throw new Error(`no tensor "${name}"`);
    return t;
  }

  names(): string[] {
    return [...this.tensors.keys()];
  }

  has(name: string): boolean {
    return this.tensors.has(name);
  }

  info(name: string): TensorInfo {
    const t = this.get(name);
    return { name, dtype: 'F32', shape: t.shape, byteLength: t.data.byteLength };
  }

  async *tensorChunks(name: string): AsyncGenerator<TensorChunk> {
    const t = this.get(name);
    yield { bytes: new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength), offset: 0 };
  }
}

/** Deterministic draws: tensor k of the demo uses Philox stream k of the demo key. */
class Draws {
  private stream = 0;
  constructor(private readonly key: number) {}
  normal(n: number, std: number, mean = 0): Float32Array {
    return randomNormalCpu(n, { key: this.key, stream: this.stream++, mean, std });
  }
}

/** How each Infinity tensor is initialised: N(mean, std) by the role its name says. */
function initOf(name: string, shape: readonly number[]): { mean: number; std: number } {
  const fanIn = shape.length === 2 ? shape[1] : 1;
  const leaf = name.split('.').slice(-2).join('.');
  if (name === 'head.weight') return { mean: 0, std: 2 / Math.sqrt(fanIn) }; // logits of a few units: confident bits
  if (name === 'word_embed.weight') return { mean: 0, std: 4 / Math.sqrt(fanIn) };
  if (leaf.endsWith('scale_mul_1H11')) return { mean: Math.log(8), std: 0.1 };
  if (leaf.endsWith('ada_gss')) return { mean: 0, std: 0.2 };
  if (/(norm\.weight|ca_norm\.weight)$/.test(name)) return { mean: 1, std: 0.05 };
  if (name === 'cfg_uncond' || name === 'pos_start' || name === 'lvl_embed.weight') return { mean: 0, std: 0.5 };
  if (name === 'text_proj_for_sos.ca.mat_q') return { mean: 0, std: 1 };
  if (shape.length === 2) return { mean: 0, std: 1 / Math.sqrt(fanIn) };
  return { mean: 0, std: 0.02 }; // biases and the remaining vectors
}

/** Every tensor of the demo transformer, by upstream name. */
export function demoInfinityTensors(seed: number = DEMO.seed): MemoryTensors {
  const config = demoConfig();
  const draws = new Draws(seed);
  const out = new MemoryTensors();
  for (const [name, shape] of expectedShapes(config)) {
    const n = shape.reduce((a, b) => a * b, 1);
    const { mean, std } = initOf(name, shape);
    out.set(name, shape, draws.normal(n, std, mean));
  }
  return out;
}

/** The demo transformer on the GPU, loaded through the real loader. */
export async function loadDemoInfinity(gpu: Gpu, seed: number = DEMO.seed): Promise<InfinityModel> {
  return InfinityModel.load(gpu, demoInfinityTensors(seed));
}

/** Decoder weights: identity-like convs plus a little noise, blurring up-sampling, a random colour map. */
export function demoDecoderTensors(seed: number = DEMO.seed): MemoryTensors {
  const C = DEMO.vaeChannels;
  const d = DEMO.bits;
  const draws = new Draws(seed + 1);
  const out = new MemoryTensors();
  /** 3×3 conv weights [cout, cin, 3, 3]: `center` on the (o, i) centre tap, plus noise of `std` everywhere. */
  const conv = (name: string, cout: number, cin: number, std: number, center: (o: number, i: number) => number) => {
    const w = draws.normal(cout * cin * 9, std);
    for (let o = 0; o < cout; o++) for (let i = 0; i < cin; i++) w[(o * cin + i) * 9 + 4] += center(o, i);
    out.set(`${name}.conv.weight`, [cout, cin, 3, 3], w);
    out.set(`${name}.conv.bias`, [cout], new Float32Array(cout));
  };
  const norm = (name: string, c: number) => {
    out.set(`${name}.norm.weight`, [c], new Float32Array(c).fill(1));
    out.set(`${name}.norm.bias`, [c], new Float32Array(c));
  };
  const resBlock = (prefix: string) => {
    norm(`${prefix}.norm1`, C);
    conv(`${prefix}.conv1`, C, C, 0.02, () => 0);
    norm(`${prefix}.norm2`, C);
    conv(`${prefix}.conv2`, C, C, 0.02, () => 0);
  };
  // conv_in: a random mixing of the latent channels on the centre tap.
  const mix = draws.normal(C * d, 1 / Math.sqrt(d));
  conv('decoder.conv_in', C, d, 0.01, (o, i) => 4 * mix[o * d + i]);
  resBlock('decoder.mid.block_1');
  resBlock('decoder.mid.block_2');
  // Full-resolution convolutions dominate the decode on a CPU adapter, so only level 0 (which must hold
  // something to exist) has a ResBlock; the other levels only up-sample.
  for (let lvl = 0; lvl < DEMO.vaeLevels; lvl++) {
    if (lvl === 0) resBlock(`decoder.up.${lvl}.block.0`);
    if (lvl > 0) {
      // Per-channel [1 2 1]⊗[1 2 1]/16 blur: nearest ×2 then this is close to bilinear up-sampling.
      const w = new Float32Array(C * C * 9);
      const k = [1, 2, 1, 2, 4, 2, 1, 2, 1].map((v) => v / 16);
      for (let c = 0; c < C; c++) for (let t = 0; t < 9; t++) w[(c * C + c) * 9 + t] = k[t];
      out.set(`decoder.up.${lvl}.upsample.conv.weight`, [C, C, 3, 3], w);
      out.set(`decoder.up.${lvl}.upsample.conv.bias`, [C], new Float32Array(C));
    }
  }
  norm('decoder.norm_out', C);
  const colours = draws.normal(3 * C, 0.9 / Math.sqrt(C));
  conv('decoder.conv_out', 3, C, 0.002, (o, i) => colours[o * C + i]);
  return out;
}

/** The demo decoder and the GPU tensors it owns (dispose them with `weights`). */
export function demoDecoder(gpu: Gpu, seed: number = DEMO.seed): { decoder: BsqDecoder; weights: Tensor[] } {
  const host = demoDecoderTensors(seed);
  const weights = new Map<string, Tensor>();
  for (const name of host.names()) {
    const t = host.get(name);
    weights.set(name, gpu.upload(t.data, t.shape, 'f32', name, true));
  }
  return { decoder: BsqDecoder.fromWeights(gpu, weights, 'demo VAE'), weights: [...weights.values()] };
}

/** Toy text encoder: the prompt's UTF-8 bytes (≤ 126) and an EOS, each a row of a random table. */
export class DemoPromptEncoder implements PromptEncoder {
  readonly name = 'demo (bytes → random table)';
  readonly width = DEMO.textWidth;
  private readonly table: Float32Array;

  constructor(seed: number = DEMO.seed) {
    this.table = new Draws(seed + 2).normal(257 * DEMO.textWidth, 1);
  }

  async encode(prompts: readonly string[]): Promise<TextFeatures> {
    const rows = prompts.map((p) => [...new TextEncoder().encode(p).subarray(0, DEMO.maxPromptBytes), 256]);
    const lens = rows.map((r) => r.length);
    const features = new Float32Array(lens.reduce((a, b) => a + b, 0) * this.width);
    let at = 0;
    for (const r of rows) {
      for (const id of r) {
        features.set(this.table.subarray(id * this.width, (id + 1) * this.width), at);
        at += this.width;
      }
    }
    return { features, lens, width: this.width };
  }

  dispose(): void {}
}
