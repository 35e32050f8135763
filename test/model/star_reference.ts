// A float64 CPU reference of the STAR transformer (models/basic_var.py AttnBlock + var_drop.py's input and
// head), written straight from the spec, and random STAR state dicts of any size as in-memory weight
// sources. Used to check configurations the fixture does not cover (depth, heads, widths, batch, steps on
// some rows only, arbitrary RoPE positions).

import type { StarWeightSource } from '../../model/star/weights.js';
import type { Dtype } from '../../model/weights/dtype_convert.js';

export interface RandomStarSizes {
  depth: number;
  width: number;
  heads: number;
  levels: number;
  textWidth: number;
  pooledWidth: number;
  vocab: number;
  codeDim: number;
  ffn: number;
}

export type StateDict = Map<string, { shape: number[]; data: Float32Array }>;

/** Seeded random STAR weights with upstream names (class_emb and zero_k_bias included, as in a checkpoint). */
export function randomStarState(s: RandomStarSizes, rand: () => number): StateDict {
  const normal = () => Math.sqrt(-2 * Math.log(Math.max(rand(), 1e-12))) * Math.cos(2 * Math.PI * rand());
  const dict: StateDict = new Map();
  const put = (name: string, shape: number[], gen: (i: number) => number) => {
    const n = shape.reduce((a, b) => a * b, 1);
    dict.set(name, { shape, data: Float32Array.from({ length: n }, (_, i) => gen(i)) });
  };
  const weight = (name: string, out: number, inp: number) => put(name, [out, inp], () => normal() / Math.sqrt(inp));
  const bias = (name: string, n: number) => put(name, [n], () => 0.1 * normal());
  const { width: C, heads: H } = s;
  put('pos_start', [1, 1, C], () => 0.5 * normal());
  weight('word_embed.weight', C, s.codeDim);
  bias('word_embed.bias', C);
  put('class_emb.weight', [11, C], () => normal());
  put('lvl_embed.weight', [s.levels, C], () => 0.5 * normal());
  for (let l = 0; l < s.depth; l++) {
    const b = `blocks.${l}.`;
    // Head 0 of the first layer above the ln 100 clamp, as in star-tiny.
    put(`${b}attn.scale_mul_1H11`, [1, H, 1, 1], (h) => (l === 0 && h === 0 ? 5 : Math.log(4) + 0.5 * normal()));
    bias(`${b}attn.q_bias`, C);
    bias(`${b}attn.v_bias`, C);
    put(`${b}attn.zero_k_bias`, [C], () => 0);
    weight(`${b}attn.mat_qkv.weight`, 3 * C, C);
    weight(`${b}attn.proj.weight`, C, C);
    bias(`${b}attn.proj.bias`, C);
    put(`${b}cross_attn.scale_mul_1H11`, [1, H, 1, 1], () => Math.log(4) + 0.5 * normal());
    bias(`${b}cross_attn.q_bias`, C);
    bias(`${b}cross_attn.v_bias`, C);
    weight(`${b}cross_attn.mat_kv.weight`, 2 * C, s.textWidth);
    weight(`${b}cross_attn.mat_q.weight`, C, C);
    weight(`${b}cross_attn.proj.weight`, C, C);
    bias(`${b}cross_attn.proj.bias`, C);
    weight(`${b}ffn.fc1.weight`, s.ffn, C);
    bias(`${b}ffn.fc1.bias`, s.ffn);
    weight(`${b}ffn.fc2.weight`, C, s.ffn);
    bias(`${b}ffn.fc2.bias`, C);
  }
  weight('head_logits.weight', s.vocab, C);
  bias('head_logits.bias', s.vocab);
  weight('encoder_proj.weight', C, s.pooledWidth);
  bias('encoder_proj.bias', C);
  return dict;
}

/** A state dict as a weight source (F32), like an opened checkpoint. */
export function memorySource(dict: StateDict): StarWeightSource {
  return {
    has: (name) => dict.has(name),
    names: () => [...dict.keys()],
    info: (name) => {
      const t = dict.get(name);
      if (!t) throw new Error(`no tensor ${name}`);
      return { name, dtype: 'F32' as Dtype, shape: [...t.shape], byteLength: t.data.byteLength };
    },
    tensorChunks: async function* (name) {
      const t = dict.get(name)!;
      yield { bytes: new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength), offset: 0 };
    },
  };
}

export interface RefText {
  /** [rows, T, Dt] */
  hidden: Float32Array;
  mask: Int32Array;
  /** [rows, Dp] */
  pooled: Float32Array;
  T: number;
}

/** y[o] = Σ_i W[o, i]·x[i] + b[o] for a [out, in] weight. */
function mv(W: Float32Array, b: Float32Array | null, x: ArrayLike<number>, out: number, inp: number): Float64Array {
  const y = new Float64Array(out);
  for (let o = 0; o < out; o++) {
    let s = b ? b[o] : 0;
    for (let i = 0; i < inp; i++) s += W[o * inp + i] * x[i];
    y[o] = s;
  }
  return y;
}

function layerNorm(x: ArrayLike<number>, eps = 1e-6): Float64Array {
  const n = x.length;
  let m = 0;
  for (let i = 0; i < n; i++) m += x[i];
  m /= n;
  let v = 0;
  for (let i = 0; i < n; i++) v += (x[i] - m) ** 2;
  const r = 1 / Math.sqrt(v / n + eps);
  return Float64Array.from(x, (a) => (a - m) * r);
}

function normalizeHeads(x: Float64Array, H: number, scale: ArrayLike<number> | null): Float64Array {
  const D = x.length / H;
  const y = new Float64Array(x.length);
  for (let h = 0; h < H; h++) {
    let s = 0;
    for (let d = 0; d < D; d++) s += x[h * D + d] ** 2;
    const r = (scale ? scale[h] : 1) / Math.max(Math.sqrt(s), 1e-12);
    for (let d = 0; d < D; d++) y[h * D + d] = x[h * D + d] * r;
  }
  return y;
}

/** Rotates each head's pairs: pairs j < D/4 by x·θ^(−4j/D), the rest by y·θ^(−4(j−D/4)/D). */
function rope(x: Float64Array, H: number, pos: readonly [number, number]): Float64Array {
  const D = x.length / H;
  const q = D / 4;
  const y = Float64Array.from(x);
  for (let h = 0; h < H; h++) {
    for (let p = 0; p < D / 2; p++) {
      const j = p % q;
      const a = (p < q ? pos[0] : pos[1]) * 10000 ** (-(4 * j) / D);
      const [c, s] = [Math.cos(a), Math.sin(a)];
      const [u, v] = [x[h * D + 2 * p], x[h * D + 2 * p + 1]];
      y[h * D + 2 * p] = c * u - s * v;
      y[h * D + 2 * p + 1] = s * u + c * v;
    }
  }
  return y;
}

/** Attention of one query over keys/values (lists of [H·D]), per head, softmax scale 1. */
function attend(q: Float64Array, keys: Float64Array[], values: Float64Array[], H: number): Float64Array {
  const D = q.length / H;
  const out = new Float64Array(q.length);
  for (let h = 0; h < H; h++) {
    const sc = keys.map((k) => {
      let s = 0;
      for (let d = 0; d < D; d++) s += q[h * D + d] * k[h * D + d];
      return s;
    });
    const m = Math.max(...sc);
    const e = sc.map((s) => Math.exp(s - m));
    const z = e.reduce((a, b) => a + b, 0);
    values.forEach((v, j) => {
      for (let d = 0; d < D; d++) out[h * D + d] += (e[j] / z) * v[h * D + d];
    });
  }
  return out;
}

const geluTanh = (x: number) => 0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x ** 3)));

export class StarReference {
  /** Per layer, per sequence row: cached (k, v) of every token so far. */
  private readonly cache: Array<Map<number, { k: Float64Array[]; v: Float64Array[] }>>;

  constructor(
    private readonly w: StateDict,
    private readonly s: RandomStarSizes,
    private readonly text: RefText,
  ) {
    this.cache = Array.from({ length: s.depth }, () => new Map());
  }

  private t(name: string): Float32Array {
    const t = this.w.get(name);
    if (!t) throw new Error(`reference: no ${name}`);
    return t.data;
  }

  private scales(name: string): number[] {
    return [...this.t(name)].map((v) => Math.exp(Math.min(v, Math.log(100))));
  }

  /** Block-0 input of one row: start token (next = null) or word_embed of next's tokens [L, codeDim], + lvl[si]. */
  input(si: number, row: number, next: Float32Array[] | null): Float64Array[] {
    const { width: C, codeDim, pooledWidth: Dp } = this.s;
    const lvl = this.t('lvl_embed.weight').subarray(si * C, (si + 1) * C);
    if (!next) {
      const pooled = this.text.pooled.subarray(row * Dp, (row + 1) * Dp);
      const x = mv(this.t('encoder_proj.weight'), this.t('encoder_proj.bias'), pooled, C, Dp);
      const pos = this.t('pos_start');
      return [x.map((v, c) => v + pos[c] + lvl[c])];
    }
    return next.map((tok) => mv(this.t('word_embed.weight'), this.t('word_embed.bias'), tok, C, codeDim).map((v, c) => v + lvl[c]));
  }

  /**
   * Runs all layers on rows (each a list of token vectors), the tokens at `positions` (normalised (x, y)),
   * appending to each row's cache; cross-attention of rows[0] with text row `textRow`, added to all rows.
   */
  step(rows: Map<number, Float64Array[]>, positions: ReadonlyArray<readonly [number, number]>, textRow: number, layers = this.s.depth): Map<number, Float64Array[]> {
    const { width: C, heads: H, textWidth: Dt, ffn: F } = this.s;
    const order = [...rows.keys()];
    for (let l = 0; l < layers; l++) {
      const b = `blocks.${l}.`;
      const qkv = this.t(`${b}attn.mat_qkv.weight`);
      const [wq, wk, wv] = [qkv.subarray(0, C * C), qkv.subarray(C * C, 2 * C * C), qkv.subarray(2 * C * C)];
      const selfScale = this.scales(`${b}attn.scale_mul_1H11`);
      // Every row's new K/V join its cache first: a scale sees all of itself.
      const qs = new Map<number, Float64Array[]>();
      for (const r of order) {
        const entry = this.cache[l].get(r) ?? { k: [], v: [] };
        this.cache[l].set(r, entry);
        qs.set(
          r,
          rows.get(r)!.map((x, t) => {
            const h = layerNorm(x);
            const q = rope(mv(wq, this.t(`${b}attn.q_bias`), h, C, C), H, positions[t]);
            const k = rope(mv(wk, null, h, C, C), H, positions[t]);
            entry.k.push(normalizeHeads(k, H, null));
            entry.v.push(mv(wv, this.t(`${b}attn.v_bias`), h, C, C));
            return normalizeHeads(q, H, selfScale);
          }),
        );
      }
      for (const r of order) {
        const entry = this.cache[l].get(r)!;
        rows.get(r)!.forEach((x, t) => {
          const o = attend(qs.get(r)![t], entry.k, entry.v, H);
          const y = mv(this.t(`${b}attn.proj.weight`), this.t(`${b}attn.proj.bias`), o, C, C);
          for (let c = 0; c < C; c++) x[c] += y[c];
        });
      }
      // Cross-attention: first row only, masked text of textRow, broadcast.
      const kv = this.t(`${b}cross_attn.mat_kv.weight`);
      const crossScale = this.scales(`${b}cross_attn.scale_mul_1H11`);
      const keys: Float64Array[] = [];
      const values: Float64Array[] = [];
      for (let j = 0; j < this.text.T; j++) {
        if (!this.text.mask[textRow * this.text.T + j]) continue;
        const tok = this.text.hidden.subarray((textRow * this.text.T + j) * Dt, (textRow * this.text.T + j + 1) * Dt);
        keys.push(normalizeHeads(mv(kv.subarray(0, C * Dt), null, tok, C, Dt), H, null));
        values.push(mv(kv.subarray(C * Dt), this.t(`${b}cross_attn.v_bias`), tok, C, Dt));
      }
      const cross = rows.get(order[0])!.map((x) => {
        const q = normalizeHeads(mv(this.t(`${b}cross_attn.mat_q.weight`), this.t(`${b}cross_attn.q_bias`), layerNorm(x), C, C), H, crossScale);
        return mv(this.t(`${b}cross_attn.proj.weight`), this.t(`${b}cross_attn.proj.bias`), attend(q, keys, values, H), C, C);
      });
      for (const r of order) rows.get(r)!.forEach((x, t) => x.forEach((_, c) => (x[c] += cross[t][c])));
      // FFN.
      for (const r of order) {
        for (const x of rows.get(r)!) {
          const f = mv(this.t(`${b}ffn.fc1.weight`), this.t(`${b}ffn.fc1.bias`), layerNorm(x), F, C).map(geluTanh);
          const y = mv(this.t(`${b}ffn.fc2.weight`), this.t(`${b}ffn.fc2.bias`), f, C, F);
          for (let c = 0; c < C; c++) x[c] += y[c];
        }
      }
    }
    return rows;
  }

  head(x: Float64Array): Float64Array {
    return mv(this.t('head_logits.weight'), this.t('head_logits.bias'), layerNorm(x), this.s.vocab, this.s.width);
  }
}
