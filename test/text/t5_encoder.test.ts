// T5 encoder: parity with the official HF code on the t5-tiny fixture (every golden key ≤ 1e-4), a model
// of other sizes checked against a float64 reference (nothing may depend on the fixture's sizes), and the
// loader's errors (missing file, missing or mis-shaped tensor) and its encoder-only upload.

import { mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import type { Gpu } from '../../engine/device.js';
import { T5Encoder, t5RelativeBucket } from '../../model/text/t5_encoder.js';
import { erfRef } from '../../kernels/elementwise.js';
import { relMaxError } from '../../model/parity/measure.js';
import { runT5Parity } from '../../model/text/text_parity.js';
import { bf16ArrayToF32, f16ArrayToF32, f32ArrayToBf16, f32ArrayToF16 } from '../../model/weights/dtype_convert.js';
import { writeSafetensors, type TensorToWrite } from '../../model/weights/safetensors_writer.js';
import { fixture, randn, rng, runSeed, testGpu } from '../helpers.js';

let gpu: Gpu;
let scratch: string;
beforeAll(async () => {
  gpu = await testGpu();
  scratch = await mkdtemp(join(tmpdir(), 'stagevar-t5-'));
});
afterAll(async () => {
  await rm(scratch, { recursive: true, force: true });
});

describe('t5-tiny fixture (transformers T5EncoderModel)', () => {
  test('every golden key within its tolerance', async () => {
    const dir = fixture('t5-tiny');
    const t0 = performance.now();
    const results = await runT5Parity(gpu, dir);
    console.log(`T5 parity (${(performance.now() - t0).toFixed(0)} ms):\n` + results.map((r) => `  ${r.key.padEnd(22)} ${r.error.toExponential(2)} (tol ${r.tol})`).join('\n'));
    // Every output key of the golden file is compared (ids.*, batch.ids, batch.mask are inputs).
    const header = JSON.parse(await readHeader(join(dir, 'golden.safetensors'))) as Record<string, unknown>;
    const outputs = Object.keys(header).filter((k) => k !== '__metadata__' && !/^ids\.|^batch\.(ids|mask)$/.test(k));
    expect(results.map((r) => r.key).sort()).toEqual(outputs.sort());
    for (const r of results) expect(r.error, r.key).toBeLessThanOrEqual(r.tol);
  });

  test('uploads only encoder tensors (the decoder and lm_head stay on disk)', async () => {
    const dir = fixture('t5-tiny');
    const index = JSON.parse(await readFile(join(dir, 'model.safetensors.index.json'), 'utf8')) as { weight_map: Record<string, string> };
    const shardHeaders = new Map<string, Record<string, { shape: number[] }>>();
    for (const shard of new Set(Object.values(index.weight_map))) shardHeaders.set(shard, JSON.parse(await readHeader(join(dir, shard))));
    let expected = 0;
    for (const [name, shard] of Object.entries(index.weight_map)) {
      if (!name.startsWith('encoder.') && name !== 'shared.weight') continue;
      const numel = shardHeaders.get(shard)![name].shape.reduce((a, b) => a * b, 1);
      if (!name.endsWith('relative_attention_bias.weight')) expected += Math.max(16, Math.ceil((numel * 4) / 16) * 16); // kept on the host
    }
    const before = gpu.pool.stats().liveBytes;
    const enc = await T5Encoder.load(gpu, dir);
    expect(gpu.pool.stats().liveBytes - before).toBe(expected);
    enc.dispose();
  });
});

// ---- a model of other sizes against a float64 reference ------------------------------------------

interface SynthT5 {
  width: number;
  heads: number;
  dKv: number;
  ffn: number;
  layers: number;
  vocab: number;
  buckets: number;
  maxDistance: number;
  eps: number;
  gated: boolean;
  /** HF activation name of the FFN. */
  act: 'gelu_new' | 'gelu';
}

type Weights = Map<string, { shape: number[]; values: Float32Array; dtype: 'F32' | 'F16' | 'BF16' }>;

/** Random weights in HF names; some stored as BF16/F16 (the reference uses the rounded values). */
function synthWeights(m: SynthT5, seed: number): Weights {
  const rand = rng(seed);
  const w: Weights = new Map();
  const inner = m.heads * m.dKv;
  const put = (name: string, shape: number[], std: number, offset = 0, dtype: 'F32' | 'F16' | 'BF16' = 'F32') => {
    let values: Float32Array = randn(shape.reduce((a, b) => a * b, 1), rand, std).map((v) => v + offset);
    if (dtype === 'BF16') values = bf16ArrayToF32(f32ArrayToBf16(values));
    if (dtype === 'F16') values = f16ArrayToF32(f32ArrayToF16(values));
    w.set(name, { shape, values, dtype });
  };
  put('shared.weight', [m.vocab, m.width], 1, 0, 'BF16');
  put('encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight', [m.buckets, m.heads], 1.5);
  for (let l = 0; l < m.layers; l++) {
    const p = `encoder.block.${l}.layer`;
    put(`${p}.0.layer_norm.weight`, [m.width], 0.2, 1);
    for (const x of ['q', 'k', 'v']) put(`${p}.0.SelfAttention.${x}.weight`, [inner, m.width], 0.25, 0, l === 1 && x === 'q' ? 'F16' : 'F32');
    put(`${p}.0.SelfAttention.o.weight`, [m.width, inner], 0.15);
    put(`${p}.1.layer_norm.weight`, [m.width], 0.2, 1);
    if (m.gated) {
      put(`${p}.1.DenseReluDense.wi_0.weight`, [m.ffn, m.width], 0.2);
      put(`${p}.1.DenseReluDense.wi_1.weight`, [m.ffn, m.width], 0.2);
    } else put(`${p}.1.DenseReluDense.wi.weight`, [m.ffn, m.width], 0.2);
    put(`${p}.1.DenseReluDense.wo.weight`, [m.width, m.ffn], 0.15);
  }
  put('encoder.final_layer_norm.weight', [m.width], 0.2, 1);
  // A decoder tensor the loader must ignore.
  put('decoder.final_layer_norm.weight', [m.width], 1);
  return w;
}

async function writeModel(dir: string, m: SynthT5, w: Weights, override: Record<string, number[]> = {}): Promise<void> {
  const config = {
    architectures: ['T5ForConditionalGeneration'],
    d_model: m.width,
    d_kv: m.dKv,
    num_heads: m.heads,
    num_layers: m.layers,
    d_ff: m.ffn,
    feed_forward_proj: m.gated ? `gated-${m.act === 'gelu_new' ? 'gelu' : m.act}` : m.act,
    relative_attention_num_buckets: m.buckets,
    relative_attention_max_distance: m.maxDistance,
    layer_norm_epsilon: m.eps,
    vocab_size: m.vocab,
    pad_token_id: 0,
    eos_token_id: 1,
    model_type: 't5',
  };
  const tensors: TensorToWrite[] = [...w].map(([name, { shape, values, dtype }]) => {
    const s = override[name] ?? shape;
    const n = s.reduce((a, b) => a * b, 1);
    const v = values.length === n ? values : new Float32Array(n);
    return { name, shape: s, dtype, data: dtype === 'BF16' ? f32ArrayToBf16(v) : dtype === 'F16' ? f32ArrayToF16(v) : v };
  });
  await writeFile(join(dir, 'config.json'), JSON.stringify(config));
  await writeSafetensors(join(dir, 'model.safetensors'), tensors);
}

const gelu = (x: number, act: SynthT5['act']) =>
  act === 'gelu_new' ? 0.5 * x * (1 + Math.tanh(0.7978845608028654 * (x + 0.044715 * x ** 3))) : 0.5 * x * (1 + erfRef(x / Math.SQRT2));

/** HF's bucket in double precision (independent of the engine's float32 emulation; no exact-boundary case occurs in this model). */
function refBucket(rel: number, numBuckets: number, maxDistance: number): number {
  const half = numBuckets / 2;
  const maxExact = half / 2;
  const n = Math.abs(rel);
  const base = rel > 0 ? half : 0;
  if (n < maxExact) return base + n;
  return base + Math.min(half - 1, maxExact + Math.floor((Math.log(n / maxExact) / Math.log(maxDistance / maxExact)) * (half - maxExact)));
}

/** One prompt alone, float64 (what HF computes for it with a mask of ones). */
function t5Reference(m: SynthT5, w: Weights, ids: number[]): Float64Array {
  const L = ids.length;
  const C = m.width;
  const inner = m.heads * m.dKv;
  const get = (n: string) => w.get(n)!.values;
  const matT = (x: Float64Array, rows: number, wt: Float32Array, out: number, k: number) => {
    const y = new Float64Array(rows * out);
    for (let r = 0; r < rows; r++) for (let o = 0; o < out; o++) {
      let s = 0;
      for (let j = 0; j < k; j++) s += x[r * k + j] * wt[o * k + j];
      y[r * out + o] = s;
    }
    return y;
  };
  const rms = (x: Float64Array, g: Float32Array) => {
    const y = new Float64Array(x.length);
    for (let r = 0; r < L; r++) {
      let ss = 0;
      for (let c = 0; c < C; c++) ss += x[r * C + c] ** 2;
      const inv = 1 / Math.sqrt(ss / C + m.eps);
      for (let c = 0; c < C; c++) y[r * C + c] = x[r * C + c] * inv * g[c];
    }
    return y;
  };
  const emb = get('shared.weight');
  let x = new Float64Array(L * C);
  ids.forEach((id, t) => {
    for (let c = 0; c < C; c++) x[t * C + c] = emb[id * C + c];
  });
  const rel = get('encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight');
  for (let l = 0; l < m.layers; l++) {
    const p = `encoder.block.${l}.layer`;
    let h = rms(x, get(`${p}.0.layer_norm.weight`));
    const [q, k, v] = ['q', 'k', 'v'].map((n) => matT(h, L, get(`${p}.0.SelfAttention.${n}.weight`), inner, C));
    const o = new Float64Array(L * inner);
    for (let hd = 0; hd < m.heads; hd++) {
      for (let i = 0; i < L; i++) {
        const s = new Float64Array(L);
        for (let j = 0; j < L; j++) {
          let d = 0;
          for (let e = 0; e < m.dKv; e++) d += q[i * inner + hd * m.dKv + e] * k[j * inner + hd * m.dKv + e];
          s[j] = d + rel[refBucket(j - i, m.buckets, m.maxDistance) * m.heads + hd];
        }
        const mx = Math.max(...s);
        let z = 0;
        for (let j = 0; j < L; j++) z += s[j] = Math.exp(s[j] - mx);
        for (let j = 0; j < L; j++) for (let e = 0; e < m.dKv; e++) o[i * inner + hd * m.dKv + e] += (s[j] / z) * v[j * inner + hd * m.dKv + e];
      }
    }
    const a = matT(o, L, get(`${p}.0.SelfAttention.o.weight`), C, inner);
    x = x.map((xv, i) => xv + a[i]);
    h = rms(x, get(`${p}.1.layer_norm.weight`));
    let f: Float64Array;
    if (m.gated) {
      const g = matT(h, L, get(`${p}.1.DenseReluDense.wi_0.weight`), m.ffn, C);
      const u = matT(h, L, get(`${p}.1.DenseReluDense.wi_1.weight`), m.ffn, C);
      f = g.map((gv, i) => gelu(gv, m.act) * u[i]);
    } else f = matT(h, L, get(`${p}.1.DenseReluDense.wi.weight`), m.ffn, C).map((gv) => gelu(gv, m.act));
    const d = matT(f, L, get(`${p}.1.DenseReluDense.wo.weight`), C, m.ffn);
    x = x.map((xv, i) => xv + d[i]);
  }
  return rms(x, get('encoder.final_layer_norm.weight'));
}

describe('a T5 of other sizes (width 48, 2 heads × 20 = 40 ≠ width, 16 buckets, max distance 20)', () => {
  const base: SynthT5 = { width: 48, heads: 2, dKv: 20, ffn: 72, layers: 2, vocab: 50, buckets: 16, maxDistance: 20, eps: 1e-5, gated: true, act: 'gelu_new' };
  const randomIds = (n: number, rand: () => number) => [...Array.from({ length: n - 1 }, () => 2 + Math.floor(rand() * 48)), 1];

  for (const m of [base, { ...base, gated: false, act: 'gelu' as const, layers: 3 }]) {
    test(`${m.gated ? 'gated gelu_new' : 'plain gelu (erf)'} FFN, ${m.layers} layers: a ragged batch, equal lengths, and no mask (seed ${runSeed})`, async () => {
      const dir = join(scratch, `synth-${m.gated ? 'gated' : 'plain'}`);
      await mkdirp(dir);
      const w = synthWeights(m, runSeed);
      await writeModel(dir, m, w);
      const live = gpu.pool.stats().liveBytes;
      const enc = await T5Encoder.load(gpu, dir);
      expect(enc.config).toMatchObject({ width: 48, heads: 2, headDim: 20, inner: 40, ffn: 72, layers: m.layers, buckets: 16, maxDistance: 20, gated: m.gated });
      const rand = rng(runSeed + 1);
      // Lengths above 16 and past max distance 20 (the last bucket), different per prompt.
      const prompts = [randomIds(3, rand), randomIds(29, rand), randomIds(17, rand)];
      const check = async (ps: number[][], opts: { mask?: boolean }, what: string) => {
        const r = enc.encode(ps, opts);
        const got = (await r.hidden.read()) as Float32Array;
        r.hidden.dispose();
        let row = 0;
        r.lens.forEach((len, i) => {
          const want = t5Reference(m, w, opts.mask === false ? [...ps[i], ...new Array<number>(len - ps[i].length).fill(0)] : ps[i]);
          // The fixtures' measure: max|err| / max|ref| (random weights here are larger than HF's initializer).
          expect(relMaxError(got.subarray(row * m.width, (row + len) * m.width), want), `${what}, prompt ${i}`).toBeLessThan(1e-4);
          row += len;
        });
        return r.lens;
      };
      expect(await check(prompts, {}, 'ragged')).toEqual([3, 29, 17]);
      expect(await check([prompts[2], randomIds(17, rand)], {}, 'equal lengths')).toEqual([17, 17]);
      expect(await check(prompts, { mask: false }, 'no mask')).toEqual([29, 29, 29]);
      const withLayers = enc.encode(prompts, { collectLayers: true });
      expect(withLayers.layers).toHaveLength(m.layers + 1);
      for (const t of [withLayers.hidden, ...withLayers.layers!]) t.dispose();
      enc.dispose();
      expect(gpu.pool.stats().liveBytes, 'GPU bytes still held after dispose').toBe(live);
    });
  }

  test('bucket function: HF float32 rule at the fixture settings (exact below 8, log-spaced, clamped from 91)', () => {
    const b = (rel: number) => t5RelativeBucket(rel, 32, 128);
    expect([0, 1, 7, -1, -7].map(b)).toEqual([0, 17, 23, 1, 7]);
    // Exact powers where float rounding could flip the truncation: n = 16, 32, 64 start buckets 10, 12, 14.
    expect([15, 16, 31, 32, 63, 64, 90, 91, 500].map((n) => b(-n))).toEqual([9, 10, 11, 12, 13, 14, 14, 15, 15]);
    expect(b(1000)).toBe(31);
  });

  test('loader errors name the file, or the key and both shapes', async () => {
    const m = base;
    const w = synthWeights(m, runSeed);
    const bad = join(scratch, 'bad-shape');
    await mkdirp(bad);
    await writeModel(bad, m, w, { 'encoder.block.1.layer.1.DenseReluDense.wo.weight': [48, 70] });
    await expect(T5Encoder.load(gpu, bad)).rejects.toThrow(/encoder\.block\.1\.layer\.1\.DenseReluDense\.wo\.weight.*\[48, 72\].*\[48, 70\]/);

    const missing = join(scratch, 'missing-tensor');
    await mkdirp(missing);
    w.delete('encoder.block.1.layer.0.SelfAttention.v.weight');
    await writeModel(missing, m, w);
    await expect(T5Encoder.load(gpu, missing)).rejects.toThrow(/encoder\.block\.1\.layer\.0\.SelfAttention\.v\.weight.*missing|missing.*encoder\.block\.1\.layer\.0\.SelfAttention\.v\.weight/);

    // The fixture's index with its second shard absent, and a folder without config.json.
    const src = fixture('t5-tiny');
    const noShard = join(scratch, 'no-shard');
    await mkdirp(noShard);
    for (const f of ['config.json', 'model.safetensors.index.json', 'model-00001-of-00002.safetensors']) await symlink(join(src, f), join(noShard, f));
    await expect(T5Encoder.load(gpu, noShard)).rejects.toThrow(/model-00002-of-00002\.safetensors/);
    const noConfig = join(scratch, 'no-config');
    await mkdirp(noConfig);
    for (const f of ['model.safetensors.index.json', 'model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors']) await symlink(join(src, f), join(noConfig, f));
    await expect(T5Encoder.load(gpu, noConfig)).rejects.toThrow(/no-config\/config\.json/);
  });
});

async function mkdirp(dir: string): Promise<void> {
  const { mkdir } = await import('node:fs/promises');
  await mkdir(dir, { recursive: true });
}

/** The JSON header of a safetensors file. */
async function readHeader(path: string): Promise<string> {
  const { open } = await import('node:fs/promises');
  const h = await open(path, 'r');
  try {
    const len = Buffer.alloc(8);
    await h.read(len, 0, 8, 0);
    const n = Number(len.readBigUInt64LE(0));
    const json = Buffer.alloc(n);
    await h.read(json, 0, n, 8);
    return json.toString('utf8');
  } finally {
    await h.close();
  }
}
