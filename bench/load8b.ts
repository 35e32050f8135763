// `--only load8b`: loading Infinity-8B's sharded safetensors release through the project's checkpoint
// loader (Checkpoint over `model.safetensors.index.json` → InfinityModel.load, linears converted to f16 on
// the GPU), on a synthetic checkpoint of the real names and shapes (C 3584, 28 heads, FFN 14336, 56 bits,
// 5-layer block chunks) with random values. The release stores f32 (index total_size 33,504,330,240 B =
// 4 B × 8.376 G parameters, spec §3.2) in four shards of 8.22/8.22/8.22/8.83 GB; by default this writes
// one block chunk of the eight (`--chunks N`, 1–8), as four shards, streaming (one 16 MiB chunk at a time).
//
// Reported: write and plain-read throughput of the shards, the load's wall time and GB/s, and host memory
// sampled during the load. On a CPU adapter (lavapipe) GPU buffers are host memory and count in the RSS,
// so "RSS − GPU buffers" is what the loader itself holds; it must stay far below a shard's size.
// The files were just written, so they are read from the page cache: this times the loader, not a disk.

import { mkdir, mkdtemp, open, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Gpu } from '../engine/device.js';
import { InfinityModel } from '../model/infinity/model.js';
import type { FloatDtype } from '../model/weights/dtype_convert.js';
import type { GpuFloat } from '../model/weights/gpu_load.js';
import { writeSafetensors } from '../model/weights/safetensors_writer.js';
import { fmtGB } from './args.js';
import { FULL_SIZE, SyntheticTensors } from './synthetic_infinity.js';
import type { BenchRow } from './types.js';

export interface Load8bOptions {
  /** Block chunks written (of 8; 5 layers each). */
  chunks: number;
  shards: number;
  dtype: FloatDtype;
  linearDtype: GpuFloat;
  /** Folder to write into (created if missing); default a new temp folder. The files are deleted after. */
  dir?: string;
}

export interface Load8bRow extends BenchRow {
  note?: string;
}

const MIB = 2 ** 20;
const RELEASE_TOTAL_BYTES = 33_504_330_240;

function eightB(chunks: number, dtype: FloatDtype): SyntheticTensors {
  const f = FULL_SIZE['8b'];
  return SyntheticTensors.infinity({ family: '8b', width: f.width, depth: chunks * f.layersPerChunk, heads: f.heads }, dtype);
}

/** Tensors in order, cut into `shards` runs of about equal bytes (as save_pretrained's max_shard_size does). */
function planShards(source: SyntheticTensors, shards: number): string[][] {
  const names = source.names();
  const target = source.totalBytes() / shards;
  const out: string[][] = [[]];
  let bytes = 0;
  for (const [i, name] of names.entries()) {
    const left = names.length - i;
    const size = source.info(name).byteLength;
    // A new shard when this one is full, keeping at least one tensor for each remaining shard.
    if (out.length < shards && out.at(-1)!.length > 0 && (bytes + size / 2 > target * out.length || left <= shards - out.length)) out.push([]);
    out.at(-1)!.push(name);
    bytes += size;
  }
  if (out.length !== shards) throw new Error(`--shards ${shards}: only ${out.length} shards could be filled from ${names.length} tensors`);
  return out;
}

/** Peak RSS and peak RSS minus live GPU buffer bytes, sampled every few ms while `run` runs. */
async function sampleMemory<T>(gpu: Gpu, run: () => Promise<T>): Promise<{ value: T; peakRss: number; peakHost: number; baseRss: number }> {
  const baseRss = process.memoryUsage.rss();
  let peakRss = baseRss;
  let peakHost = baseRss - gpu.stats().liveBytes;
  const sample = () => {
    const rss = process.memoryUsage.rss();
    peakRss = Math.max(peakRss, rss);
    peakHost = Math.max(peakHost, rss - gpu.stats().liveBytes);
  };
  const timer = setInterval(sample, 5);
  try {
    const value = await run();
    sample();
    return { value, peakRss, peakHost, baseRss };
  } finally {
    clearInterval(timer);
  }
}

export async function benchLoad8b(gpu: Gpu, o: Load8bOptions): Promise<Load8bRow[]> {
  if (o.chunks < 1 || o.chunks > 8) throw new Error(`--chunks must be 1..8 (Infinity-8B has 8 block chunks of 5 layers), got ${o.chunks}`);
  const source = eightB(o.chunks, o.dtype);
  const plan = planShards(source, o.shards);
  const total = source.totalBytes();
  const dir = o.dir ?? (await mkdtemp(join(tmpdir(), 'stagevar-load8b-')));
  if (o.dir) await mkdir(o.dir, { recursive: true });
  const shardName = (i: number) => `model-${String(i + 1).padStart(5, '0')}-of-${String(o.shards).padStart(5, '0')}.safetensors`;
  const files = plan.map((_, i) => join(dir, shardName(i)));
  const index = join(dir, 'model.safetensors.index.json');
  const rows: Load8bRow[] = [];
  const label = `8B ${o.chunks}/8 chunks`;
  const row = (shape: string, ms: number, bytes: number, dtype: string = o.dtype): Load8bRow => ({ kernel: 'load8b', shape, dtype, ms, gflops: 0, gbps: bytes / ms / 1e6 });
  const note = (shape: string, text: string): Load8bRow => ({ kernel: 'load8b', shape, dtype: '', ms: 0, gflops: 0, gbps: 0, note: text });
  try {
    // Write: each tensor streamed from the synthetic source, 16 MiB at a time.
    let t0 = performance.now();
    const weightMap: Record<string, string> = {};
    for (const [s, names] of plan.entries()) {
      await writeSafetensors(files[s], names.map((name) => {
        const info = source.info(name);
        weightMap[name] = shardName(s);
        return {
          name,
          dtype: info.dtype,
          shape: info.shape,
          data: async (emit: (bytes: Uint8Array) => Promise<void>) => {
            for await (const c of source.tensorChunks(name)) await emit(c.bytes);
          },
        };
      }));
    }
    await writeFile(index, JSON.stringify({ metadata: { total_size: total }, weight_map: weightMap }, null, 2));
    rows.push(row(`${label} write ${o.shards} shards`, performance.now() - t0, total));
    const shardSizes = await Promise.all(files.map(async (f) => (await stat(f)).size));
    rows.push(note(`${label} files`, `${o.shards} shards ${shardSizes.map((b) => fmtGB(b)).join(' / ')}, ${source.names().length} tensors, ${(source.parameters() / 1e9).toFixed(3)} G params ${o.dtype}`));

    // Plain sequential read of the shards (the page-cache reference).
    t0 = performance.now();
    const buf = Buffer.alloc(16 * MIB);
    for (const f of files) {
      const h = await open(f, 'r');
      for (let pos = 0; ; ) {
        const { bytesRead } = await h.read(buf, 0, buf.length, pos);
        if (bytesRead === 0) break;
        pos += bytesRead;
      }
      await h.close();
    }
    rows.push(row(`${label} plain read`, performance.now() - t0, total));

    // The load itself: index → shards → GPU, linears converted on the GPU.
    const live0 = gpu.stats().liveBytes;
    const { value: loaded, peakRss, peakHost, baseRss } = await sampleMemory(gpu, async () => {
      const start = performance.now();
      const model = await InfinityModel.load(gpu, dir, { linearDtype: o.linearDtype });
      await gpu.sync();
      return { model, ms: performance.now() - start };
    });
    const gpuBytes = gpu.stats().liveBytes - live0;
    loaded.model.dispose();
    const ms = loaded.ms;
    rows.push(row(`${label} load → GPU`, ms, total, `${o.dtype}→${o.linearDtype}`));
    const largestShard = Math.max(...shardSizes);
    // On a CPU adapter GPU buffers live in this process, so the loader's own share is RSS minus them.
    const cpuAdapter = gpu.adapter.software;
    const own = cpuAdapter ? `; peak RSS − GPU buffers ${fmtGB(peakHost)} (+${fmtGB(peakHost - baseRss)} over the start)` : '';
    rows.push(note(`${label} host memory`, `RSS before ${fmtGB(baseRss)}, peak ${fmtGB(peakRss)} (+${fmtGB(peakRss - baseRss)})${own}; GPU buffers after load ${fmtGB(gpuBytes)}; largest shard ${fmtGB(largestShard)}`));
    const full = eightB(8, o.dtype).totalBytes();
    rows.push(note(`8B full (extrapolated)`, `${fmtGB(full)} ${o.dtype} (release index: ${fmtGB(RELEASE_TOTAL_BYTES)} f32) at this rate: ${((ms / 1000) * (full / total)).toFixed(1)} s`));
  } finally {
    for (const f of [...files, index]) await rm(f, { force: true });
    if (!o.dir) await rm(dir, { recursive: true, force: true });
  }
  return rows;
}
