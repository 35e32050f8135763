// WGSL shared by the two attention kernels (attention.ts: portable, one invocation per query; attention_tiled.ts:
// GPUs, lanes sharing a query): the params struct, bindings, k/v loaders and the per-sequence bounds. Both
// take the same params and bindings, so one launcher runs either.

import { vec4ArrayElement, vec4Loader } from './wgsl.js';

/** Largest finite f32, negated: the score of a masked key (torch.finfo(float32).min). */
export const MASKED_SCORE = -3.4028234663852886e38;

/** Params flag: packed sequences with offsets in `seq` (attentionVarlen). */
export const VARLEN_FLAG = 1;

/**
 * Everything above `main` that both kernels share: enables (f16 when q/o are f16), params, bindings,
 * `MASKED`, `load_k`/`load_v` (vec4 i of k/v as f32), and `sequence(s) -> (q0, nq, k0, nk)`: sequence s's first
 * query row and query count, first key row and key count (rows of the flat [rows, H·D] views).
 */
export function attentionPrelude(io: 'f32' | 'f16', kv: 'f32' | 'f16' | 'bf16', enables: string[] = []): string {
  const en = [...enables, ...(io === 'f16' ? ['f16'] : [])].map((e) => `enable ${e};`).join('');
  const kvElem = vec4ArrayElement(kv);
  return /* wgsl */ `${en}
struct P { d4: u32, c4: u32, q_len: u32, k_len: u32, q_batch: u32, k_batch: u32, n_seq: u32, flags: u32, scale: f32 }
@group(0) @binding(0) var<storage, read> q: array<vec4<${io}>>;
@group(0) @binding(1) var<storage, read> k: array<${kvElem}>;
@group(0) @binding(2) var<storage, read> v: array<${kvElem}>;
@group(0) @binding(3) var<storage, read> seq: array<i32>; // varlen: qStarts then kStarts
@group(0) @binding(4) var<storage, read> key_mask: array<i32>;
@group(0) @binding(5) var<storage, read> bias: array<f32>;
@group(0) @binding(6) var<storage, read_write> o: array<vec4<${io}>>;
@group(0) @binding(7) var<uniform> p: P;

const MASKED: f32 = -3.4028234663852886e38f; // MASKED_SCORE

${vec4Loader('k', kv)}
${vec4Loader('v', kv)}

fn sequence(s: u32) -> vec4<u32> {
  if ((p.flags & ${VARLEN_FLAG}u) != 0u) {
    let q0 = u32(seq[s]);
    let k0 = u32(seq[p.n_seq + 1u + s]);
    return vec4<u32>(q0, u32(seq[s + 1u]) - q0, k0, u32(seq[p.n_seq + 2u + s]) - k0);
  }
  return vec4<u32>(s * p.q_batch, p.q_len, s * p.k_batch, p.k_len);
}`;
}
