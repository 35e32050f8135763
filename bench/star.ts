// `npm run bench -- --only star`: STAR vanilla vs StageVAR's STAR port side by side, on one random-weight
// transformer, one random text and one seed (issue: "vanilla vs stagevar on STAR in one run"). Per policy:
// the median transformer time (the next-scale loop: conditioning, every scale, sampling, f_hat), the
// per-scale times, the speed-up over vanilla, and the PSNR of the decoded image against vanilla's.
// Defaults fit lavapipe (width 256, 6 layers, the 512 scale list); the released 1.7B model is
// `--width 1920 --depth 30 --heads 30 --size 1024` (for a GPU). The VQ-VAE is a real file (--vae; default the
// star-tiny fixture's, whose 4096 × 32 codebook has the released model's shape); its decoder is not timed.

import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import type { Gpu } from '../engine/device.js';
import { STAR_PATCH_NUMS } from '../model/star/config.js';
import { StarModel } from '../model/star/model.js';
import type { StarWeightSource } from '../model/star/weights.js';
import { VarVqvae } from '../model/star/vqvae.js';
import type { Dtype } from '../model/weights/dtype_convert.js';
import { rgbFromPlanar, type RgbImage } from '../sampler/png.js';
import { starPresets } from '../sampler/policy.js';
import { applyPolicy, type PolicyPlan } from '../sampler/policy_plan.js';
import { STAR_RANKS } from '../sampler/rank_table.js';
import { runStarLoop, starVanillaPlan } from '../sampler/star_loop.js';
import { arg, choiceArg, intArg } from './args.js';
import { psnr } from './policies.js';
import { median, randomF32, type BenchRow } from './types.js';

export interface StarBenchRow extends BenchRow {
  policy: string;
  transformerMs: number;
  speedup: number;
  psnr: number;
  scaleMs: number[];
}

interface Sizes {
  depth: number;
  width: number;
  heads: number;
  textWidth: number;
  vocab: number;
  codeDim: number;
  levels: number;
}

/** Random STAR weights with the upstream names and shapes, generated per tensor on demand (never all in memory). */
function syntheticStar(s: Sizes): StarWeightSource {
  const C = s.width;
  const shapes = new Map<string, { shape: number[]; scale: number; offset?: number }>();
  const weight = (name: string, out: number, inp: number) => shapes.set(name, { shape: [out, inp], scale: 2 / Math.sqrt(inp) });
  const vector = (name: string, shape: number[], scale = 0.2, offset = 0) => shapes.set(name, { shape, scale, offset });
  vector('pos_start', [1, 1, C], 1);
  weight('word_embed.weight', C, s.codeDim);
  vector('word_embed.bias', [C]);
  vector('lvl_embed.weight', [s.levels, C], 1);
  for (let l = 0; l < s.depth; l++) {
    const b = `blocks.${l}.`;
    vector(`${b}attn.scale_mul_1H11`, [1, s.heads, 1, 1], 1, Math.log(4));
    vector(`${b}attn.q_bias`, [C]);
    vector(`${b}attn.v_bias`, [C]);
    weight(`${b}attn.mat_qkv.weight`, 3 * C, C);
    weight(`${b}attn.proj.weight`, C, C);
    vector(`${b}attn.proj.bias`, [C]);
    vector(`${b}cross_attn.scale_mul_1H11`, [1, s.heads, 1, 1], 1, Math.log(4));
    vector(`${b}cross_attn.q_bias`, [C]);
    vector(`${b}cross_attn.v_bias`, [C]);
    weight(`${b}cross_attn.mat_kv.weight`, 2 * C, s.textWidth);
    weight(`${b}cross_attn.mat_q.weight`, C, C);
    weight(`${b}cross_attn.proj.weight`, C, C);
    vector(`${b}cross_attn.proj.bias`, [C]);
    weight(`${b}ffn.fc1.weight`, 4 * C, C);
    vector(`${b}ffn.fc1.bias`, [4 * C]);
    weight(`${b}ffn.fc2.weight`, C, 4 * C);
    vector(`${b}ffn.fc2.bias`, [C]);
  }
  weight('head_logits.weight', s.vocab, C);
  vector('head_logits.bias', [s.vocab]);
  weight('encoder_proj.weight', C, s.textWidth);
  vector('encoder_proj.bias', [C]);
  const seeds = new Map([...shapes.keys()].map((n, i) => [n, 1000 + i]));
  const numel = (shape: number[]) => shape.reduce((a, b) => a * b, 1);
  return {
    has: (name) => shapes.has(name),
    names: () => [...shapes.keys()],
    info: (name) => {
      const t = shapes.get(name);
      if (!t) throw new Error(`synthetic STAR: no tensor ${name}`);
      return { name, dtype: 'F32' as Dtype, shape: [...t.shape], byteLength: numel(t.shape) * 4 };
    },
    tensorChunks: async function* (name) {
      const t = shapes.get(name)!;
      const n = numel(t.shape);
      const rows = 1 << 20; // values per chunk: 4 MiB
      for (let at = 0; at < n; at += rows) {
        const data = randomF32(Math.min(rows, n - at), seeds.get(name)! + at);
        for (let i = 0; i < data.length; i++) data[i] = data[i] * t.scale + (t.offset ?? 0);
        yield { bytes: new Uint8Array(data.buffer), offset: at * 4 };
      }
    },
  };
}

export async function benchStar(gpu: Gpu): Promise<StarBenchRow[]> {
  const size = Number(choiceArg('--size', ['256', '512', '1024'], '512'));
  const patchNums = [...STAR_PATCH_NUMS[size as 256 | 512 | 1024]];
  const sizes: Sizes = {
    width: intArg('--width', 256),
    depth: intArg('--depth', 6),
    heads: intArg('--heads', 4),
    textWidth: 1024,
    vocab: 4096,
    codeDim: 32,
    levels: patchNums.length,
  };
  const vaePath = resolve(arg('--vae') ?? '../shared/fixtures/star-tiny/vae.safetensors');
  if (!existsSync(vaePath)) throw new Error(`bench star: no VQ-VAE at ${vaePath}; pass --vae FILE (a VAR VQ-VAE with a 4096 × 32 codebook)`);
  const runs = intArg('--runs', 2);
  const seed = intArg('--seed', 1);
  const model = await StarModel.load(gpu, syntheticStar(sizes));
  const vq = await VarVqvae.load(gpu, vaePath).catch((err: unknown) => {
    model.dispose();
    throw err;
  });
  // One prompt (20 valid tokens) and the "" row (2 valid tokens), random CLIP-like states.
  const T = 77;
  const hidden = randomF32(2 * T * sizes.textWidth, 7);
  const pooled = randomF32(2 * sizes.textWidth, 8);
  const mask = Int32Array.from({ length: 2 * T }, (_, i) => (i < 20 || (i >= T && i < T + 2) ? 1 : 0));
  const text = {
    hidden: gpu.upload(hidden, [2, T, sizes.textWidth], 'f32', 'bench-text'),
    pooled: gpu.upload(pooled, [2, sizes.textWidth], 'f32', 'bench-pooled'),
    mask,
  };
  const ctx = { chunks: sizes.depth, depth: sizes.depth, table: STAR_RANKS, width: sizes.width, unit: 'layer' };
  const policies: Array<[string, PolicyPlan[]]> = ['vanilla', 'stagevar'].map((name) => [
    name,
    applyPolicy(starPresets(patchNums.length)[name], starVanillaPlan(patchNums, { cfg: 4.5 }), ctx).plans,
  ]);
  const rows: StarBenchRow[] = [];
  let reference: { image: RgbImage; ms: number } | null = null;
  try {
    for (const [name, plans] of policies) {
      const times: number[] = [];
      const perScale: number[][] = [];
      let image: RgbImage | null = null;
      for (let i = 0; i < 1 + runs; i++) {
        const t0 = performance.now();
        const r = await runStarLoop(gpu, { model, vq, text, patchNums, plans, seeds: [seed], topK: 600, topP: 0.8 });
        const ms = performance.now() - t0;
        if (i > 0) {
          times.push(ms);
          perScale.push(r.stats.map((s) => s.ms));
        }
        if (!image) {
          const decoded = vq.decodeClamped(r.fhat);
          image = rgbFromPlanar(await decoded.readF32(), decoded.shape, 0);
          decoded.dispose();
        }
        r.fhat.dispose();
      }
      const transformerMs = median(times);
      reference ??= { image: image!, ms: transformerMs };
      const scaleMs = patchNums.map((_, s) => median(perScale.map((p) => p[s])));
      process.stderr.write(`star ${name.padEnd(8)} per scale (ms): ${scaleMs.map((m, s) => `${patchNums[s]}²:${m.toFixed(0)}`).join(' ')}\n`);
      rows.push({
        kernel: 'star',
        shape: `d${sizes.depth} w${sizes.width} ${size} ${name}`,
        dtype: 'f32',
        ms: transformerMs,
        gflops: 0,
        gbps: 0,
        policy: name,
        transformerMs,
        speedup: reference.ms / transformerMs,
        psnr: psnr(image!, reference.image),
        scaleMs,
      });
    }
    return rows;
  } finally {
    text.hidden.dispose();
    text.pooled.dispose();
    vq.dispose();
    model.dispose();
  }
}
