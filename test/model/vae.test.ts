import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { loadBsqDecoder } from '../../model/vae/load.js';
import { openSafetensors } from '../../model/weights/safetensors.js';
import { expectClose, fixture, randn, relMaxError, releaseTestGpu, rng, runSeed, testGpu } from '../helpers.js';

afterAll(releaseTestGpu);

async function golden(dir: string, key: string): Promise<{ data: Float32Array; shape: number[] }> {
  const f = await openSafetensors(join(dir, 'golden.safetensors'));
  try {
    const e = f.entry(key);
    const bytes = await f.readTensorBytes(key);
    return { data: new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength)), shape: [...e.shape] };
  } finally {
    await f.close();
  }
}

// The official decoder ran in f32 on bf16-exact weights: f32 convolutions over ≤ 9·512 terms land near
// 1e-6 relative; the fixtures' parity bar is 1e-3 (a wrong operation gives ≥ 1e-1).
describe('BSQ-VAE decoder parity (latent → image)', () => {
  for (const name of ['infinity-tiny', 'infinity8b-tiny']) {
    it(`${name}: decodes the golden latent to the golden image`, async () => {
      const gpu = await testGpu();
      const dir = fixture(name);
      const decoder = await loadBsqDecoder(gpu, join(dir, 'vae.safetensors'));
      const latent = await golden(dir, 'latent');
      const image = await golden(dir, 'image');
      expect(decoder.config.codeChannels).toBe(latent.shape[1]);
      const out = decoder.decode(gpu.upload(latent.data, latent.shape, 'f32'));
      expect(out.shape).toEqual(image.shape);
      const err = relMaxError(await out.read(), image.data);
      expect(err).toBeLessThan(1e-3);
    });
  }

  it('splits feature maps into channel chunks when they exceed the binding cap, with the same result', async () => {
    const gpu = await testGpu();
    const path = join(fixture('infinity-tiny'), 'vae.safetensors');
    // A 4×4 latent decodes to 64²; an 80 KiB cap gives 5-channel chunks at 64² (16 KiB per channel) and
    // 16-channel ones at 32², so convolutions accumulate over input chunks, bias/weight slices sit at
    // unaligned offsets, and the up-sampling gathers across chunk plans that do not nest.
    const whole = await loadBsqDecoder(gpu, path);
    const split = await loadBsqDecoder(gpu, path, { maxChunkBytes: 80 * 1024 });
    const latent = gpu.upload(randn(32 * 4 * 4, rng(runSeed), 0.2), [1, 32, 4, 4], 'f32');
    const want = await whole.decode(latent).read();
    const got = await split.decode(latent).read();
    // Chunked accumulation only reorders f32 sums of ≤ 9·128 terms.
    expectClose(got, want, { rtol: 1e-4, atol: 1e-5, what: 'split vs whole decode' });
    whole.dispose();
    split.dispose();
  });

  it('names the missing tensor and the mis-shaped one', async () => {
    const gpu = await testGpu();
    await expect(loadBsqDecoder(gpu, join(fixture('infinity-tiny'), 'model.safetensors'))).rejects.toThrow(/not a VAE decoder/);
  });
});
