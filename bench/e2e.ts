// End-to-end benchmark: time per image split into text encoding, the per-generation text constants, the
// transformer scale by scale, and decoding; plus the peak GPU memory of a generation (weights included).
// With no model given it runs the built-in demo model (no files), so it works on any machine; with
// `model`/`vae`/`textEncoder` it runs a real Infinity. ms = median over `runs` generations after `warmup`.
// GFLOP/s of a scale = the transformer's matmul and attention FLOPs for the rows that ran (spec §9.2's
// count: 6C² + 2C·F MACs per token per layer, 2·C·(cached + new tokens) for self-attention, 2·C·L_text
// for cross-attention) over the scale's wall time, sampling and latent update included.

import type { Gpu } from '../engine/device.js';
import { Engine, type GenerateResult, type ModelInfo } from '../sampler/engine.js';
import { scaleStarts } from '../sampler/schedule.js';
import { median, type BenchRow } from './types.js';

export interface E2eOptions {
  /** Infinity weights; default: the built-in demo model. */
  model?: string;
  vae?: string;
  textEncoder?: string;
  tokenizer?: string;
  prompt?: string;
  /** Default 1024 for a real model, 256 for the demo. */
  size?: number;
  ratio?: string;
  cfg?: number;
  seed?: number;
  warmup?: number;
  runs?: number;
}

export interface E2eRow extends BenchRow {
  /** text | conditioning | scale N | transformer | decode | total */
  stage: string;
  /** Peak GPU buffer bytes over the measured generations (the same on every row). */
  peakBytes: number;
}


export async function benchE2E(gpu: Gpu, o: E2eOptions = {}): Promise<E2eRow[]> {
  const engine = await Engine.create({ gpu });
  try {
    let info: ModelInfo;
    if (o.model) {
      if (!o.vae || !o.textEncoder) throw new Error('benchE2E: a model needs vae and textEncoder too');
      info = await engine.loadInfinity({ model: o.model, vae: o.vae, textEncoder: o.textEncoder, ...(o.tokenizer ? { tokenizer: o.tokenizer } : {}) });
    } else {
      info = await engine.loadDemo();
    }
    const size = o.size ?? (o.model ? 1024 : 256);
    const results: GenerateResult[] = [];
    const warmup = o.warmup ?? 1;
    const runs = o.runs ?? 3;
    for (let i = 0; i < warmup + runs; i++) {
      const r = await engine.generate({ prompt: o.prompt ?? 'a lighthouse on a cliff at dawn, oil painting', seed: o.seed ?? 1, size, ratio: o.ratio ?? '1:1', cfg: o.cfg ?? 3 });
      if (i >= warmup) results.push(r);
    }
    const peakBytes = Math.max(...results.map((r) => r.stats.peakBytes));
    const label = `${info.name} ${size} ${o.ratio ?? '1:1'}`;
    const row = (stage: string, shape: string, ms: number, flops = 0): E2eRow => ({
      kernel: 'e2e',
      stage,
      shape: `${label} ${stage}${shape ? ` ${shape}` : ''}`,
      dtype: 'f32',
      ms,
      gflops: flops > 0 ? flops / (ms * 1e6) : 0,
      gbps: 0,
      peakBytes,
    });
    const first = results[0];
    const starts = scaleStarts(first.schedule);
    const rows: E2eRow[] = [
      row('text', '', median(results.map((r) => r.stats.textMs))),
      row('conditioning', '', median(results.map((r) => r.stats.conditioningMs))),
    ];
    let totalFlops = 0;
    first.stats.scales.forEach((s, i) => {
      // Keys: every earlier scale's tokens plus this one's (exact for vanilla plans).
      const flops = s.run ? scaleFlops(info, s.rows, s.tokens, starts[i] + s.tokens, first.textLens[0]) : 0;
      totalFlops += flops;
      rows.push(row(`scale ${i}`, `${s.grid[0]}×${s.grid[1]}`, median(results.map((r) => r.stats.scales[i].ms)), flops));
    });
    rows.push(row('transformer', '', median(results.map((r) => r.stats.transformerMs)), totalFlops));
    rows.push(row('decode', '', median(results.map((r) => r.stats.decodeMs))));
    rows.push(row('total', '', median(results.map((r) => r.stats.totalMs))));
    return rows;
  } finally {
    engine.dispose();
  }
}

/** Transformer FLOPs of one scale: `rows` sequence rows × `tokens` new tokens, `keys` self-attention keys. */
export function scaleFlops(m: Pick<ModelInfo, 'width' | 'depth' | 'bitsPerToken' | 'ffnHidden'>, rows: number, tokens: number, keys: number, textTokens: number): number {
  const C = m.width;
  const F = m.ffnHidden;
  const perTokenLayer = 6 * C * C + 2 * C * F + 2 * C * keys + 2 * C * textTokens;
  const head = C * 2 * m.bitsPerToken;
  return 2 * rows * tokens * (m.depth * perTokenLayer + head);
}
