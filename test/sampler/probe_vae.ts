// A "probe" BSQ-VAE for end-to-end tests: the real decoder structure (conv_in, two mid ResBlocks, one level,
// GroupNorm + conv_out) with 32 code channels but no up-sampling (stride 1), so an image is one pixel per
// latent cell and decodes in milliseconds. The infinity-tiny decoder takes tens of seconds per 256² image on
// a busy lavapipe; tests that check plumbing (ratios, batches, traces, determinism) use this one and one
// test runs the fixture's real decoder.

import { writeSafetensors, type TensorToWrite } from '../../model/weights/safetensors_writer.js';
import { rng } from '../helpers.js';

export async function writeProbeVae(path: string, codeChannels = 32): Promise<void> {
  const rand = rng(4242);
  const C = 32;
  const tensors: TensorToWrite[] = [];
  const add = (name: string, shape: number[], fill: (i: number) => number) => {
    const n = shape.reduce((a, b) => a * b, 1);
    tensors.push({ name, dtype: 'F32', shape, data: Float32Array.from({ length: n }, (_, i) => fill(i)) });
  };
  const conv = (name: string, cout: number, cin: number) => {
    add(`${name}.conv.weight`, [cout, cin, 3, 3], () => (rand() - 0.5) * (2 / Math.sqrt(cin * 9)));
    add(`${name}.conv.bias`, [cout], () => (rand() - 0.5) * 0.1);
  };
  const norm = (name: string, c: number) => {
    add(`${name}.norm.weight`, [c], () => 1);
    add(`${name}.norm.bias`, [c], () => 0);
  };
  const block = (p: string) => {
    norm(`${p}.norm1`, C);
    conv(`${p}.conv1`, C, C);
    norm(`${p}.norm2`, C);
    conv(`${p}.conv2`, C, C);
  };
  conv('decoder.conv_in', C, codeChannels);
  block('decoder.mid.block_1');
  block('decoder.mid.block_2');
  block('decoder.up.0.block.0');
  norm('decoder.norm_out', C);
  conv('decoder.conv_out', 3, C);
  await writeSafetensors(path, tensors);
}
