import { afterAll, describe, expect, it } from 'vitest';
import {
  bitsToCodes,
  bitsToCodesRef,
  codeMagnitude,
  gridToTokens,
  gridToTokensRef,
  pixelShuffleRef,
  pixelUnshuffleRef,
} from '../../model/infinity/patchify.js';
import { expectClose, randomArray, releaseTestGpu, rng, runSeed, testGpu } from '../helpers.js';

afterAll(releaseTestGpu);

// Pure data movement (and a ±1/√d select): results must be exact.
describe(`Infinity bits ↔ VAE grid, pixel shuffle (seed ${runSeed})`, () => {
  it('pixel shuffle references invert each other and follow PyTorch’s channel order', () => {
    // (1, 4, 1, 1) → (1, 1, 2, 2): channel c·4 + i·2 + j goes to (i, j).
    expect(Array.from(pixelShuffleRef([10, 11, 12, 13], 1, 4, 1, 1, 2))).toEqual([10, 11, 12, 13]);
    // (1, 8, 1, 2) → (1, 2, 2, 4): in[c=0..3][x] → out[0][i][2x+j], in[4..7] → channel 1.
    const x = Array.from({ length: 16 }, (_, i) => i);
    const out = pixelShuffleRef(x, 1, 8, 1, 2, 2);
    expect(Array.from(out.slice(0, 8))).toEqual([0, 2, 1, 3, 4, 6, 5, 7]);
    const rand = rng(runSeed);
    const y = randomArray(2 * 12 * 3 * 5, rand);
    expect(Array.from(pixelUnshuffleRef(pixelShuffleRef(y, 2, 12, 3, 5, 2), 2, 3, 6, 10, 2))).toEqual(Array.from(y));
  });

  it.each([
    // [batch, h, w, channels, patch]
    [1, 1, 1, 14, 2],
    [2, 3, 5, 14, 2],
    [1, 7, 4, 3, 2],
    [2, 5, 3, 32, 1],
    [1, 1, 1, 32, 1],
    [1, 6, 9, 2, 3],
  ])('B=%i grid %i×%i, %i channels, patch %i', async (batch, h, w, channels, patch) => {
    const gpu = await testGpu();
    const rand = rng(runSeed + h * 31 + w);
    const g = { h, w, channels, patch };
    const perToken = channels * patch * patch;
    const bits = Int32Array.from({ length: batch * h * w * perToken }, () => (rand() < 0.5 ? 0 : 1));
    const codes = bitsToCodes(gpu, gpu.upload(bits, [batch, h * w, perToken], 'i32'), g);
    expect(codes.shape).toEqual([batch, channels, patch * h, patch * w]);
    const want = bitsToCodesRef(bits, batch, g);
    // The kernel stores upstream's f32 value 1/fp32(√d); the reference is exact 1/√d.
    expectClose(await codes.read(), want, { rtol: 1e-7, atol: 0, what: 'codes' });
    expect(Math.abs((await codes.read())[0])).toBe(codeMagnitude(channels));

    const grid = randomArray(batch * channels * patch * h * patch * w, rand);
    const tokens = gridToTokens(gpu, gpu.upload(grid, [batch, channels, patch * h, patch * w], 'f32'), g);
    expect(tokens.shape).toEqual([batch, h * w, perToken]);
    expectClose(await tokens.read(), gridToTokensRef(grid, batch, g), { rtol: 0, atol: 0, what: 'tokens' });
  });

  it('rejects mismatched shapes naming them', async () => {
    const gpu = await testGpu();
    const bits = gpu.upload(new Int32Array(2 * 56), [1, 2, 56], 'i32');
    expect(() => bitsToCodes(gpu, bits, { h: 1, w: 1, channels: 14, patch: 2 })).toThrow(/\[1, 2, 56\].*\[B, 1, 56\]/);
  });
});
