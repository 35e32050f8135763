import { afterAll, describe, expect, it } from 'vitest';
import { bf16BitsToF32, f16BitsToF32, f32ToBf16Bits, f32ToF16Bits } from '../../engine/dtype.js';
import { LimitError, ShapeError } from '../../engine/errors.js';
import type { Gpu } from '../../engine/device.js';
import { conv2d, conv2dRef, type ConvTileName } from '../../kernels/conv.js';
import { poisoned, randomArray, releaseTestGpu, rng, runSeed, testGpu } from '../helpers.js';

afterAll(releaseTestGpu);

/** Σ|w|·|x| per output (the magnitude the rounding errors scale with), with bias |b|. */
function magnitudes(x: Float32Array, xs: number[], w: Float32Array, ws: number[], b: Float32Array | null, pad: number, stride: number) {
  const abs = (a: Float32Array) => a.map(Math.abs);
  return conv2dRef(abs(x), xs, abs(w), ws, b && abs(b), pad, stride);
}

/**
 * f32 dot products of K = Cin·k² terms: the rigorous bound is γ_K·Σ|w x| ≈ K·u·Σ|w x|, the observed error
 * grows like √K·u·Σ|w x| (≤ 2e-6·Σ|w x| for K ≤ 1000). We require |err| ≤ 1e-5·Σ|w x| + 1e-6: ≥ 5× margin
 * over the observed growth, while a dropped or doubled tap (≈ Σ|w x| / K ≥ 1e-3·Σ|w x| here) fails.
 * f16/bf16 weights are widened exactly, so the reference takes the rounded weights and the tolerance stays.
 */
function expectConvClose(got: Float32Array, want: Float64Array, mag: Float64Array, what: string) {
  expect(got.length).toBe(want.length);
  let worst = -1;
  let worstExcess = 0;
  for (let i = 0; i < want.length; i++) {
    const err = Math.abs(got[i] - want[i]);
    const excess = Number.isNaN(err) ? Infinity : err - (1e-5 * mag[i] + 1e-6);
    if (excess > worstExcess) [worst, worstExcess] = [i, excess];
  }
  if (worst >= 0) expect.fail(`${what}: element ${worst} is ${got[worst]}, expected ${want[worst]} (Σ|wx| ${mag[worst]}), seed ${runSeed}`);
}

interface Case {
  x: number[]; // [N, Cin, H, W]
  cout: number;
  k: number;
  pad: number;
  stride: number;
  dtype: 'f32' | 'f16' | 'bf16';
  bias: boolean;
}

async function runCase(gpu: Gpu, c: Case, seed: number, extra: { tile?: ConvTileName; maxBindingBytes?: number; method?: 'direct' | 'gemm' } = {}) {
  const rand = rng(seed);
  const [n, cin, h, w] = c.x;
  const ws = [c.cout, cin, c.k, c.k];
  const x = randomArray(n * cin * h * w, rand);
  let wf = randomArray(ws.reduce((a, b) => a * b, 1), rand);
  let wt;
  if (c.dtype === 'f32') wt = gpu.upload(wf, ws, 'f32');
  else {
    const [enc, dec] = c.dtype === 'f16' ? [f32ToF16Bits, f16BitsToF32] : [f32ToBf16Bits, bf16BitsToF32];
    const bits = Uint16Array.from(wf, enc);
    wf = Float32Array.from(bits, dec); // the reference sees the weights the GPU sees
    wt = gpu.upload(bits, ws, c.dtype);
  }
  const b = c.bias ? randomArray(c.cout, rand) : null;
  const ho = Math.floor((h + 2 * c.pad - c.k) / c.stride) + 1;
  const wo = Math.floor((w + 2 * c.pad - c.k) / c.stride) + 1;
  const out = poisoned(gpu, [n, c.cout, ho, wo]);
  const y = conv2d(gpu, gpu.upload(x, c.x, 'f32'), wt, b && gpu.upload(b, [c.cout], 'f32'), {
    padding: c.pad,
    stride: c.stride,
    out,
    ...extra,
  });
  expect(y).toBe(out);
  const want = conv2dRef(x, c.x, wf, ws, b, c.pad, c.stride);
  expectConvClose(await out.readF32(), want, magnitudes(x, c.x, wf, ws, b, c.pad, c.stride), JSON.stringify({ ...c, ...extra }));
}

const CASES: Case[] = [
  { x: [1, 3, 1, 1], cout: 5, k: 3, pad: 1, stride: 1, dtype: 'f32', bias: true }, // 1×1 map: centre tap only
  { x: [2, 5, 7, 9], cout: 7, k: 3, pad: 1, stride: 1, dtype: 'f32', bias: true }, // odd everything, batched
  { x: [1, 32, 16, 16], cout: 64, k: 3, pad: 1, stride: 1, dtype: 'f16', bias: true }, // whole tiles
  { x: [1, 20, 13, 11], cout: 70, k: 3, pad: 1, stride: 1, dtype: 'bf16', bias: true }, // ragged tiles
  { x: [2, 17, 9, 10], cout: 3, k: 3, pad: 1, stride: 1, dtype: 'f32', bias: true }, // conv_out-like
  { x: [1, 48, 10, 10], cout: 24, k: 1, pad: 0, stride: 1, dtype: 'f16', bias: false }, // nin_shortcut
  { x: [3, 40, 6, 5], cout: 33, k: 1, pad: 0, stride: 1, dtype: 'f32', bias: true },
  { x: [1, 8, 11, 13], cout: 12, k: 3, pad: 1, stride: 2, dtype: 'f32', bias: true }, // stride 2, padded
  { x: [1, 6, 9, 8], cout: 10, k: 3, pad: 0, stride: 2, dtype: 'bf16', bias: false }, // stride 2, valid
  { x: [1, 6, 8, 8], cout: 9, k: 3, pad: 0, stride: 1, dtype: 'f32', bias: false }, // valid conv
  { x: [1, 4, 10, 12], cout: 8, k: 2, pad: 0, stride: 2, dtype: 'f32', bias: true }, // any square k works
  { x: [1, 130, 12, 12], cout: 129, k: 3, pad: 1, stride: 1, dtype: 'f32', bias: true }, // > 128 channels
];

describe(`conv2d (seed ${runSeed})`, () => {
  // Both methods on every case they take: the direct kernel (GPUs) and im2col + GEMM (CPU adapters; f32/f16
  // weights only).
  for (const method of ['direct', 'gemm'] as const) {
    CASES.forEach((c, i) => {
      if (method === 'gemm' && c.dtype === 'bf16') return;
      it(`${method}: ${c.x.join('×')} → ${c.cout} ch, k${c.k} pad ${c.pad} stride ${c.stride}, ${c.dtype} w${c.bias ? ' + bias' : ''}`, async () => {
        await runCase(await testGpu(), c, runSeed + i, { method });
      });
    });
  }

  it('gemm: output pixels in chunks (binding cap lowered), images apart, an output view', async () => {
    // Cin·k² = 45 floats of colᵀ per pixel: (1500 − alignment) / 180 B → 8 pixels per chunk, 8 chunks per image.
    const gpu = await testGpu();
    await runCase(gpu, { x: [2, 5, 9, 7], cout: 5, k: 3, pad: 1, stride: 1, dtype: 'f16', bias: true }, runSeed + 300, { method: 'gemm', maxBindingBytes: 1500 });
    const before = gpu.dispatchCount;
    const x = gpu.upload(randomArray(2 * 5 * 63, rng(runSeed)), [2, 5, 9, 7], 'f32');
    conv2d(gpu, x, gpu.upload(randomArray(5 * 5 * 9, rng(runSeed + 1)), [5, 5, 3, 3], 'f32'), null, { padding: 1, method: 'gemm', maxBindingBytes: 1500 });
    expect(gpu.dispatchCount - before).toBe(2 * 8 * 3); // per image and chunk: im2col, GEMM, place
    if (gpu.tuning === 'cpu') {
      const n0 = gpu.dispatchCount;
      conv2d(gpu, x, gpu.upload(randomArray(5 * 5 * 9, rng(runSeed + 2)), [5, 5, 3, 3], 'f32'), null, { padding: 1 });
      expect(gpu.dispatchCount - n0).toBe(2 * 3); // the CPU adapter's default: one chunk per image
    }
    expect(() => conv2d(gpu, x, gpu.upload(new Uint16Array(5 * 5 * 9), [5, 5, 3, 3], 'bf16'), null, { method: 'gemm' })).toThrow(/method 'gemm' needs f32\/f16 weights/);
    expect(() => conv2d(gpu, x, gpu.upload(randomArray(5 * 5 * 9, rng(runSeed)), [5, 5, 3, 3], 'f32'), null, { method: 'fft' as never })).toThrow(/method "fft" is not one of: direct, gemm/);
  });

  const tiles: ConvTileName[] = ['c128p128', 'c32p256', 'c4p256'];
  it.each(tiles)('tile %s on ragged shapes', async (tile) => {
    const gpu = await testGpu();
    await runCase(gpu, { x: [2, 19, 9, 7], cout: 37, k: 3, pad: 1, stride: 1, dtype: 'f16', bias: true }, runSeed + 100, { tile });
    expect(gpu.compiledKernels).toContain(`conv2d_${tile}`);
  });

  // A small artificial binding cap forces the split paths (odd plane sizes: unaligned binding starts).
  describe('split into bindings under a small cap', () => {
    it('groups of whole images', async () => {
      // x image 4·5·6·4 = 480 B, y image 6·30·4 = 720 B: two images per dispatch under 1500 B
      await runCase(await testGpu(), { x: [3, 4, 5, 6], cout: 6, k: 3, pad: 1, stride: 1, dtype: 'f32', bias: true }, runSeed + 200, {
        maxBindingBytes: 1500,
        method: 'direct',
      });
    });
    it('input-channel blocks (accumulated) × output-channel blocks', async () => {
      // 99-pixel planes (396 B): 7 channels per binding → 3 input and 6 output blocks per image
      await runCase(await testGpu(), { x: [2, 20, 9, 11], cout: 37, k: 3, pad: 1, stride: 1, dtype: 'f32', bias: true }, runSeed + 201, {
        maxBindingBytes: 3000,
      });
    });
    it('channel blocks with f16 weights, no bias, stride 2, wide output blocks', async () => {
      // 144-pixel input planes: 2 input blocks of 25; 36-pixel output planes: output blocks of 96 (128-wide
      // tile) and 34 (32-wide tile), both accumulating
      await runCase(await testGpu(), { x: [1, 50, 12, 12], cout: 130, k: 3, pad: 1, stride: 2, dtype: 'f16', bias: false }, runSeed + 202, {
        maxBindingBytes: 14400,
      });
    });
    it('throws LimitError when one channel plane cannot fit', async () => {
      const gpu = await testGpu();
      const x = gpu.upload(randomArray(2 * 100, rng(runSeed)), [1, 2, 10, 10], 'f32');
      const w = gpu.upload(randomArray(2 * 2 * 9, rng(runSeed + 1)), [2, 2, 3, 3], 'f32');
      expect(() => conv2d(gpu, x, w, null, { padding: 1, maxBindingBytes: 200 })).toThrow(LimitError);
    });
  });

  it('validates its inputs', async () => {
    const gpu = await testGpu();
    const rand = rng(runSeed);
    const x = gpu.upload(randomArray(2 * 3 * 5 * 5, rand), [2, 3, 5, 5], 'f32');
    const w = gpu.upload(randomArray(4 * 3 * 9, rand), [4, 3, 3, 3], 'f32');
    const b = gpu.upload(randomArray(4, rand), [4], 'f32');
    expect(() => conv2d(gpu, x.reshape([6, 5, 5]), w, b)).toThrow(ShapeError);
    expect(() => conv2d(gpu, x, w.reshape([4, 9, 3, 1]), b)).toThrow(/conv2d.*\[4, 9, 3, 1\]/);
    expect(() => conv2d(gpu, x, w.reshape([2, 6, 3, 3]), b)).toThrow(/Cin/);
    expect(() => conv2d(gpu, x, w, b.reshape([2, 2]))).toThrow(/bias/);
    expect(() => conv2d(gpu, x, w, b, { stride: 0 })).toThrow(/stride/);
    expect(() => conv2d(gpu, x, w, b, { padding: -1 })).toThrow(/padding/);
    expect(() => conv2d(gpu, x.reshape([2, 3, 1, 25]), w, b)).toThrow(/no output pixels/);
    expect(() => conv2d(gpu, x, w, b, { padding: 1, out: gpu.empty([2, 4, 3, 3], 'f32') })).toThrow(/out/);
    const wi = gpu.upload(new Int32Array(4 * 3 * 9).fill(1), [4, 3, 3, 3], 'i32');
    expect(() => conv2d(gpu, x, wi, b)).toThrow(/f16/);
  });
});
