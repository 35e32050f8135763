// CLIP text encoder: parity with transformers' CLIPTextModel on the clip-tiny fixture (every golden key
// ≤ 1e-4, pad rows included since the padding mask is applied as transformers applies it), a model of other
// sizes with quick_gelu and the first-EOS pooling rule against a float64 reference, and the loader's errors.

import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import type { Gpu } from '../../engine/device.js';
import { ClipTextEncoder, clipPoolIndex } from '../../model/text/clip_encoder.js';
import { relMaxError } from '../../model/parity/measure.js';
import { runClipParity } from '../../model/text/text_parity.js';
import { writeSafetensors, type TensorToWrite } from '../../model/weights/safetensors_writer.js';
import { expectClose, fixture, randn, rng, runSeed, testGpu } from '../helpers.js';

let gpu: Gpu;
let scratch: string;
beforeAll(async () => {
  gpu = await testGpu();
  scratch = await mkdtemp(join(tmpdir(), 'stagevar-clip-'));
});
afterAll(async () => {
  await rm(scratch, { recursive: true, force: true });
});

describe('clip-tiny fixture (transformers CLIPTextModel, SD-2 text tower)', () => {
  test('every golden key within its tolerance', async () => {
    const t0 = performance.now();
    const results = await runClipParity(gpu, fixture('clip-tiny'));
    console.log(`CLIP parity (${(performance.now() - t0).toFixed(0)} ms):\n` + results.map((r) => `  ${r.key.padEnd(26)} ${r.error.toExponential(2)} (tol ${r.tol})`).join('\n'));
    const keys = results.map((r) => r.key);
    for (const k of ['last_hidden_state', 'pooler_output', 'eos_index', 'last_hidden_state_nomask', 'hidden_states.0']) expect(keys).toContain(k);
    for (const r of results) expect(r.error, r.key).toBeLessThanOrEqual(r.tol);
  });

  test('pooling rules: legacy argmax of the ids when eos_token_id is 2, else the first EOS', () => {
    const ids = [49406, 320, 49407, 0, 0];
    expect(clipPoolIndex(ids, 2)).toBe(2);
    expect(clipPoolIndex(ids, 49407)).toBe(2);
    // They differ when a pad id is larger than EOS, or EOS repeats: argmax takes the first maximum.
    expect(clipPoolIndex([49406, 5, 49407, 49407], 2)).toBe(2);
    expect(clipPoolIndex([3, 7, 9, 7], 7)).toBe(1);
    expect(clipPoolIndex([3, 4, 5], 7)).toBe(0);
  });
});

// ---- a model of other sizes against a float64 reference ------------------------------------------

interface SynthClip {
  width: number;
  heads: number;
  mlp: number;
  layers: number;
  vocab: number;
  positions: number;
  eos: number;
  act: 'quick_gelu' | 'gelu';
}

type Weights = Map<string, { shape: number[]; values: Float32Array }>;

function synthWeights(m: SynthClip, seed: number): Weights {
  const rand = rng(seed);
  const w: Weights = new Map();
  const put = (name: string, shape: number[], std: number, offset = 0) =>
    w.set(name, { shape, values: randn(shape.reduce((a, b) => a * b, 1), rand, std).map((v) => v + offset) });
  const t = 'text_model.';
  put(`${t}embeddings.token_embedding.weight`, [m.vocab, m.width], 1);
  put(`${t}embeddings.position_embedding.weight`, [m.positions, m.width], 0.5);
  for (let l = 0; l < m.layers; l++) {
    const p = `${t}encoder.layers.${l}.`;
    for (const ln of ['layer_norm1', 'layer_norm2']) {
      put(`${p}${ln}.weight`, [m.width], 0.2, 1);
      put(`${p}${ln}.bias`, [m.width], 0.1);
    }
    for (const x of ['q_proj', 'k_proj', 'v_proj', 'out_proj']) {
      put(`${p}self_attn.${x}.weight`, [m.width, m.width], 0.3);
      put(`${p}self_attn.${x}.bias`, [m.width], 0.1);
    }
    put(`${p}mlp.fc1.weight`, [m.mlp, m.width], 0.3);
    put(`${p}mlp.fc1.bias`, [m.mlp], 0.1);
    put(`${p}mlp.fc2.weight`, [m.width, m.mlp], 0.2);
    put(`${p}mlp.fc2.bias`, [m.width], 0.1);
  }
  put(`${t}final_layer_norm.weight`, [m.width], 0.2, 1);
  put(`${t}final_layer_norm.bias`, [m.width], 0.1);
  return w;
}

async function writeModel(dir: string, m: SynthClip, w: Weights, override: Record<string, number[]> = {}): Promise<void> {
  await mkdir(dir, { recursive: true });
  const config = {
    architectures: ['CLIPTextModel'],
    model_type: 'clip_text_model',
    hidden_size: m.width,
    intermediate_size: m.mlp,
    num_attention_heads: m.heads,
    num_hidden_layers: m.layers,
    max_position_embeddings: m.positions,
    hidden_act: m.act,
    layer_norm_eps: 1e-5,
    bos_token_id: m.vocab - 2,
    eos_token_id: m.eos,
    pad_token_id: 1,
    vocab_size: m.vocab,
  };
  const tensors: TensorToWrite[] = [...w].map(([name, { shape, values }]) => {
    const s = override[name] ?? shape;
    const n = s.reduce((a, b) => a * b, 1);
    return { name, shape: s, dtype: 'F32', data: values.length === n ? values : new Float32Array(n) };
  });
  // Older transformers saved the position ids buffer too: the loader must ignore it.
  tensors.push({ name: 'text_model.embeddings.position_ids', shape: [1, m.positions], dtype: 'I64', data: BigInt64Array.from({ length: m.positions }, (_, i) => BigInt(i)) });
  await writeFile(join(dir, 'config.json'), JSON.stringify(config));
  await writeSafetensors(join(dir, 'model.safetensors'), tensors);
}

/** transformers' CLIPTextModel in float64: causal + key padding mask (finfo.min), pooled at the first EOS. */
function clipReference(m: SynthClip, w: Weights, ids: number[], mask: number[] | null): { hidden: Float64Array; pooled: Float64Array } {
  const L = ids.length;
  const C = m.width;
  const D = C / m.heads;
  const get = (n: string) => w.get(`text_model.${n}`)!.values;
  const lin = (x: Float64Array, name: string, out: number, k: number) => {
    const wt = get(`${name}.weight`);
    const b = get(`${name}.bias`);
    const y = new Float64Array(L * out);
    for (let r = 0; r < L; r++) for (let o = 0; o < out; o++) {
      let s = b[o];
      for (let j = 0; j < k; j++) s += x[r * k + j] * wt[o * k + j];
      y[r * out + o] = s;
    }
    return y;
  };
  const ln = (x: Float64Array, name: string) => {
    const g = get(`${name}.weight`);
    const b = get(`${name}.bias`);
    const y = new Float64Array(x.length);
    for (let r = 0; r < L; r++) {
      let mean = 0;
      for (let c = 0; c < C; c++) mean += x[r * C + c] / C;
      let v = 0;
      for (let c = 0; c < C; c++) v += (x[r * C + c] - mean) ** 2 / C;
      for (let c = 0; c < C; c++) y[r * C + c] = ((x[r * C + c] - mean) / Math.sqrt(v + 1e-5)) * g[c] + b[c];
    }
    return y;
  };
  const tok = get('embeddings.token_embedding.weight');
  const pos = get('embeddings.position_embedding.weight');
  let x = new Float64Array(L * C);
  for (let t = 0; t < L; t++) for (let c = 0; c < C; c++) x[t * C + c] = tok[ids[t] * C + c] + pos[t * C + c];
  for (let l = 0; l < m.layers; l++) {
    const p = `encoder.layers.${l}.`;
    let h = ln(x, `${p}layer_norm1`);
    const [q, k, v] = ['q_proj', 'k_proj', 'v_proj'].map((n) => lin(h, `${p}self_attn.${n}`, C, C));
    const o = new Float64Array(L * C);
    for (let hd = 0; hd < m.heads; hd++) {
      for (let i = 0; i < L; i++) {
        const s = new Float64Array(L);
        for (let j = 0; j < L; j++) {
          let d = 0;
          for (let e = 0; e < D; e++) d += q[i * C + hd * D + e] * k[j * C + hd * D + e];
          s[j] = j > i || (mask && mask[j] === 0) ? -3.4028234663852886e38 : d / Math.sqrt(D);
        }
        const mx = Math.max(...s);
        let z = 0;
        for (let j = 0; j < L; j++) z += s[j] = Math.exp(s[j] - mx);
        for (let j = 0; j < L; j++) for (let e = 0; e < D; e++) o[i * C + hd * D + e] += (s[j] / z) * v[j * C + hd * D + e];
      }
    }
    const a = lin(o, `${p}self_attn.out_proj`, C, C);
    x = x.map((xv, i) => xv + a[i]);
    h = ln(x, `${p}layer_norm2`);
    const f1 = lin(h, `${p}mlp.fc1`, m.mlp, C).map((u) => (m.act === 'quick_gelu' ? u / (1 + Math.exp(-1.702 * u)) : u));
    const f = lin(f1, `${p}mlp.fc2`, C, m.mlp);
    x = x.map((xv, i) => xv + f[i]);
  }
  const hidden = ln(x, 'final_layer_norm');
  const e = clipPoolIndex(ids, m.eos);
  return { hidden, pooled: hidden.slice(e * C, (e + 1) * C) };
}

describe('a CLIP text model of other sizes (width 40, 2 heads of 20, 24 positions, quick_gelu, EOS id ≠ 2)', () => {
  const m: SynthClip = { width: 40, heads: 2, mlp: 72, layers: 2, vocab: 60, positions: 24, eos: 59, act: 'quick_gelu' };

  test(`masked, unmasked and hidden states match the reference (seed ${runSeed})`, async () => {
    const dir = join(scratch, 'synth');
    const w = synthWeights(m, runSeed);
    await writeModel(dir, m, w);
    const live = gpu.pool.stats().liveBytes;
    const enc = await ClipTextEncoder.load(gpu, dir);
    expect(enc.config).toMatchObject({ width: 40, heads: 2, headDim: 20, mlp: 72, layers: 2, positions: 24, activation: 'quick_gelu', eosTokenId: 59 });
    const rand = rng(runSeed + 1);
    // Rows: BOS, words, EOS, then pads (id 0); lengths 2, 9 and 24 (EOS last, no pad).
    const L = m.positions;
    const row = (n: number) => [58, ...Array.from({ length: n - 2 }, () => 2 + Math.floor(rand() * 50)), 59, ...new Array<number>(L - n).fill(0)];
    const ids = [row(2), row(9), row(24)];
    const mask = [2, 9, 24].map((n) => Array.from({ length: L }, (_, t) => (t < n ? 1 : 0)));

    const r = enc.encode(ids, mask, { outputHiddenStates: true });
    expect(r.eosIndex).toEqual([1, 8, 23]);
    const hidden = await r.lastHidden.read();
    const pooled = await r.pooled.read();
    expect(r.hiddenStates).toHaveLength(m.layers + 1);
    for (let b = 0; b < ids.length; b++) {
      const want = clipReference(m, w, ids[b], mask[b]);
      // The fixtures' measure: max|err| / max|ref|.
      expect(relMaxError(hidden.subarray(b * L * m.width, (b + 1) * L * m.width), want.hidden), `masked row ${b}`).toBeLessThan(1e-4);
      expect(relMaxError(pooled.subarray(b * m.width, (b + 1) * m.width), want.pooled), `pooled row ${b}`).toBeLessThan(1e-4);
    }
    // hidden_states[0] is the embedding sum.
    const emb = await r.hiddenStates![0].read();
    const tok = w.get('text_model.embeddings.token_embedding.weight')!.values;
    const pos = w.get('text_model.embeddings.position_embedding.weight')!.values;
    expectClose(emb.subarray(0, L * m.width), Float64Array.from({ length: L * m.width }, (_, i) => tok[ids[0][Math.floor(i / m.width)] * m.width + (i % m.width)] + pos[i]), { what: 'embedding sum' });
    for (const t of [r.lastHidden, r.pooled, ...r.hiddenStates!]) t.dispose();

    const n = enc.encode(ids, null, { mask: false });
    const nomask = await n.lastHidden.read();
    for (let b = 0; b < ids.length; b++) {
      expect(relMaxError(nomask.subarray(b * L * m.width, (b + 1) * L * m.width), clipReference(m, w, ids[b], null).hidden), `unmasked row ${b}`).toBeLessThan(1e-4);
    }
    n.lastHidden.dispose();
    n.pooled.dispose();
    enc.dispose();
    expect(gpu.pool.stats().liveBytes, 'GPU bytes still held after dispose').toBe(live);
  });

  test('loader errors name the file, or the key and both shapes', async () => {
    const w = synthWeights(m, runSeed);
    const bad = join(scratch, 'bad-shape');
    await writeModel(bad, m, w, { 'text_model.encoder.layers.1.mlp.fc2.weight': [72, 40] });
    await expect(ClipTextEncoder.load(gpu, bad)).rejects.toThrow(/text_model\.encoder\.layers\.1\.mlp\.fc2\.weight.*\[40, 72\].*\[72, 40\]/);
    const missing = join(scratch, 'missing');
    w.delete('text_model.encoder.layers.1.self_attn.k_proj.bias');
    await writeModel(missing, m, w);
    await expect(ClipTextEncoder.load(gpu, missing)).rejects.toThrow(/text_model\.encoder\.layers\.1\.self_attn\.k_proj\.bias.*missing/);
    const empty = join(scratch, 'empty');
    await mkdir(empty, { recursive: true });
    await expect(ClipTextEncoder.load(gpu, empty)).rejects.toThrow(/empty\/config\.json/);
  });
});
