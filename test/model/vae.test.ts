import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { loadBsqDecoder } from '../../model/vae/load.js';
import { openSafetensors } from '../../model/weights/safetensors.js';
import { fixture, relMaxError, releaseTestGpu, testGpu } from '../helpers.js';

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
    const dir = fixture('infinity-tiny');
    // A 1.25 MiB cap: 5-channel chunks at 256², 16-channel ones at 128² — several chunks, multi-chunk convs,
    // and plans at 2H×2W that do not nest in those at H×W (the up-sampling gathers across chunks).
    const decoder = await loadBsqDecoder(gpu, join(dir, 'vae.safetensors'), { maxChunkBytes: 1.25 * 2 ** 20 });
    const latent = await golden(dir, 'latent');
    const image = await golden(dir, 'image');
    const out = decoder.decode(gpu.upload(latent.data, latent.shape, 'f32'));
    expect(relMaxError(await out.read(), image.data)).toBeLessThan(1e-3);
  });

  it('names the missing tensor and the mis-shaped one', async () => {
    const gpu = await testGpu();
    await expect(loadBsqDecoder(gpu, join(fixture('infinity-tiny'), 'model.safetensors'))).rejects.toThrow(/not a VAE decoder/);
  });
});
