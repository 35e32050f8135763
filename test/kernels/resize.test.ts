import { afterAll, describe, expect, it } from 'vitest';
import { LimitError, ShapeError } from '../../engine/errors.js';
import { resize, resizeRef, type ResizeLayout, type ResizeMode } from '../../kernels/resize.js';
import { expectClose, poisoned, randomArray, releaseTestGpu, rng, runSeed, testGpu } from '../helpers.js';

afterAll(releaseTestGpu);

const U = 2 ** -24; // f32 unit roundoff

/**
 * Tolerances against the float64 reference, for inputs in [-1, 1]:
 * - nearest copies values: exact.
 * - area runs on integer-valued inputs (|v| ≤ 8), so the window sum is exact in f32 and only the final
 *   division rounds: relative 2^-24 (we allow 2^-23), and a dropped or doubled element cannot hide.
 * - bilinear / bicubic: PyTorch (and the kernel) compute the source coordinate in f32 from scale = fl(in/out):
 *   |Δs| ≤ 3·in·u (scale rounding, product, subtraction). Both interpolants are continuous in s (a floor
 *   flip at an integer changes nothing), with Σ|∂w/∂s| ≤ 2 (linear) or ≤ 3 (Keys cubic, A = −0.75) per
 *   axis, so two axes give ≤ 4·Δs resp. 6·Δs per unit of |v|; plus ~1e-6 for the f32 weighted sums.
 */
function tolerance(mode: ResizeMode, inMax: number): { rtol: number; atol: number } {
  const ds = 3 * inMax * U;
  switch (mode) {
    case 'nearest':
      return { rtol: 0, atol: 0 };
    case 'area':
      return { rtol: 2 * U, atol: 0 };
    case 'bilinear':
      return { rtol: 1e-5, atol: 4 * ds + 1e-6 };
    case 'bicubic':
      return { rtol: 1e-5, atol: 6 * ds + 1e-6 };
  }
}

function inputFor(mode: ResizeMode, n: number, rand: () => number): Float32Array {
  if (mode !== 'area') return randomArray(n, rand);
  const x = new Float32Array(n);
  for (let i = 0; i < n; i++) x[i] = Math.floor(rand() * 17) - 8 || 1; // integers in [-8, 8], no zeros
  return x;
}

const MODES: ResizeMode[] = ['bilinear', 'bicubic', 'area', 'nearest'];

// [N, C, inH, inW, outH, outW]
const CASES: number[][] = [
  [1, 1, 1, 1, 1, 1],
  [1, 3, 1, 1, 64, 64], // 1 → 64: constant maps
  [2, 5, 32, 32, 40, 40], // 32 → 40 (StageVAR RTR grid)
  [1, 3, 40, 40, 32, 32], // 40 → 32
  [2, 3, 5, 7, 11, 3], // up in H, down in W
  [1, 2, 64, 64, 1, 1], // 64 → 1 (whole-map window)
  [1, 7, 13, 17, 26, 34], // × 2 (VAE upsampling)
  [1, 1, 3, 9, 7, 4],
  [3, 2, 64, 48, 9, 21], // Infinity-style downsampling to a small scale
];

async function check(mode: ResizeMode, layout: ResizeLayout, c: number[], seed: number, maxBindingBytes?: number) {
  const gpu = await testGpu();
  const [n, ch, h, w, oh, ow] = c;
  const rand = rng(seed);
  const x = inputFor(mode, n * ch * h * w, rand);
  const xShape = layout === 'nchw' ? [n, ch, h, w] : [n, h, w, ch];
  const oShape = layout === 'nchw' ? [n, ch, oh, ow] : [n, oh, ow, ch];
  const out = poisoned(gpu, oShape);
  resize(gpu, gpu.upload(x, xShape, 'f32'), oh, ow, mode, { layout, out, maxBindingBytes });
  const tol = tolerance(mode, Math.max(h, w));
  expectClose(await out.read(), resizeRef(x, xShape, oh, ow, mode, layout), { ...tol, what: `${mode} ${layout} ${c.join('×')}` });
}

describe(`resize (seed ${runSeed})`, () => {
  for (const mode of MODES) {
    for (const layout of ['nchw', 'nhwc'] as const) {
      it.each(CASES)(`${mode} ${layout} [%i, %i, %i, %i] → %i×%i`, async (...c: number[]) => {
        await check(mode, layout, c, runSeed + c.reduce((a, b) => a * 31 + b, 0));
      });
    }
  }

  it('area 32×32 → 40×40 on a 3-D NHWC token grid (RTR), odd channel count', async () => {
    const gpu = await testGpu();
    const rand = rng(runSeed + 7);
    const c = 67;
    const x = inputFor('area', 32 * 32 * c, rand);
    const y = resize(gpu, gpu.upload(x, [32, 32, c], 'f32'), 40, 40, 'area', { layout: 'nhwc' });
    expect(y.shape).toEqual([40, 40, c]);
    expectClose(await y.read(), resizeRef(x, [1, 32, 32, c], 40, 40, 'area', 'nhwc'), tolerance('area', 32));
  });

  it('3-D NCHW input keeps its rank', async () => {
    const gpu = await testGpu();
    const rand = rng(runSeed + 8);
    const x = randomArray(3 * 6 * 5, rand);
    const y = resize(gpu, gpu.upload(x, [3, 6, 5], 'f32'), 4, 9, 'bicubic');
    expect(y.shape).toEqual([3, 4, 9]);
    expectClose(await y.read(), resizeRef(x, [1, 3, 6, 5], 4, 9, 'bicubic'), tolerance('bicubic', 6));
  });

  // A small artificial binding cap forces the split paths; odd plane sizes make binding starts unaligned.
  describe('split into bindings under a small cap', () => {
    for (const mode of MODES) {
      it(`${mode}: groups of whole NCHW planes`, async () => {
        // planes of 19·23 = 437 elements (1748 B): one or two planes per binding under 4000 B
        await check(mode, 'nchw', [2, 3, 19, 23, 30, 17], runSeed + 11, 4000);
      });
      it(`${mode}: NCHW row bands of one plane`, async () => {
        await check(mode, 'nchw', [1, 2, 30, 31, 23, 40], runSeed + 12, 1500);
      });
      it(`${mode}: NHWC row bands of one image`, async () => {
        await check(mode, 'nhwc', [2, 5, 33, 35, 40, 28], runSeed + 13, 8000);
      });
      it(`${mode}: NHWC row bands when downsampling`, async () => {
        await check(mode, 'nhwc', [1, 3, 64, 20, 9, 20], runSeed + 14, 3000);
      });
    }
    it('throws LimitError when one output row cannot fit', async () => {
      const gpu = await testGpu();
      const x = gpu.upload(randomArray(4 * 4 * 100, rng(runSeed)), [1, 4, 4, 100], 'f32');
      expect(() => resize(gpu, x, 8, 8, 'bilinear', { layout: 'nhwc', maxBindingBytes: 256 })).toThrow(LimitError);
    });
  });

  it('validates its inputs', async () => {
    const gpu = await testGpu();
    const x = gpu.upload(randomArray(2 * 3 * 4 * 5, rng(runSeed)), [2, 3, 4, 5], 'f32');
    expect(() => resize(gpu, x, 0, 4, 'bilinear')).toThrow(ShapeError);
    expect(() => resize(gpu, x, 2.5, 4, 'bilinear')).toThrow(/resize_bilinear/);
    expect(() => resize(gpu, x.reshape([6, 20]), 4, 4, 'area')).toThrow(/\[6, 20\]/);
    expect(() => resize(gpu, x, 4, 4, 'lanczos' as ResizeMode)).toThrow(ShapeError);
    expect(() => resize(gpu, x, 4, 4, 'nearest', { out: gpu.empty([2, 3, 4, 5], 'f32') })).toThrow(/out/);
    const h = gpu.upload(new Uint16Array(8).fill(0x3c00), [1, 2, 2, 2], 'f16');
    expect(() => resize(gpu, h, 4, 4, 'nearest')).toThrow(/f32/);
  });
});
