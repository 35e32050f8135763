import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { f32ArrayToBf16, f32ArrayToF16, f16ArrayToF32, bf16ArrayToF32 } from '../../engine/dtype.js';
import { Checkpoint } from '../../model/weights/checkpoint.js';
import { loadTensorToGpu } from '../../model/weights/gpu_load.js';
import { writeSafetensors } from '../../model/weights/safetensors_writer.js';
import { randn, releaseTestGpu, rng, runSeed, testGpu } from '../helpers.js';

const dir = mkdtempSync(join(tmpdir(), 'stagevar-gpuload-'));
afterAll(async () => {
  rmSync(dir, { recursive: true, force: true });
  await releaseTestGpu();
});

// Conversions on load run on the GPU (cast kernel); they must equal the host's round-to-nearest-even
// bit for bit, across chunk boundaries that fall on odd element offsets.
describe(`GPU weight loading with on-GPU conversion (seed ${runSeed})`, () => {
  it('keeps or converts F32/F16/BF16 tensors exactly, chunk by chunk', async () => {
    const gpu = await testGpu();
    const rand = rng(runSeed);
    const n = 1001; // odd: halves end mid-word, chunks of 3·2^k bytes start at odd element offsets
    const f32 = randn(n, rand, 3);
    const file = join(dir, 'w.safetensors');
    await writeSafetensors(file, [
      { name: 'a', dtype: 'F32', shape: [7, 143], data: f32 },
      { name: 'h', dtype: 'F16', shape: [n], data: f32ArrayToF16(f32) },
      { name: 'b', dtype: 'BF16', shape: [n], data: f32ArrayToBf16(f32) },
    ]);
    const ckpt = await Checkpoint.open(file);
    try {
      for (const chunkBytes of [undefined, 24]) {
        const keepA = await loadTensorToGpu(gpu, ckpt, 'a', { chunkBytes });
        expect(keepA.shape).toEqual([7, 143]);
        expect(await keepA.read()).toEqual(f32);
        const aToH = await loadTensorToGpu(gpu, ckpt, 'a', { dtype: 'f16', chunkBytes });
        expect(await aToH.readRaw()).toEqual(f32ArrayToF16(f32));
        const aToB = await loadTensorToGpu(gpu, ckpt, 'a', { dtype: 'bf16', chunkBytes });
        expect(await aToB.readRaw()).toEqual(f32ArrayToBf16(f32));
        const hToF = await loadTensorToGpu(gpu, ckpt, 'h', { dtype: 'f32', chunkBytes });
        expect(await hToF.read()).toEqual(f16ArrayToF32(f32ArrayToF16(f32)));
        const bToH = await loadTensorToGpu(gpu, ckpt, 'b', { dtype: 'f16', chunkBytes });
        expect(await bToH.readRaw()).toEqual(f32ArrayToF16(bf16ArrayToF32(f32ArrayToBf16(f32))));
        for (const t of [keepA, aToH, aToB, hToF, bToH]) t.dispose();
      }
    } finally {
      await ckpt.close();
    }
  });

  it('names the key and both shapes for a mis-shaped or missing tensor', async () => {
    const gpu = await testGpu();
    const file = join(dir, 'w.safetensors');
    const ckpt = await Checkpoint.open(file);
    try {
      await expect(loadTensorToGpu(gpu, ckpt, 'a', { expectShape: [143, 7] })).rejects.toThrow(/"a".*expected \[143, 7\], file has \[7, 143\]/);
      await expect(loadTensorToGpu(gpu, ckpt, 'nope', { expectShape: [3] })).rejects.toThrow(/"nope".*missing tensor/);
    } finally {
      await ckpt.close();
    }
  });
});
