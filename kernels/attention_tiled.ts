// The GPU kernel of the attention family (FlashAttention-2's loop structure on SIMT lanes, without tensor
// cores), run by `attention` and `attentionVarlen` when the device is tuned for GPUs (`gpu.tuning === 'gpu'`),
// has subgroups, and the head dim is 32, 64, 128 or 256. The portable kernel in attention.ts runs everything
// else (CPU adapters, masks and biases, other head dims).
//
// Why a second kernel: the portable one gives each query one invocation holding q and the accumulator in
// runtime-indexed private arrays (2·D floats). On a GPU those live in local memory, not registers, and the
// keys are re-read from global memory by every workgroup's lanes. Here:
// - TPQ = D/32 adjacent lanes share a query, each owning 32 of its dims (8 vec4s of q and of the accumulator,
//   in registers: all loops over them have constant bounds). Lane `part` owns vec4s part, part + TPQ, … of
//   the head, so the TPQ lanes of a query read consecutive vec4s of a key (no bank conflicts) and the
//   queries of a subgroup read the same ones (broadcast).
// - A workgroup is 256 lanes = 256/TPQ queries of one head (64 at D = 128). Keys and values stream through
//   workgroup memory in blocks of BKV rows, loaded once per workgroup with coalesced vec4 loads and widened
//   to f32 there (f16/bf16 caches), BKV·D·4·2 = 16 KiB per block (the WebGPU default workgroup-memory limit).
// - A key's score is the TPQ lanes' partial dot products summed with subgroupShuffleXor (log2 TPQ steps).
//   The lanes of a query are adjacent invocations, so they share a subgroup when subgroups are aligned runs of
//   consecutive local_invocation_index values of ≥ TPQ lanes: what NVIDIA, AMD and Intel do for 1-D workgroups,
//   though neither WebGPU nor Vulkan promises it (the tests compare this kernel with a float64 reference).
// - Online softmax per block: scores of the block in registers, one rescale of the accumulator per block,
//   f32 statistics, one division at the end (the same arithmetic as the portable kernel).
// Lanes whose query is past the end keep running (barriers and shuffles need every lane) and store nothing.
// Not yet measured on a GPU; the next steps there are split-KV for few-query scales (one query per
// workgroup wastes 63 of 64 lanes at Infinity's first scales) and subgroup-matrix (tensor-core) products.

import type { KernelSpec } from '../engine/pipelines.js';
import { attentionPrelude } from './attention_wgsl.js';

/** Head dims this kernel handles: TPQ = D/32 lanes per query must be a power of two ≤ 8. */
export const TILED_HEAD_DIMS = [32, 64, 128, 256] as const;
const LANES = 256;
const DIMS_PER_LANE = 32;
/** Bytes of workgroup memory for one block of keys and values (f32). */
const BLOCK_BYTES = 16384;

export interface TiledAttentionVariant {
  kv: 'f32' | 'f16' | 'bf16';
  io: 'f32' | 'f16';
  d: (typeof TILED_HEAD_DIMS)[number];
}

/** Geometry of a variant: lanes per query, queries per workgroup, keys per block. */
export function tiledAttentionShape(d: number): { tpq: number; bq: number; bkv: number } {
  const tpq = d / DIMS_PER_LANE;
  return { tpq, bq: LANES / tpq, bkv: Math.min(32, BLOCK_BYTES / (2 * 4 * d)) };
}


const specs = new Map<string, KernelSpec>();

/** The kernel for one variant. Params and bindings are the portable kernel's (attention.ts `launch`). */
export function tiledAttentionSpec(v: TiledAttentionVariant): KernelSpec {
  const key = `${v.kv}_d${v.d}${v.io === 'f16' ? '_f16io' : ''}`;
  const hit = specs.get(key);
  if (hit) return hit;
  const { tpq, bq, bkv } = tiledAttentionShape(v.d);
  const d4 = v.d / 4;
  const own = DIMS_PER_LANE / 4; // vec4s per lane
  const half = v.io === 'f16';
  const code = /* wgsl */ `${attentionPrelude(v.io, v.kv, ['subgroups'])}
// tiled attention: k/v ${v.kv}, head dim ${v.d}, ${tpq} lanes per query, ${bq} queries per workgroup, ${bkv} keys
// per block; no masks or bias (key_mask and bias are bound but unused)
const D4: u32 = ${d4}u;
const TPQ: u32 = ${tpq}u;
const OWN: u32 = ${own}u;
const BQ: u32 = ${bq}u;
const BKV: u32 = ${bkv}u;

var<workgroup> Ks: array<vec4<f32>, ${bkv * d4}>;
var<workgroup> Vs: array<vec4<f32>, ${bkv * d4}>;

@compute @workgroup_size(${LANES})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let s = wid.z;
  let h = wid.y;
  let sq = sequence(s);
  let q0 = sq.x;
  let nq = sq.y;
  let k0 = sq.z;
  let nk = sq.w;
  // A workgroup whose queries all lie past this sequence's end (varlen: shorter sequences) has nothing to do;
  // the test is the same for every lane, so the barriers below stay in uniform control flow.
  if (wid.x * BQ >= nq) { return; }
  let part = li % TPQ;
  let qi = wid.x * BQ + li / TPQ;
  let live = qi < nq;
  let hoff = h * D4;
  // This lane's vec4s of the query row: hoff + part + TPQ·i, i < OWN. Idle lanes read the last query.
  let qb = (q0 + min(qi, max(nq, 1u) - 1u)) * p.c4 + hoff + part;
  var qv: array<vec4<f32>, ${own}>;
  var acc: array<vec4<f32>, ${own}>;
  for (var i = 0u; i < OWN; i++) {
    qv[i] = vec4<f32>(q[qb + TPQ * i]) * p.scale;
    acc[i] = vec4<f32>(0.0);
  }
  var m = MASKED;
  var l = 0.0;
  for (var t0 = 0u; t0 < nk; t0 += BKV) {
    let n = min(BKV, nk - t0);
    // Stage keys t0 .. t0 + BKV (the last key repeats past the end; its weight is forced to 0).
    workgroupBarrier();
    for (var e = li; e < BKV * D4; e += ${LANES}u) {
      let row = (k0 + min(t0 + e / D4, nk - 1u)) * p.c4 + hoff + e % D4;
      Ks[e] = load_k(row);
      Vs[e] = load_v(row);
    }
    workgroupBarrier();
    var sc: array<f32, ${bkv}>;
    var mt = m;
    for (var j = 0u; j < BKV; j++) {
      var dp = 0.0;
      for (var i = 0u; i < OWN; i++) { dp += dot(qv[i], Ks[j * D4 + part + TPQ * i]); }
      for (var x = 1u; x < TPQ; x <<= 1u) { dp += subgroupShuffleXor(dp, x); }
      sc[j] = dp;
      if (j < n) { mt = max(mt, dp); }
    }
    let corr = exp(m - mt);
    var psum = 0.0;
    for (var j = 0u; j < BKV; j++) {
      let w = select(0.0, exp(sc[j] - mt), j < n);
      sc[j] = w;
      psum += w;
    }
    l = l * corr + psum;
    m = mt;
    for (var i = 0u; i < OWN; i++) { acc[i] *= corr; }
    for (var j = 0u; j < BKV; j++) {
      let w = vec4<f32>(sc[j]);
      for (var i = 0u; i < OWN; i++) { acc[i] = fma(w, Vs[j * D4 + part + TPQ * i], acc[i]); }
    }
  }
  if (live) {
    let inv = 1.0 / l;
    for (var i = 0u; i < OWN; i++) { o[qb + TPQ * i] = ${half ? 'vec4<f16>(acc[i] * inv)' : 'acc[i] * inv'}; }
  }
}`;
  const spec: KernelSpec = { name: `attention_tiled_${key}`, code, bindings: ['read', 'read', 'read', 'read', 'read', 'read', 'write'] };
  specs.set(key, spec);
  return spec;
}
