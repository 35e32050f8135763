// Weight-loading throughput: streaming a safetensors file into GPU buffers (as stored, and converted
// f32 → f16 on the GPU) beside a plain sequential read of the same file, in one run.

import { open, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Gpu } from '../engine/device.js';
import { Checkpoint } from '../model/weights/checkpoint.js';
import { loadTensorToGpu } from '../model/weights/gpu_load.js';
import { writeSafetensors } from '../model/weights/safetensors_writer.js';
import type { BenchRow } from './types.js';

export async function benchLoad(gpu: Gpu, opts: { megabytes?: number } = {}): Promise<BenchRow[]> {
  const mb = opts.megabytes ?? 256;
  const tensors = 8;
  const per = Math.floor((mb * 2 ** 20) / 4 / tensors);
  const file = join(tmpdir(), `stagevar-bench-load-${process.pid}.safetensors`);
  const data = new Float32Array(per);
  for (let i = 0; i < per; i++) data[i] = Math.sin(i) * 0.02;
  await writeSafetensors(file, Array.from({ length: tensors }, (_, t) => ({ name: `w.${t}`, dtype: 'F32' as const, shape: [per], data })));
  const bytes = tensors * per * 4;
  const rows: BenchRow[] = [];
  try {
    // Plain sequential read (the disk/page-cache reference), 16 MiB at a time.
    let t0 = performance.now();
    const h = await open(file, 'r');
    const buf = Buffer.alloc(16 * 2 ** 20);
    let pos = 0;
    for (;;) {
      const { bytesRead } = await h.read(buf, 0, buf.length, pos);
      if (bytesRead === 0) break;
      pos += bytesRead;
    }
    await h.close();
    let ms = performance.now() - t0;
    rows.push({ kernel: 'load', shape: `read ${mb} MiB`, dtype: 'f32', ms, gflops: 0, gbps: bytes / ms / 1e6 });
    for (const dtype of ['keep', 'f16'] as const) {
      const ckpt = await Checkpoint.open(file);
      t0 = performance.now();
      const loaded = [];
      for (let t = 0; t < tensors; t++) loaded.push(await loadTensorToGpu(gpu, ckpt, `w.${t}`, { dtype }));
      await gpu.sync();
      ms = performance.now() - t0;
      await ckpt.close();
      for (const t of loaded) t.dispose();
      rows.push({ kernel: 'load', shape: `gpu ${mb} MiB`, dtype: dtype === 'keep' ? 'f32' : 'f32→f16', ms, gflops: 0, gbps: bytes / ms / 1e6 });
    }
  } finally {
    await rm(file, { force: true });
  }
  return rows;
}
