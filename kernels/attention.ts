// Attention family: softmax(scale·q·kᵀ [+ bias, masks])·v per head, computed flash-style: the score matrix
// is never materialised. One kernel template serves three launchers:
//   attention        dense batches against a KV cache (first kvLen rows valid), no mask (Infinity self-attn)
//   attentionVarlen  packed sequences, sequence i's queries see only its own keys (Infinity cross-attn, pools)
//   attentionMasked  causal and/or key-padding mask and/or additive bias (CLIP, T5 encoder)
//
// Kernel: one invocation per query (ORT's portable flash attention, engine.md §1/§5), 64 queries per
// workgroup (16 when no sequence has more), one workgroup per (query tile, head, sequence). q (pre-scaled)
// and the output accumulator sit in private arrays; keys stream in blocks of 16 with an online softmax:
// f32 running max and sum, one rescale of the accumulator per block, one division at the end. Scores
// are computed four keys at a time (each q vec4 feeds four dot products).
// k and v are read straight from storage rather than staged in workgroup memory: every invocation of the
// workgroup reads the same address, which lavapipe compiles to one scalar load + broadcast (per-lane
// and workgroup-memory loads cost it ~7 instructions per lane; measured 1.5–2× faster than staging
// tiles) and which GPUs serve as a cache broadcast. There are no barriers.
// Head dim, strides, lengths and the varlen/causal/keyMask/bias flags travel in the uniform params, and
// all loops have runtime bounds: lavapipe compiles this in ~1.5 CPU-seconds per variant, where unrolled
// head-dim loops or per-key generated code took 8 s to minutes. Variants are only the k/v dtype
// (f32, or f16/bf16 through packed loads), the query tile, the head-dim capacity (64/128/256, which
// sizes the private arrays) and the q/output dtype: f32, or f16 for the f16 activation path of
// `attention` and `attentionVarlen` (needs shader-f16; q is widened on load, scores, softmax statistics
// and the accumulator stay f32, the output is rounded once).
// On CPU adapters, long dense query runs (`attention` with ≥ 128 queries and keys, f32 q) go through two GEMMs
// instead (attention_gemm.ts): on lavapipe 2.3× faster than this kernel at 256 queries × 1024 keys, 4.5× at
// 1024 × 4096 (bench/attention.ts, side by side).
// On real GPUs the runtime-indexed private arrays live in (cached) local memory rather than registers, so
// devices tuned for GPUs run attention_tiled.ts instead (lanes sharing a query, keys staged in workgroup
// memory) wherever it applies: no masks, head dim 32/64/128/256, subgroups.
//
// Masked scores (attentionMasked) are replaced by the most negative finite f32 (PyTorch's finfo.min, what
// transformers adds for masks), not by -inf: a row whose keys are all masked then gets equal scores
// everywhere, i.e. the plain average of v over all keys, exactly as transformers' CLIP does, and never NaN.
//
// Binding limit: k/v bind the valid rows only; when a tensor still exceeds maxStorageBufferBindingSize
// (128 MiB on lavapipe; Infinity-2B's f32 cache is 86 MiB per batch element, 8B's 150 MiB), the dense
// launcher dispatches once per batch element. A single batch element above the limit needs an f16 cache.

import type { Gpu } from '../engine/device.js';
import { LimitError, ShapeError, shapeStr } from '../engine/errors.js';
import { Params } from '../engine/params.js';
import type { KernelSpec } from '../engine/pipelines.js';
import type { Tensor } from '../engine/tensor.js';
import { attentionByGemm } from './attention_gemm.js';
import { TILED_HEAD_DIMS, type TiledAttentionVariant, tiledAttentionShape, tiledAttentionSpec } from './attention_tiled.js';
import { MASKED_SCORE, VARLEN_FLAG, attentionPrelude } from './attention_wgsl.js';
import { ceilDiv } from './wgsl.js';

type KvDType = 'f32' | 'f16' | 'bf16';

export { MASKED_SCORE };

/** Head-dim capacity classes: they size the private q and accumulator arrays (dcap/4 vec4 each). */
const DCAPS = [64, 128, 256] as const;

/** Keys per softmax block (a multiple of 4): scores are kept for a block, then folded in with one rescale. */
const BK = 16;

// Uniform flags: which optional inputs and masks are in play. One kernel serves all launchers because
// every extra variant costs lavapipe seconds of shader compilation; the flag tests are uniform branches.
const VARLEN = VARLEN_FLAG;
const CAUSAL = 2;
const KEY_MASK = 4;
const BIAS = 8;

interface Variant {
  kv: KvDType;
  /** Storage type of q and of the output. */
  io: 'f32' | 'f16';
  dcap: number;
  /** Queries (= invocations) per workgroup: 64 for long query runs, 16 when there are few queries. */
  bq: number;
}


const specs = new Map<string, KernelSpec>();

function attentionSpec(v: Variant): KernelSpec {
  const half = v.io === 'f16';
  const key = `${v.kv}_d${v.dcap}_q${v.bq}${half ? '_f16io' : ''}`;
  const hit = specs.get(key);
  if (hit) return hit;
  const dc4 = v.dcap / 4;
  // Row (vec4 index of this head's first element) of key u of the current group of four; past the end
  // of the sequence the last key is re-read, so loads stay in range (its weight is forced to 0).
  const rows = [0, 1, 2, 3].map((u) => `let r${u} = (k0 + min(j + ${u}u, nk - 1u)) * p.c4 + hoff;`).join('\n        ');
  const code = /* wgsl */ `${attentionPrelude(v.io, v.kv)}
// attention: k/v ${v.kv}, head dim ≤ ${v.dcap}, ${v.bq} queries per workgroup, ${BK} keys per softmax block${half ? ', q and o f16' : ''}
const BQ: u32 = ${v.bq}u;
const BK: u32 = ${BK}u;

// Bias and masks for key kj (index within its sequence) and query qi. A masked score becomes MASKED,
// replacing rather than adding, so a row with every key masked averages all of them.
fn adjust(sc: f32, kj: u32, qi: u32, nq: u32, nk: u32, s: u32, h: u32) -> f32 {
  var x = sc;
  if ((p.flags & ${BIAS}u) != 0u) { x += bias[(h * nq + qi) * nk + kj]; }
  if (((p.flags & ${CAUSAL}u) != 0u && kj > qi) || ((p.flags & ${KEY_MASK}u) != 0u && key_mask[s * nk + kj] == 0)) {
    x = MASKED;
  }
  return x;
}

@compute @workgroup_size(${v.bq})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let s = wid.z;
  let h = wid.y;
  // Sequence s: queries q0..q0+nq-1, keys k0..k0+nk-1 (rows of the flat [rows, H·D] views).
  let sq = sequence(s);
  let q0 = sq.x;
  let nq = sq.y;
  let k0 = sq.z;
  let nk = sq.w;
  let qi = wid.x * BQ + li;
  if (qi >= nq) { return; } // no barriers below, so lanes may leave on their own
  let d4 = p.d4;
  let hoff = h * d4;
  let qb = (q0 + qi) * p.c4 + hoff;

  // q (pre-scaled) and the output accumulator, one vec4 per 4 dims of the head.
  var qv: array<vec4<f32>, ${dc4}>;
  var acc: array<vec4<f32>, ${dc4}>;
  for (var d = 0u; d < d4; d++) {
    qv[d] = ${half ? 'vec4<f32>(q[qb + d])' : 'q[qb + d]'} * p.scale;
    acc[d] = vec4<f32>(0.0);
  }
  // The running max starts at MASKED (finite) rather than -inf, so exp(m_old - m_new) never sees
  // inf - inf; a finite or -inf argument gives a finite factor.
  var m = MASKED;
  var l = 0.0;

  for (var t0 = 0u; t0 < nk; t0 += BK) {
    let n = min(BK, nk - t0);
    // Scores of the block's keys 4g..4g+3 in sc[g]. k and v rows are read straight from storage: the
    // address is the same for every invocation (lavapipe: one scalar load + broadcast; GPUs: a
    // broadcast from cache), which beat staging tiles in workgroup memory on lavapipe by 1.5–2×.
    var sc: array<vec4<f32>, ${BK / 4}>;
    let ng = (n + 3u) / 4u;
    for (var g = 0u; g < ng; g++) {
      let j = t0 + 4u * g;
      ${rows}
      var dv = vec4<f32>(0.0);
      for (var d = 0u; d < d4; d++) {
        let x = qv[d];
        dv += vec4<f32>(dot(x, load_k(r0 + d)), dot(x, load_k(r1 + d)), dot(x, load_k(r2 + d)), dot(x, load_k(r3 + d)));
      }
      sc[g] = dv;
    }
    if ((p.flags & ${BIAS | CAUSAL | KEY_MASK}u) != 0u) {
      for (var j = 0u; j < n; j++) { sc[j / 4u][j % 4u] = adjust(sc[j / 4u][j % 4u], t0 + j, qi, nq, nk, s, h); }
    }
    var mt = m;
    for (var j = 0u; j < n; j++) { mt = max(mt, sc[j / 4u][j % 4u]); }
    let corr = exp(m - mt);
    var psum = 0.0;
    for (var g = 0u; g < ng; g++) {
      // Weights; keys past the end of the sequence get exactly 0.
      let jj = vec4<u32>(4u * g) + vec4<u32>(0u, 1u, 2u, 3u);
      let pg = select(vec4<f32>(0.0), exp(sc[g] - vec4<f32>(mt)), jj < vec4<u32>(n));
      sc[g] = pg;
      psum += pg.x + pg.y + pg.z + pg.w;
    }
    l = l * corr + psum;
    m = mt;
    for (var d = 0u; d < d4; d++) { acc[d] *= corr; }
    for (var g = 0u; g < ng; g++) {
      let pg = sc[g];
      let j = t0 + 4u * g;
      ${rows}
      for (var d = 0u; d < d4; d++) {
        acc[d] = fma(vec4<f32>(pg.x), load_v(r0 + d), fma(vec4<f32>(pg.y), load_v(r1 + d),
                 fma(vec4<f32>(pg.z), load_v(r2 + d), fma(vec4<f32>(pg.w), load_v(r3 + d), acc[d]))));
      }
    }
  }

  let inv = 1.0 / l; // l ≥ 1: the key holding the running max contributes exp(0)
  for (var d = 0u; d < d4; d++) { o[qb + d] = ${half ? 'vec4<f16>(acc[d] * inv)' : 'acc[d] * inv'}; }
}`;
  const spec: KernelSpec = { name: `attention_${key}`, code, bindings: ['read', 'read', 'read', 'read', 'read', 'read', 'write'] };
  specs.set(key, spec);
  return spec;
}

// ---- launchers ----------------------------------------------------------------------------------

export interface AttentionOptions {
  heads: number;
  /** Multiplies q·k before the softmax (1/√D for plain attention, 1 for cosine attention and T5). */
  scale: number;
  /** Valid rows of the k/v caches per batch element (default: all Lmax). */
  kvLen?: number;
  out?: Tensor;
  /** Binding size to split the cache against (default: the device's maxStorageBufferBindingSize). Tests lower it. */
  maxBindingBytes?: number;
}

interface Geometry {
  heads: number;
  d: number;
  c: number;
  dcap: number;
  kv: KvDType;
  io: 'f32' | 'f16';
}

/**
 * Checks dtypes, channel counts and the head split shared by all launchers. q is f32, or f16 where the
 * launcher allows it (`f16Q`, given the device: f16 q needs shader-f16).
 */
function geometry(kernel: string, q: Tensor, k: Tensor, v: Tensor, heads: number, scale: number, f16Q: Gpu | null = null): Geometry {
  const shapes = `q ${shapeStr(q.shape)} ${q.dtype}, k ${shapeStr(k.shape)} ${k.dtype}, v ${shapeStr(v.shape)} ${v.dtype}`;
  if (q.dtype === 'f16' && f16Q && !f16Q.hasF16) throw new ShapeError(kernel, `f16 q needs the shader-f16 feature, which this device lacks (${shapes})`);
  if (!(q.dtype === 'f32' || (q.dtype === 'f16' && f16Q))) throw new ShapeError(kernel, `q must be f32${f16Q ? ' or f16' : ''} (${shapes})`);
  if (k.dtype !== v.dtype || !(k.dtype === 'f32' || k.dtype === 'f16' || k.dtype === 'bf16')) {
    throw new ShapeError(kernel, `k and v must share one float dtype f32/f16/bf16 (${shapes})`);
  }
  const c = q.shape[q.rank - 1];
  if (k.shape[k.rank - 1] !== c || v.shape[v.rank - 1] !== c) throw new ShapeError(kernel, `channel counts differ (${shapes})`);
  if (!Number.isInteger(heads) || heads < 1 || c % heads !== 0) throw new ShapeError(kernel, `${heads} heads do not divide ${c} channels (${shapes})`);
  const d = c / heads;
  const dcap = DCAPS.find((x) => x >= d);
  if (d % 4 !== 0 || dcap === undefined) {
    throw new ShapeError(kernel, `head dim ${d} must be a multiple of 4 and at most ${DCAPS[DCAPS.length - 1]} (${shapes})`);
  }
  if (!Number.isFinite(scale)) throw new ShapeError(kernel, `scale ${scale} is not finite`);
  return { heads, d, c, dcap, kv: k.dtype, io: q.dtype };
}

/** The output has q's dtype (f32, or f16 on the f16 activation path). */
function outputFor(kernel: string, gpu: Gpu, q: Tensor, out: Tensor | undefined): Tensor {
  if (!out) return gpu.empty(q.shape, q.dtype, kernel);
  if (out.dtype !== q.dtype || out.numel !== q.numel) {
    throw new ShapeError(kernel, `out ${shapeStr(out.shape)} ${out.dtype} must be ${q.dtype} (q's dtype) with the element count of q ${shapeStr(q.shape)}`);
  }
  return out;
}

/** Query tile: 64 queries per workgroup, or 16 when no sequence has more (few-query scales, pools). */
function queryTile(maxQ: number): number {
  return maxQ > 16 ? 64 : 16;
}

/** A tiny buffer bound in place of absent optional inputs (offsets, key mask, bias), one per device. */
const placeholders = new WeakMap<Gpu, Tensor>();
function placeholder(gpu: Gpu): Tensor {
  let t = placeholders.get(gpu);
  if (!t || t.isDisposed) {
    t = gpu.upload(new Int32Array(4), [4], 'i32', 'attention-placeholder', true);
    placeholders.set(gpu, t);
  }
  return t;
}

interface Launch {
  q: Tensor;
  k: Tensor;
  v: Tensor;
  out: Tensor;
  seq?: Tensor;
  keyMask?: Tensor | null;
  bias?: Tensor | null;
  flags: number;
  /** Dense layouts: queries and keys per sequence, rows between sequences. */
  qLen: number;
  kLen: number;
  qBatch: number;
  kBatch: number;
  /** Sequences (grid z) and the longest query run (grid x). */
  nSeq: number;
  maxQ: number;
  scale: number;
}

/**
 * Test and benchmark hook. 'auto': on a device tuned for GPUs the tiled kernel where it applies; on a CPU adapter
 * the two-GEMM path for long f32 query runs (`attention` only) and the portable kernel otherwise. 'tiled' and
 * 'gemm' force those wherever they apply (e.g. on lavapipe), 'portable' forces the portable kernel.
 */
export const attentionTesting: { kernel: 'auto' | 'portable' | 'tiled' | 'gemm' } = { kernel: 'auto' };

/** On CPU adapters the two-GEMM path wins from about this many queries and keys (bench/attention.ts). */
const GEMM_MIN_QUERIES = 128;
const GEMM_MIN_KEYS = 128;

function useGemmPath(gpu: Gpu, g: Geometry, lq: number, kvLen: number, limit: number): boolean {
  const mode = attentionTesting.kernel;
  if (g.io !== 'f32') return false;
  // The transposed cache of one batch element must fit one binding (as the flash kernel's rows must).
  if (kvLen * g.c * 4 > limit - gpu.limits.minStorageBufferOffsetAlignment) return false;
  if (mode === 'gemm') return true;
  return mode === 'auto' && gpu.tuning === 'cpu' && lq >= GEMM_MIN_QUERIES && kvLen >= GEMM_MIN_KEYS;
}

/** The tiled kernel's variant for this launch, or null where the portable kernel runs. */
function tiledVariant(gpu: Gpu, g: Geometry, flags: number): TiledAttentionVariant | null {
  const mode = attentionTesting.kernel;
  if (mode === 'portable' || (mode === 'auto' && gpu.tuning !== 'gpu')) return null;
  const d = TILED_HEAD_DIMS.find((x) => x === g.d);
  // Masks and biases (the text encoders) stay on the portable kernel; a query's lanes must share a subgroup.
  if (d === undefined || (flags & ~VARLEN) !== 0 || gpu.subgroupMinSize < tiledAttentionShape(d).tpq) return null;
  return { kv: g.kv, io: g.io, d };
}

function launch(gpu: Gpu, g: Geometry, a: Launch, kernel: string): void {
  // WebGPU rejects a buffer bound both writable and read-only in one dispatch, whatever the ranges.
  for (const t of [a.q, a.k, a.v, a.keyMask, a.bias]) {
    if (t && t.buffer === a.out.buffer) throw new ShapeError(kernel, `out ${a.out} shares a buffer with input ${t}`);
  }
  const none = placeholder(gpu);
  const params = new Params().u32(g.d / 4, g.c / 4, a.qLen, a.kLen, a.qBatch, a.kBatch, a.nSeq, a.flags).f32(a.scale);
  const bindings = [a.q, a.k, a.v, a.seq ?? none, a.keyMask ?? none, a.bias ?? none, a.out];
  const tiled = tiledVariant(gpu, g, a.flags);
  if (tiled) {
    const { bq } = tiledAttentionShape(tiled.d);
    gpu.run(tiledAttentionSpec(tiled), bindings, params, [ceilDiv(a.maxQ, bq), g.heads, a.nSeq]);
    return;
  }
  const bq = queryTile(a.maxQ);
  gpu.run(attentionSpec({ kv: g.kv, io: g.io, dcap: g.dcap, bq }), bindings, params, [ceilDiv(a.maxQ, bq), g.heads, a.nSeq]);
}

/**
 * Multi-head attention against a KV cache: q [B, Lq, H·D] f32 (or f16 with shader-f16), k/v [B, Lmax, H·D]
 * (f32, or f16/bf16 read through packed loads) of which the first `kvLen` rows are valid. No mask.
 * → [B, Lq, H·D] of q's dtype.
 */
export function attention(gpu: Gpu, q: Tensor, k: Tensor, v: Tensor, opts: AttentionOptions): Tensor {
  const name = 'attention';
  const shapes = `q ${shapeStr(q.shape)}, k ${shapeStr(k.shape)}, v ${shapeStr(v.shape)}`;
  if (q.rank !== 3 || k.rank !== 3 || v.rank !== 3) throw new ShapeError(name, `q, k, v must be [B, L, H·D] (${shapes})`);
  const g = geometry(name, q, k, v, opts.heads, opts.scale, gpu);
  const [b, lq] = q.shape;
  const lmax = k.shape[1];
  if (k.shape[0] !== b || v.shape[0] !== b || v.shape[1] !== lmax) throw new ShapeError(name, `batch or cache lengths differ (${shapes})`);
  const kvLen = opts.kvLen ?? lmax;
  if (!Number.isInteger(kvLen) || kvLen < 1 || kvLen > lmax) throw new ShapeError(name, `kvLen ${kvLen} outside [1, ${lmax}] (${shapes})`);
  const out = outputFor(name, gpu, q, opts.out);
  if (b === 0 || lq === 0) return out;

  const limit = opts.maxBindingBytes ?? gpu.limits.maxStorageBufferBindingSize;
  if (useGemmPath(gpu, g, lq, kvLen, limit)) {
    // The same refusal as `launch` gives the flash kernel's path.
    for (const t of [q, k, v]) if (t.buffer === out.buffer) throw new ShapeError(name, `out ${out} shares a buffer with input ${t}`);
    attentionByGemm(gpu, q, k, v, out, { heads: g.heads, scale: opts.scale, kvLen, maxBindingBytes: limit });
    return out;
  }
  const dense = { flags: 0, qLen: lq, kLen: kvLen, qBatch: lq, kBatch: lmax, maxQ: lq, scale: opts.scale };
  const rowBytes = g.c * (g.kv === 'f32' ? 4 : 2);
  const flatK = k.reshape([b * lmax, g.c]);
  const flatV = v.reshape([b * lmax, g.c]);
  // Bind the cache only up to the last valid row of the last batch element.
  const rows = (b - 1) * lmax + kvLen;
  if (rows * rowBytes <= limit) {
    launch(gpu, g, { ...dense, q, k: flatK.rows(0, rows), v: flatV.rows(0, rows), out, nSeq: b }, name);
    return out;
  }
  if (kvLen * rowBytes > limit) {
    const what = `${name}: k/v of one batch element (${shapes}, kvLen ${kvLen}, ${g.kv}; an f16 cache halves it)`;
    throw new LimitError(what, 'maxStorageBufferBindingSize', kvLen * rowBytes, limit);
  }
  // Too large to bind at once: one dispatch per batch element over its own rows.
  const flatQ = q.reshape([b * lq, g.c]);
  const flatO = out.reshape([b * lq, g.c]);
  for (let i = 0; i < b; i++) {
    const kb = flatK.rows(i * lmax, kvLen);
    const vb = flatV.rows(i * lmax, kvLen);
    launch(gpu, g, { ...dense, q: flatQ.rows(i * lq, lq), k: kb, v: vb, out: flatO.rows(i * lq, lq), nSeq: 1 }, name);
  }
  return out;
}

export interface VarlenOptions {
  heads: number;
  scale: number;
  /** Query row offsets, B+1 entries from 0 to Nq: sequence i owns rows qStarts[i]..qStarts[i+1]-1. */
  qStarts: readonly number[];
  /** Key row offsets, B+1 entries from 0 to Nk. Every sequence with queries needs at least one key. */
  kStarts: readonly number[];
  out?: Tensor;
}

/**
 * Packed variable-length attention: q [Nq, H·D] (f32, or f16 with shader-f16), k/v [Nk, H·D]; sequence i's
 * queries see only its keys. → [Nq, H·D] of q's dtype.
 */
export function attentionVarlen(gpu: Gpu, q: Tensor, k: Tensor, v: Tensor, opts: VarlenOptions): Tensor {
  const name = 'attentionVarlen';
  const shapes = `q ${shapeStr(q.shape)}, k ${shapeStr(k.shape)}, v ${shapeStr(v.shape)}`;
  if (q.rank !== 2 || k.rank !== 2 || v.rank !== 2) throw new ShapeError(name, `q, k, v must be [N, H·D] (${shapes})`);
  const g = geometry(name, q, k, v, opts.heads, opts.scale, gpu);
  if (v.shape[0] !== k.shape[0]) throw new ShapeError(name, `k and v rows differ (${shapes})`);
  const { qStarts, kStarts } = opts;
  const nSeq = qStarts.length - 1;
  const offsets = `qStarts [${qStarts.join(', ')}], kStarts [${kStarts.join(', ')}]`;
  const monotone = (a: readonly number[], end: number) =>
    a[0] === 0 && a[a.length - 1] === end && a.every((x, i) => Number.isInteger(x) && (i === 0 || x >= a[i - 1]));
  if (nSeq < 1 || kStarts.length !== qStarts.length || !monotone(qStarts, q.shape[0]) || !monotone(kStarts, k.shape[0])) {
    throw new ShapeError(name, `offsets must be non-decreasing integers from 0 to the row counts, B+1 each: ${offsets} (${shapes})`);
  }
  let maxQ = 0;
  for (let i = 0; i < nSeq; i++) {
    const nq = qStarts[i + 1] - qStarts[i];
    if (nq > 0 && kStarts[i + 1] === kStarts[i]) throw new ShapeError(name, `sequence ${i} has ${nq} queries but no keys: ${offsets}`);
    maxQ = Math.max(maxQ, nq);
  }
  const out = outputFor(name, gpu, q, opts.out);
  if (maxQ === 0) return out;
  const seq = gpu.upload(Int32Array.from([...qStarts, ...kStarts]), [2 * (nSeq + 1)], 'i32', 'attention-offsets');
  try {
    launch(gpu, g, { q, k, v, out, seq, flags: VARLEN, qLen: 0, kLen: 0, qBatch: 0, kBatch: 0, nSeq, maxQ, scale: opts.scale }, name);
  } finally {
    // Safe before the GPU has run: a pooled buffer is only reused by work recorded after this point.
    seq.dispose();
  }
  return out;
}

export interface MaskedOptions {
  heads: number;
  scale: number;
  /** Key j is visible to query i only if j ≤ i (top-left aligned, PyTorch's `is_causal`). */
  causal?: boolean;
  /** i32 [B, Lk]: 0 marks a padding key. */
  keyMask?: Tensor | null;
  /** f32 [H, Lq, Lk], added to the scaled scores (T5 relative position bias), shared across the batch. */
  bias?: Tensor | null;
  out?: Tensor;
}

/**
 * Masked attention (CLIP: causal + padding mask; T5: additive bias, scale 1): q [B, Lq, H·D], k/v
 * [B, Lk, H·D] f32 → [B, Lq, H·D]. Masked keys score finfo(f32).min (see the header).
 */
export function attentionMasked(gpu: Gpu, q: Tensor, k: Tensor, v: Tensor, opts: MaskedOptions): Tensor {
  const name = 'attentionMasked';
  const { keyMask = null, bias = null } = opts;
  const shapes =
    `q ${shapeStr(q.shape)}, k ${shapeStr(k.shape)}, v ${shapeStr(v.shape)}` +
    (keyMask ? `, keyMask ${shapeStr(keyMask.shape)} ${keyMask.dtype}` : '') +
    (bias ? `, bias ${shapeStr(bias.shape)} ${bias.dtype}` : '');
  if (q.rank !== 3 || k.rank !== 3 || v.rank !== 3) throw new ShapeError(name, `q, k, v must be [B, L, H·D] (${shapes})`);
  const g = geometry(name, q, k, v, opts.heads, opts.scale);
  const [b, lq] = q.shape;
  const lk = k.shape[1];
  if (k.shape[0] !== b || v.shape[0] !== b || v.shape[1] !== lk) throw new ShapeError(name, `batch or key lengths differ (${shapes})`);
  if (lk < 1) throw new ShapeError(name, `no keys (${shapes})`);
  if (keyMask && (keyMask.dtype !== 'i32' || keyMask.rank !== 2 || keyMask.shape[0] !== b || keyMask.shape[1] !== lk)) {
    throw new ShapeError(name, `keyMask must be i32 [${b}, ${lk}] (${shapes})`);
  }
  if (bias && (bias.dtype !== 'f32' || bias.rank !== 3 || bias.shape[0] !== g.heads || bias.shape[1] !== lq || bias.shape[2] !== lk)) {
    throw new ShapeError(name, `bias must be f32 [${g.heads}, ${lq}, ${lk}] (${shapes})`);
  }
  const out = outputFor(name, gpu, q, opts.out);
  if (b === 0 || lq === 0) return out;
  const flags = (opts.causal ? CAUSAL : 0) | (keyMask ? KEY_MASK : 0) | (bias ? BIAS : 0);
  launch(gpu, g, { q, k, v, out, keyMask, bias, flags, qLen: lq, kLen: lk, qBatch: lq, kBatch: lk, nSeq: b, maxQ: lq, scale: opts.scale }, name);
  return out;
}

// ---- float64 reference --------------------------------------------------------------------------

export interface AttentionRefOptions {
  heads: number;
  scale: number;
  /** Per sequence: first query row, query count, first key row, key count (rows of the flat [N, H·D]). */
  seqs: { q0: number; nq: number; k0: number; nk: number }[];
  causal?: boolean;
  /** Per sequence, per key: false = masked. */
  keyMask?: (s: number, j: number) => boolean;
  /** Additive bias for (head, query i, key j) of a sequence. */
  bias?: (h: number, i: number, j: number) => number;
}

/**
 * softmax(scale·q·kᵀ + bias, masked → finfo.min)·v in float64 over flat row-major arrays [rows, H·D].
 * Rows not covered by `seqs` stay 0.
 */
export function attentionRef(q: ArrayLike<number>, k: ArrayLike<number>, v: ArrayLike<number>, c: number, o: AttentionRefOptions): Float64Array {
  const d = c / o.heads;
  const out = new Float64Array(q.length);
  for (let s = 0; s < o.seqs.length; s++) {
    const { q0, nq, k0, nk } = o.seqs[s];
    const scores = new Float64Array(nk);
    for (let h = 0; h < o.heads; h++) {
      for (let i = 0; i < nq; i++) {
        const qo = (q0 + i) * c + h * d;
        let max = -Infinity;
        for (let j = 0; j < nk; j++) {
          const ko = (k0 + j) * c + h * d;
          let dot = 0;
          for (let x = 0; x < d; x++) dot += q[qo + x] * k[ko + x];
          let sc = o.scale * dot + (o.bias ? o.bias(h, i, j) : 0);
          if ((o.causal && j > i) || (o.keyMask && !o.keyMask(s, j))) sc = MASKED_SCORE;
          scores[j] = sc;
          max = Math.max(max, sc);
        }
        let sum = 0;
        for (let j = 0; j < nk; j++) sum += scores[j] = Math.exp(scores[j] - max);
        for (let j = 0; j < nk; j++) {
          const w = scores[j] / sum;
          const vo = (k0 + j) * c + h * d;
          for (let x = 0; x < d; x++) out[qo + x] += w * v[vo + x];
        }
      }
    }
  }
  return out;
}
