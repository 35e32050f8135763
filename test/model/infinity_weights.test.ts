import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { bf16ArrayToF32, f32ToF16Array, f16ArrayToF32 } from '../../engine/dtype.js';
import { expectedShapes, inferInfinityConfig } from '../../model/infinity/config.js';
import { loadInfinityWeights, shapeTable } from '../../model/infinity/weights.js';
import { WeightsError } from '../../model/weights/errors.js';
import { loadTensorToGpu, readTensorF32, safetensorsSource, type TensorSource } from '../../model/weights/gpu_load.js';
import { openSafetensors } from '../../model/weights/safetensors.js';
import { fixture, releaseTestGpu, testGpu } from '../helpers.js';

afterAll(releaseTestGpu);

type Source = TensorSource & { names(): string[] };

async function tinySource() {
  const file = await openSafetensors(join(fixture('infinity-tiny'), 'model.safetensors'));
  return { file, source: safetensorsSource(file) };
}

/** The source with one tensor removed or reshaped (its bytes are never read: loading validates first). */
function tampered(source: Source, edit: { drop?: string; reshape?: [string, number[]] }): Source {
  return {
    has: (n) => n !== edit.drop && source.has(n),
    info: (n) => (edit.reshape && n === edit.reshape[0] ? { ...source.info(n), shape: edit.reshape[1] } : source.info(n)),
    tensorChunks: (n, o) => source.tensorChunks(n, o),
    names: () => source.names().filter((n) => n !== edit.drop),
  };
}

describe('Infinity architecture from names and shapes', () => {
  it('reads depth, chunks, width, heads, FFN, text width, pooling and bits from infinity-tiny', async () => {
    const { file, source } = await tinySource();
    const c = inferInfinityConfig(shapeTable(source));
    expect(c).toMatchObject({
      width: 256, depth: 4, heads: 2, headDim: 128, ffnHidden: 1024, chunks: 2, layersPerChunk: 2,
      textWidth: 256, textMaxLen: 512, poolHeads: 2, poolHeadDim: 128, bitsPerToken: 32, vaeChannels: 32, patch: 1, levels: 15,
    });
    expect(c.layerPrefix(3)).toBe('block_chunks.1.module.1.');
    await file.close();
  });

  it('reads the 8B layout (5 layers per chunk, 56 bits = 14 × 2²)', async () => {
    const file = await openSafetensors(join(fixture('infinity8b-tiny'), 'model.safetensors'));
    const c = inferInfinityConfig(shapeTable(safetensorsSource(file)), { vaeChannels: 14 });
    expect([c.depth, c.chunks, c.layersPerChunk, c.bitsPerToken, c.vaeChannels, c.patch]).toEqual([10, 2, 5, 56, 14, 2]);
    expect(c.layerPrefix(7)).toBe('block_chunks.1.module.2.');
    // Default without the VAE: 56 bits is the 8B recipe.
    expect(inferInfinityConfig(shapeTable(safetensorsSource(file))).patch).toBe(2);
    expect(() => inferInfinityConfig(shapeTable(safetensorsSource(file)), { vaeChannels: 13 })).toThrow(/56 bits per token/);
    await file.close();
  });

  it('accepts single-chunk checkpoints named blocks.{i}', async () => {
    const { file, source } = await tinySource();
    const renamed = new Map<string, number[]>();
    for (const [k, s] of shapeTable(source)) {
      const m = /^block_chunks\.(\d+)\.module\.(\d+)\.(.*)$/.exec(k);
      renamed.set(m ? `blocks.${Number(m[1]) * 2 + Number(m[2])}.${m[3]}` : k, s);
    }
    const c = inferInfinityConfig(renamed);
    expect([c.depth, c.chunks, c.layersPerChunk, c.layerPrefix(3)]).toEqual([4, 1, 4, 'blocks.3.']);
    expect([...expectedShapes(c).keys()].every((k) => renamed.has(k))).toBe(true);
    await file.close();
  });
});

describe('loading Infinity weights onto the GPU', () => {
  it('names the key and both shapes for a mis-shaped tensor', async () => {
    const gpu = await testGpu();
    const { file, source } = await tinySource();
    const bad = tampered(source, { reshape: ['block_chunks.1.module.0.ffn.fc2.weight', [256, 1023]] });
    const err = await loadInfinityWeights(gpu, bad).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(WeightsError);
    expect(String((err as Error).message)).toMatch(/block_chunks\.1\.module\.0\.ffn\.fc2\.weight.*expected \[256, 1024\].*\[256, 1023\]/);
    await file.close();
  });

  it('names the key and the expected shape for a missing tensor', async () => {
    const gpu = await testGpu();
    const { file, source } = await tinySource();
    const err = await loadInfinityWeights(gpu, tampered(source, { drop: 'block_chunks.0.module.1.ca.v_bias' })).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(WeightsError);
    expect(String((err as Error).message)).toMatch(/block_chunks\.0\.module\.1\.ca\.v_bias.*expected shape \[256\], found none/);
    // A missing head is a missing tensor too (the architecture tensors themselves are named when absent).
    const err2 = await loadInfinityWeights(gpu, tampered(source, { drop: 'word_embed.weight' })).catch((e: unknown) => e);
    expect(String((err2 as Error).message)).toMatch(/word_embed\.weight/);
    await file.close();
  });

  it('treats zero_k_bias buffers as optional', async () => {
    const gpu = await testGpu();
    const { file, source } = await tinySource();
    const names = source.names().filter((n) => !n.endsWith('zero_k_bias'));
    const without: Source = { ...source, has: (n) => names.includes(n), names: () => names };
    const { config, weights } = await loadInfinityWeights(gpu, without);
    expect(weights.layers.every((l) => l.kBias === null && l.caKBias === null)).toBe(true);
    expect(weights.layers).toHaveLength(config.depth);
    gpu.flush();
    for (const t of weights.owned) t.dispose();
    await file.close();
  });

  it('streams a tensor in small chunks, keeping bf16 or converting to f32 / f16', async () => {
    const gpu = await testGpu();
    const { file, source } = await tinySource();
    const name = 'text_norm.weight';
    const host = await readTensorF32(source, name, [256]);
    expect(host).toEqual(bf16ArrayToF32((await file.readTensorToArray(name)) as Uint16Array));
    const kept = await loadTensorToGpu(gpu, source, name, { chunkBytes: 8 });
    expect(kept.dtype).toBe('bf16');
    expect(await kept.read()).toEqual(host);
    const f32 = await loadTensorToGpu(gpu, source, name, { dtype: 'f32', chunkBytes: 8, expectShape: [256] });
    expect(await f32.read()).toEqual(host);
    const f16 = await loadTensorToGpu(gpu, source, name, { dtype: 'f16', chunkBytes: 24 });
    expect(await f16.read()).toEqual(f16ArrayToF32(f32ToF16Array(host)));
    await expect(loadTensorToGpu(gpu, source, name, { expectShape: [255] })).rejects.toThrow(/text_norm\.weight.*\[255\].*\[256\]/);
    for (const t of [kept, f32, f16]) t.dispose();
    await file.close();
  });
});
