// BSQ-VAE decoder time from random weights of the real recipe (spec §7.1): conv_in → 2 mid ResBlocks →
// per level (lowest resolution first) 3 ResBlocks then nearest ×2 + 3×3 conv → GroupNorm, swish, conv_out.
// 2B: z = 32, ch_mult 1,2,4,4,4 (stride 16); 8B: z = 14, ch_mult 1,2,4,4 (stride 8). The base width is an
// option (128 upstream) because the real decoder at 256² is ≈ 0.6 TFLOP, minutes on lavapipe.
// GFLOP/s counts the convolutions (2·Cout·Cin·k²·H·W each); norms, swish and adds are not counted.

import type { Gpu } from '../engine/device.js';
import type { Tensor } from '../engine/tensor.js';
import { BsqDecoder } from '../model/vae/bsq_decoder.js';
import { loadTensorToGpu } from '../model/weights/gpu_load.js';
import { randomF32, timeRuns, type BenchRow } from './types.js';
import { SyntheticTensors, type Family } from './synthetic_infinity.js';

export const DECODER_RECIPE: Readonly<Record<Family, { z: number; mult: number[] }>> = {
  '2b': { z: 32, mult: [1, 2, 4, 4, 4] },
  '8b': { z: 14, mult: [1, 2, 4, 4] },
};
/** ResBlocks per up level in the released decoders (num_res_blocks 2, + 1 in the decoder). */
const BLOCKS_PER_LEVEL = 3;

interface Conv {
  name: string;
  cin: number;
  cout: number;
  k: number;
  /** Resolution relative to the latent grid (1, 2, 4, …). */
  at: number;
}

/** Every conv of the decoder, in order, with the resolution factor it runs at. */
function decoderConvs(z: number, ch: number, recipeMult: readonly number[], blocksPerLevel = BLOCKS_PER_LEVEL): { convs: Conv[]; norms: Array<[string, number]> } {
  // 0 blocks: the minimal decoder of the same stride (the demo's shape): width ch everywhere, one ResBlock.
  const mult = blocksPerLevel === 0 ? recipeMult.map(() => 1) : recipeMult;
  const convs: Conv[] = [];
  const norms: Array<[string, number]> = [];
  let cin = ch * mult[mult.length - 1];
  let at = 1;
  convs.push({ name: 'decoder.conv_in', cin: z, cout: cin, k: 3, at });
  const block = (prefix: string, cout: number) => {
    norms.push([`${prefix}.norm1`, cin]);
    convs.push({ name: `${prefix}.conv1`, cin, cout, k: 3, at });
    norms.push([`${prefix}.norm2`, cout]);
    convs.push({ name: `${prefix}.conv2`, cin: cout, cout, k: 3, at });
    if (cin !== cout) convs.push({ name: `${prefix}.nin_shortcut`, cin, cout, k: 1, at });
    cin = cout;
  };
  block('decoder.mid.block_1', cin);
  block('decoder.mid.block_2', cin);
  for (let lvl = mult.length - 1; lvl >= 0; lvl--) {
    // Level 0 keeps at least one block: it has no up-sampling, and a level with no tensors does not exist
    // for the loader.
    const blocks = lvl === 0 ? Math.max(1, blocksPerLevel) : blocksPerLevel;
    for (let b = 0; b < blocks; b++) block(`decoder.up.${lvl}.block.${b}`, ch * mult[lvl]);
    if (lvl > 0) {
      at *= 2;
      convs.push({ name: `decoder.up.${lvl}.upsample.conv`, cin, cout: cin, k: 3, at });
    }
  }
  norms.push(['decoder.norm_out', cin]);
  convs.push({ name: 'decoder.conv_out', cin, cout: 3, k: 3, at });
  return { convs, norms };
}

/** Convolution FLOPs of one image decoded from a latent grid h×w. */
export function decoderFlops(family: Family, ch: number, h: number, w: number): number {
  const { z, mult } = DECODER_RECIPE[family];
  return decoderConvs(z, ch, mult).convs.reduce((sum, c) => sum + 2 * c.cout * c.cin * c.k * c.k * h * c.at * w * c.at, 0);
}

/** Decoder parameters (conv weights and biases, norm affine). */
export function decoderParameters(family: Family, ch: number): number {
  const { z, mult } = DECODER_RECIPE[family];
  const { convs, norms } = decoderConvs(z, ch, mult);
  return convs.reduce((s, c) => s + c.cout * (c.cin * c.k * c.k + 1), 0) + norms.reduce((s, [, c]) => s + 2 * c, 0);
}

/**
 * The decoder with random weights, loaded through the weight loader as f32 (as model/vae/load.ts does).
 * `blocksPerLevel` below the real 3 gives a cheaper decoder of the same stride (dry runs on a CPU adapter);
 * 0 is the minimal one: width `ch` at every level and a single ResBlock (at full resolution).
 */
export async function randomDecoder(gpu: Gpu, family: Family, ch: number, blocksPerLevel = BLOCKS_PER_LEVEL): Promise<BsqDecoder> {
  if (ch % 32 !== 0) throw new Error(`--vae-ch ${ch} must be a multiple of 32 (GroupNorm has 32 groups)`);
  if (!Number.isInteger(blocksPerLevel) || blocksPerLevel < 0) throw new Error(`--vae-blocks must be a non-negative integer, got ${blocksPerLevel}`);
  const { z, mult } = DECODER_RECIPE[family];
  const { convs, norms } = decoderConvs(z, ch, mult, blocksPerLevel);
  const shapes = new Map<string, number[]>();
  for (const c of convs) {
    shapes.set(`${c.name}.conv.weight`, [c.cout, c.cin, c.k, c.k]);
    shapes.set(`${c.name}.conv.bias`, [c.cout]);
  }
  for (const [name, c] of norms) {
    shapes.set(`${name}.norm.weight`, [c]);
    shapes.set(`${name}.norm.bias`, [c]);
  }
  const source = new SyntheticTensors(shapes);
  const weights = new Map<string, Tensor>();
  try {
    for (const name of source.names()) weights.set(name, await loadTensorToGpu(gpu, source, name, { dtype: 'f32' }));
    return BsqDecoder.fromWeights(gpu, weights, `random ${family} VAE decoder (base ${ch}, ${blocksPerLevel} blocks/level)`);
  } catch (err) {
    for (const t of weights.values()) t.dispose();
    throw err;
  }
}

export interface DecoderBenchOptions {
  family: Family;
  /** Base channels (upstream 128). */
  ch: number;
  /** Output image sizes (square). */
  sizes: number[];
  runs: number;
}

export async function benchDecoder(gpu: Gpu, o: DecoderBenchOptions): Promise<BenchRow[]> {
  const { z, mult } = DECODER_RECIPE[o.family];
  const stride = 2 ** (mult.length - 1);
  for (const s of o.sizes) if (s % stride !== 0) throw new Error(`--vae-sizes: ${s} is not a multiple of the ${o.family} decoder's stride ${stride}`);
  const decoder = await randomDecoder(gpu, o.family, o.ch);
  const rows: BenchRow[] = [];
  try {
    // Warm-up on a 2×2 latent: compiles every kernel (same kernels at any size below the binding limit).
    const tiny = gpu.upload(randomF32(z * 4, 5), [1, z, 2, 2], 'f32', 'latent');
    decoder.decode(tiny).dispose();
    await gpu.sync();
    tiny.dispose();
    for (const size of o.sizes) {
      const g = size / stride;
      const latent = gpu.upload(randomF32(z * g * g, 17 + size), [1, z, g, g], 'f32', 'latent');
      const ms = await timeRuns(gpu, () => decoder.decode(latent).dispose(), 0, o.runs);
      latent.dispose();
      const flops = decoderFlops(o.family, o.ch, g, g);
      rows.push({ kernel: 'vae-decode', shape: `${o.family} ch${o.ch} ${g}²×${z}→${size}²`, dtype: 'f32', ms, gflops: flops / ms / 1e6, gbps: 0 });
    }
  } finally {
    decoder.dispose();
  }
  return rows;
}
