// `--only infinity`: the Infinity transformer with random weights, scale by scale, at any width — the real
// 2B (2048 wide, 32 layers, 16 heads) or 8B (3584, 40 layers, 28 heads, 56 bits) by flags, a small one on
// lavapipe by default — then the BSQ-VAE decoder. The weights go through the model's loader
// (InfinityModel.load on a synthetic tensor source), so load-time dtype conversion is the real one.
//
// A scale here is the transformer alone: word_embed (or the sos token), lvl_embed, every layer, the head;
// not sampling or the latent update (the next-scale input is random, prepared before the clock starts).
// GFLOP/s = analytic FLOPs / wall time: linears 2·(6C² + 2·C·F) per token and layer, self-attention
// 4·C·(cached + new keys), cross-attention 4·C·L_text, the head 2·C·2·bits, word_embed 2·bits·C per prompt
// token (bench/e2e.ts's count plus word_embed). Timed around gpu.sync(); one warm-up pass over the first
// scales compiles the kernels first. Scale 0 also pays the new generation's first-use costs (Dawn zero-fills
// a fresh buffer, e.g. the KV cache, on its first use), as every real generation does.

import type { Gpu } from '../engine/device.js';
import type { Tensor } from '../engine/tensor.js';
import { InfinityModel } from '../model/infinity/model.js';
import type { GpuFloat } from '../model/weights/gpu_load.js';
import { resolveShape } from '../sampler/options.js';
import { ropeGrid, scaleSchedule, scaleStarts, type Grid } from '../sampler/schedule.js';
import { fmtGB } from './args.js';
import { scaleFlops } from './e2e.js';
import { FULL_SIZE, SyntheticTensors, syntheticConfig, type Family, type SyntheticShape } from './synthetic_infinity.js';
import { randomF32, type BenchRow } from './types.js';
import { benchDecoder, decoderParameters } from './vae_decoder.js';

export interface InfinityBenchOptions extends SyntheticShape {
  /** Image size class: 256 | 512 | 768 | 1024 (schedules 0.06M, 0.25M, 0.60M, 1M). */
  size: number;
  ratio: string;
  /** Prompts; sequence rows = 2·batch with CFG. */
  batch: number;
  cfg: boolean;
  /** Text tokens per prompt (T5 rows incl. EOS). */
  textTokens: number;
  /** GPU dtype of the linear weights. */
  linearDtype: GpuFloat;
  /** Timed passes over the schedule (median per scale). */
  runs: number;
  decoder: { ch: number; sizes: number[]; runs: number } | null;
}

export interface InfinityRow extends BenchRow {
  /** A line of text instead of timings (memory figures). */
  note?: string;
}

const ITEM: Record<string, number> = { f32: 4, f16: 2, bf16: 2 };

export async function benchInfinity(gpu: Gpu, o: InfinityBenchOptions): Promise<InfinityRow[]> {
  const config = syntheticConfig(o);
  const source = SyntheticTensors.infinity(o);
  const label = `${o.family} C${o.width} L${o.depth} H${o.heads}`;
  const rows: InfinityRow[] = [];
  const note = (shape: string, text: string): InfinityRow => ({ kernel: 'infinity', shape, dtype: '', ms: 0, gflops: 0, gbps: 0, note: text });

  const live0 = gpu.stats().liveBytes;
  let t0 = performance.now();
  const model = await InfinityModel.load(gpu, source, { linearDtype: o.linearDtype, vaeChannels: config.vaeChannels });
  await gpu.sync();
  const loadMs = performance.now() - t0;
  const weightBytes = gpu.stats().liveBytes - live0;
  rows.push(note('model', `${label} F${config.ffnHidden}, ${config.bitsPerToken} bits/token, ${config.chunks} chunk(s) × ${config.layersPerChunk}; random weights`));
  rows.push({ kernel: 'infinity', shape: `load ${(source.parameters() / 1e6).toFixed(0)}M params`, dtype: `f32→${o.linearDtype}`, ms: loadMs, gflops: 0, gbps: source.totalBytes() / loadMs / 1e6 });

  const shape = resolveShape(o.size, o.ratio);
  const schedule = shape.schedule;
  const starts = scaleStarts(schedule);
  const B = o.batch;
  const seqRows = o.cfg ? 2 * B : B;
  const text = {
    features: randomF32(B * o.textTokens * config.textWidth, 3),
    lens: new Array<number>(B).fill(o.textTokens),
    guidance: o.cfg,
  };
  // Next-scale inputs (±1/√bits codes, as the latent would give), uploaded before each scale's clock.
  const bitsInput = (si: number): Tensor => {
    const n = schedule[si][0] * schedule[si][1];
    const v = randomF32(B * n * config.bitsPerToken, 100 + si).map((x) => (x < 0 ? -1 : 1) / Math.sqrt(config.bitsPerToken));
    return gpu.upload(v, [B, n, config.bitsPerToken], 'f32', 'next-scale-input');
  };

  /** One generation through the first `scales` scales; per-scale ms and the begin (text constants) ms. */
  const pass = async (scales: number): Promise<{ beginMs: number; ms: number[]; kvBytes: number }> => {
    t0 = performance.now();
    const gen = model.begin({ text, schedule, ropeGrid: ropeGrid(shape.template) });
    await gpu.sync();
    const beginMs = performance.now() - t0;
    const kvBytes = gen.cache.k.concat(gen.cache.v).reduce((s, t) => s + t.byteLength, 0);
    const ms: number[] = [];
    try {
      for (let si = 0; si < scales; si++) {
        const input = si === 0 ? null : bitsInput(si);
        await gpu.sync();
        t0 = performance.now();
        const step = gen.step(si);
        const x0 = input ? model.embedTokens(gen, input) : model.sosInput(gen);
        let x = model.addLevel(x0, si);
        x0.dispose();
        for (let c = 0; c < config.chunks; c++) {
          const next = model.runChunk(c, x, gen, step);
          x.dispose();
          x = next;
        }
        model.head(x, gen, step).dispose();
        x.dispose();
        await gpu.sync();
        ms.push(performance.now() - t0);
        input?.dispose();
      }
    } finally {
      gen.dispose();
    }
    return { beginMs, ms, kvBytes };
  };

  try {
    // Warm-up: the first four scales use both matmul row variants (≤ 8 and > 8 rows) and every kernel.
    await pass(Math.min(4, schedule.length));
    gpu.pool.resetPeak();
    const passes: Array<Awaited<ReturnType<typeof pass>>> = [];
    for (let r = 0; r < o.runs; r++) passes.push(await pass(schedule.length));
    const peak = gpu.stats().peakBytes;
    const med = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
    const dtype = `${o.linearDtype} w`;
    rows.push({ kernel: 'infinity', shape: `begin (text, KV alloc)`, dtype, ms: med(passes.map((p) => p.beginMs)), gflops: 0, gbps: 0 });
    let totalMs = 0;
    let totalFlops = 0;
    schedule.forEach(([h, w], si) => {
      const n = h * w;
      const flops = scaleFlops(config, seqRows, n, starts[si] + n, o.textTokens) + (si > 0 ? 2 * B * n * config.bitsPerToken * config.width : 0);
      const ms = med(passes.map((p) => p.ms[si]));
      totalMs += ms;
      totalFlops += flops;
      rows.push({ kernel: 'infinity', shape: `scale ${si} ${h}×${w} (${seqRows}×${n})`, dtype, ms, gflops: flops / ms / 1e6, gbps: 0 });
    });
    rows.push({ kernel: 'infinity', shape: `all ${shape.resolution} (${seqRows}×${starts.at(-1)})`, dtype, ms: totalMs, gflops: totalFlops / totalMs / 1e6, gbps: 0 });
    rows.push(note('memory', `this run: weights ${fmtGB(weightBytes)} (linears ${o.linearDtype}, rest f32), KV cache ${fmtGB(passes[0].kvBytes)}, peak GPU buffers ${fmtGB(peak)} (${peak} B)`));
    rows.push(...fullSizeMemory(o.family, o.ratio, o.size).map((t) => note(`${o.family} full size`, t)));
  } finally {
    model.dispose();
  }
  if (o.decoder) rows.push(...(await benchDecoder(gpu, { family: o.family, ...o.decoder })));
  return rows;
}

/**
 * Analytic memory of the released model at full size: every parameter in f16, plus the KV cache of the
 * whole 1M schedule (every scale's K and V of every layer, 2 CFG rows; the cache holds the last scale's
 * keys too) at f16 and at f32, and the VAE decoder in f32.
 */
export function fullSizeMemory(family: Family, ratio: string, size: number): string[] {
  const full = FULL_SIZE[family];
  const params = SyntheticTensors.infinity({ family, width: full.width, depth: full.depth, heads: full.heads }).parameters();
  const tokensOf = (schedule: readonly Grid[]) => scaleStarts(schedule).at(-1)!;
  const tokens = tokensOf(scaleSchedule(resolveShape(1024, ratio).template, '1M'));
  // KvCache's capacity: every token of the schedule, rounded up to 64, per row and layer, K and V.
  const kv = (tok: number, item: number) => 2 * full.depth * 2 * Math.ceil(tok / 64) * 64 * full.width * item;
  const weights = params * ITEM.f16;
  const vae = decoderParameters(family, 128) * 4;
  const lines = [
    `${(params / 1e9).toFixed(3)} G params → weights f16 ${fmtGB(weights)}; KV cache 1M (${tokens} tok, 2 rows, ${full.depth} layers × ${full.width}) f16 ${fmtGB(kv(tokens, 2))}, f32 ${fmtGB(kv(tokens, 4))}; VAE decoder f32 ${fmtGB(vae)}`,
    `1M total: weights f16 + KV f16 ${fmtGB(weights + kv(tokens, 2))}, weights f16 + KV f32 ${fmtGB(weights + kv(tokens, 4))} (activations not included)`,
  ];
  if (size !== 1024) {
    const shape = resolveShape(size, ratio);
    const t = tokensOf(shape.schedule);
    lines.push(`${shape.resolution} (${t} tok): KV f16 ${fmtGB(kv(t, 2))}, f32 ${fmtGB(kv(t, 4))}; weights f16 + KV f16 ${fmtGB(weights + kv(t, 2))}`);
  }
  return lines;
}
