// Sampling from head logits on the GPU: classifier-free guidance on logits, temperature, top-k / top-p
// truncation and a draw with Philox uniforms, in one kernel; a float64 CPU twin of each.
//
// Logits come from two row sets a and b of [rows·T, …] tensors (they may be the same tensor): for image i
// and token t, the a-row is aBase + i·T + t and the b-row bBase + i·T + t. The mixed logit is
//   ℓ = wa·ℓa + wb·ℓb       (CFG: wa = cfg/τ, wb = (1 − cfg)/τ; one branch: wa = 1/τ, wb = 0)
// which is upstream's `cfg·(ℓc/τ) + (1 − cfg)·(ℓu/τ)` (the temperature divides before the mix; it is linear).
//
// Randomness: image i draws from the Philox stream of its own key (its seed) and the given `stream` word,
// element g of the stream for output element g of the image (the counter scheme of kernels/rng.ts, so
// `randomUniformCpu(n, { key: seed, stream })` gives the uniforms). An image's draws therefore never
// depend on the other images of the batch.
//
// sampleBits — bit heads (Infinity): logits [rows·T, 2·d], pair (2j, 2j+1) = (bit j is 0, bit j is 1);
//   out i32 [B, T, d]. Per bit, with p1 = σ(ℓ1 − ℓ0) and m = min(p1, 1 − p1) computed directly as
//   1/(1 + e^|ℓ1−ℓ0|) (no cancellation):
//     top-k = 1 (greedy): the larger logit (top-k ≥ 2 keeps both values of a bit: no-op)
//     top-p < 1: if m ≤ 1 − top_p the less likely value is removed → the likelier one (ties → 1)
//     else: bit = 1 with probability p1 (u < p1, u the element's uniform).
//   This is upstream's `sample_with_top_k_top_p_also_inplace_modifying_logits_` on a 2-way softmax
//   (sorted ascending, cumulative probability ≤ 1 − top_p removed, the largest never removed).
//
// sampleTokens — vocabulary heads (STAR): logits [rows·T, V]; out i32 [B, T]. One workgroup per token:
//   top-k keeps values ≥ the k-th largest (ties kept, like torch's `logits < kth` mask); top-p keeps a
//   value unless the kept mass of values ≤ it is ≤ 1 − top_p (the ascending-cumsum rule; tied values
//   share one decision); then the token is found by inverse CDF in index order with one uniform.
//   The k-th value and the top-p threshold are found by 32-step bisection over order-preserving u32
//   keys of the logits, so nothing is sorted and V is not bounded by workgroup memory.

import type { Gpu } from '../engine/device.js';
import { LimitError, ShapeError } from '../engine/errors.js';
import { Params } from '../engine/params.js';
import type { KernelSpec } from '../engine/pipelines.js';
import type { Tensor } from '../engine/tensor.js';
import { PHILOX_WGSL } from './rng.js';
import { ceilDiv, LINEAR_MAIN_ARGS, LINEAR_WORKGROUP, treeReduce } from './wgsl.js';

const WG = 256;
const TWO32 = 2 ** 32;

/** Where the two logit row sets of a draw come from and how they mix (see the file comment). */
export interface LogitMix {
  /** Tensor holding the a-rows; `b` defaults to the same tensor. */
  a: Tensor;
  b?: Tensor;
  /** Token row of image 0's first a-row / b-row. Default 0. */
  aBase?: number;
  bBase?: number;
  /** Mix weights: ℓ = wa·ℓa + wb·ℓb (CFG and temperature folded in; see `cfgWeights`). */
  wa: number;
  wb: number;
}

export interface DrawOptions {
  /** Images B and tokens per image T. */
  images: number;
  tokens: number;
  /** Philox key of every image (its seed): non-negative safe integers, one per image. */
  seeds: readonly number[];
  /** Counter word 2 of the draws (one independent stream per scale). */
  stream: number;
  /** Keep the k most likely values (0 = off). For bits only 1 matters (greedy). */
  topK?: number;
  /** Nucleus mass in (0, 1]; 1 (default) = off. */
  topP?: number;
  out?: Tensor;
}

/** CFG on logits with temperature τ: ℓ = cfg·ℓc/τ + (1 − cfg)·ℓu/τ → weights of the conditional (a) and unconditional (b) rows. */
export function cfgWeights(cfg: number, tau: number): { wa: number; wb: number } {
  return { wa: cfg / tau, wb: (1 - cfg) / tau };
}

function seedWords(kernel: string, seeds: readonly number[], images: number): Uint32Array {
  if (seeds.length !== images) throw new ShapeError(kernel, `${seeds.length} seeds for ${images} images`);
  const words = new Uint32Array(2 * images);
  seeds.forEach((s, i) => {
    if (!Number.isSafeInteger(s) || s < 0) throw new ShapeError(kernel, `seed ${s} must be a non-negative safe integer`);
    words[2 * i] = s % TWO32;
    words[2 * i + 1] = Math.floor(s / TWO32);
  });
  return words;
}

function checkCommon(kernel: string, gpu: Gpu, mix: LogitMix, o: DrawOptions, width: number): void {
  const { images: B, tokens: T } = o;
  if (!Number.isInteger(B) || B < 1 || !Number.isInteger(T) || T < 1) throw new ShapeError(kernel, `images ${B} and tokens ${T} must be positive integers`);
  if (!Number.isInteger(o.stream) || o.stream < 0 || o.stream >= TWO32) throw new ShapeError(kernel, `stream ${o.stream} must be a u32`);
  const topK = o.topK ?? 0;
  const topP = o.topP ?? 1;
  if (!Number.isInteger(topK) || topK < 0) throw new ShapeError(kernel, `top-k ${topK} must be a non-negative integer (0 = off)`);
  if (!(topP > 0 && topP <= 1)) throw new ShapeError(kernel, `top-p ${topP} must be in (0, 1] (1 = off)`);
  if (!Number.isFinite(mix.wa) || !Number.isFinite(mix.wb)) throw new ShapeError(kernel, `mix weights ${mix.wa}, ${mix.wb} must be finite`);
  for (const [name, t, base] of [['a', mix.a, mix.aBase ?? 0], ['b', mix.b ?? mix.a, mix.bBase ?? 0]] as const) {
    if (t.dtype !== 'f32' || t.shape[t.rank - 1] !== width) throw new ShapeError(kernel, `logits ${name} ${t} must be f32 [rows, ${width}]`);
    const rows = t.numel / width;
    if (!Number.isInteger(base) || base < 0 || base + B * T > rows) {
      throw new ShapeError(kernel, `logits ${name}: rows ${base}..${base + B * T} of ${t} (B ${B} × T ${T}) are out of range`);
    }
    if (t.bindingSize > gpu.limits.maxStorageBufferBindingSize) {
      throw new LimitError(`${kernel} logits ${name} ${t}`, 'maxStorageBufferBindingSize', t.bindingSize, gpu.limits.maxStorageBufferBindingSize);
    }
  }
}

// ---- bits ---------------------------------------------------------------------------------------

const BITS_SPEC: KernelSpec = {
  name: 'sample_bits',
  bindings: ['read', 'read', 'read', 'write'],
  code: /* wgsl */ `
struct P { n: u32, images: u32, bits: u32, tokens: u32, aBase: u32, bBase: u32, wa: f32, wb: f32, cut: f32, greedy: u32, stream: u32 }
@group(0) @binding(0) var<storage, read> la: array<f32>;
@group(0) @binding(1) var<storage, read> lb: array<f32>;
@group(0) @binding(2) var<storage, read> keys: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<i32>;
@group(0) @binding(4) var<uniform> p: P;
${PHILOX_WGSL}
${LINEAR_WORKGROUP}
// One bit from its two mixed logits and its uniform u.
fn draw(l0: f32, l1: f32, u: f32) -> i32 {
  let d = l1 - l0;
  if (p.greedy != 0u && d != 0.0) { return select(0, 1, d > 0.0); }
  // m: probability of the less likely value, computed without cancellation.
  let m = 1.0 / (1.0 + exp(abs(d)));
  if (m <= p.cut) { return select(0, 1, d >= 0.0); }
  // p1 = 1 − m when bit 1 is the likelier value, else m; u < p1 compared exactly (1 − u is exact).
  if (d > 0.0) { return select(0, 1, 1.0 - u > m); }
  return select(0, 1, u < m);
}
@compute @workgroup_size(${WG})
fn main(${LINEAR_MAIN_ARGS}) {
  // One invocation per Philox block (4 consecutive bits) of one image.
  let blocks = (p.n + 3u) / 4u;
  let id = linear_workgroup(wid, nwg) * ${WG}u + li;
  if (id >= blocks * p.images) { return; }
  let img = id / blocks;
  let blk = id % blocks;
  let x = philox(vec4<u32>(blk, 0u, p.stream, 0u), vec2<u32>(keys[2u * img], keys[2u * img + 1u]));
  let w = 2u * p.bits;
  for (var lane = 0u; lane < 4u; lane++) {
    let g = 4u * blk + lane;
    if (g >= p.n) { break; }
    let t = g / p.bits;
    let j = g % p.bits;
    let ra = (p.aBase + img * p.tokens + t) * w + 2u * j;
    let rb = (p.bBase + img * p.tokens + t) * w + 2u * j;
    let l0 = p.wa * la[ra] + p.wb * lb[rb];
    let l1 = p.wa * la[ra + 1u] + p.wb * lb[rb + 1u];
    out[img * p.n + g] = draw(l0, l1, uniform01(x[lane]));
  }
}`,
};

export interface SampleBitsOptions extends DrawOptions {
  /** Bits per token d (logits are [rows·T, 2d]). */
  bits: number;
}

/** Samples bits: → i32 [B, T, d] of 0/1. See the file comment for the rule and the random stream. */
export function sampleBits(gpu: Gpu, mix: LogitMix, o: SampleBitsOptions): Tensor {
  const name = 'sample_bits';
  const d = o.bits;
  if (!Number.isInteger(d) || d < 1) throw new ShapeError(name, `bits per token ${d} must be a positive integer`);
  checkCommon(name, gpu, mix, o, 2 * d);
  const { images: B, tokens: T } = o;
  const n = T * d;
  const out = o.out ?? gpu.empty([B, T, d], 'i32', name);
  if (out.dtype !== 'i32' || out.numel !== B * n) throw new ShapeError(name, `out ${out} must be i32 with ${B * n} elements`);
  if (out.buffer === mix.a.buffer || out.buffer === (mix.b ?? mix.a).buffer) throw new ShapeError(name, 'out shares a buffer with the logits');
  const keys = gpu.upload(seedWords(name, o.seeds, B), [B, 2], 'u32', 'sample-keys');
  const topP = o.topP ?? 1;
  const params = new Params()
    .u32(n, B, d, T, mix.aBase ?? 0, mix.bBase ?? 0)
    .f32(mix.wa, mix.wb, topP < 1 ? 1 - topP : -1)
    .u32(o.topK === 1 ? 1 : 0, o.stream);
  gpu.run(BITS_SPEC, [mix.a, mix.b ?? mix.a, keys, out], params, ceilDiv(B * ceilDiv(n, 4), WG));
  keys.dispose();
  return out;
}

/** One bit on the CPU in float64, given its two mixed logits and its uniform (the rule of sampleBits). */
export function sampleBitRef(l0: number, l1: number, u: number, topK = 0, topP = 1): number {
  const d = l1 - l0;
  if (topK === 1 && d !== 0) return d > 0 ? 1 : 0;
  const m = 1 / (1 + Math.exp(Math.abs(d)));
  if (topP < 1 && m <= 1 - topP) return d >= 0 ? 1 : 0;
  return d > 0 ? (1 - u > m ? 1 : 0) : u < m ? 1 : 0;
}

/**
 * Probability that sampleBits gives 1 for a bit with mixed logits (l0, l1), in float64 (after top-k/top-p).
 * The distribution the χ² test checks against.
 */
export function bitProbabilityRef(l0: number, l1: number, topK = 0, topP = 1): number {
  const d = l1 - l0;
  if (topK === 1 && d !== 0) return d > 0 ? 1 : 0;
  const m = 1 / (1 + Math.exp(Math.abs(d)));
  if (topP < 1 && m <= 1 - topP) return d >= 0 ? 1 : 0;
  return d > 0 ? 1 - m : m;
}

export interface SampleRefInput {
  /** Host logits of the a and b tensors (may be the same array) and their row layout. */
  a: ArrayLike<number>;
  b?: ArrayLike<number>;
  aBase?: number;
  bBase?: number;
  wa: number;
  wb: number;
}

/** The mixed logit of image i, token t, column c (f32 products as the GPU forms them, summed in float64). */
function mixedRef(x: SampleRefInput, width: number, T: number, i: number, t: number, c: number): number {
  const b = x.b ?? x.a;
  const ra = ((x.aBase ?? 0) + i * T + t) * width + c;
  const rb = ((x.bBase ?? 0) + i * T + t) * width + c;
  return x.wa * x.a[ra] + x.wb * b[rb];
}

/** CPU twin of sampleBits: float64 arithmetic on the same uniforms (Int32Array [B, T, d]). */
export function sampleBitsRef(x: SampleRefInput, o: Omit<SampleBitsOptions, 'out'>, uniforms: (image: number) => ArrayLike<number>): Int32Array {
  const { images: B, tokens: T, bits: d } = o;
  const out = new Int32Array(B * T * d);
  for (let i = 0; i < B; i++) {
    const u = uniforms(i);
    for (let t = 0; t < T; t++) {
      for (let j = 0; j < d; j++) {
        const l0 = mixedRef(x, 2 * d, T, i, t, 2 * j);
        const l1 = mixedRef(x, 2 * d, T, i, t, 2 * j + 1);
        out[(i * T + t) * d + j] = sampleBitRef(l0, l1, u[t * d + j], o.topK ?? 0, o.topP ?? 1);
      }
    }
  }
  return out;
}

// ---- vocabulary ---------------------------------------------------------------------------------

// Threads per token: wide for real vocabularies, narrow for small ones (barriers dominate there).
const tokenSpecs = new Map<number, KernelSpec>();
function tokensSpec(wg: number): KernelSpec {
  let spec = tokenSpecs.get(wg);
  if (spec) return spec;
  spec = {
    name: `sample_tokens_${wg}`,
    bindings: ['read', 'read', 'read', 'write'],
    code: /* wgsl */ `
struct P { images: u32, tokens: u32, V: u32, aBase: u32, bBase: u32, wa: f32, wb: f32, topK: u32, cut: f32, stream: u32 }
@group(0) @binding(0) var<storage, read> la: array<f32>;
@group(0) @binding(1) var<storage, read> lb: array<f32>;
@group(0) @binding(2) var<storage, read> keys: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<i32>;
@group(0) @binding(4) var<uniform> p: P;
${PHILOX_WGSL}
${LINEAR_WORKGROUP}
var<workgroup> sf: array<f32, ${wg}>;
var<workgroup> su: array<u32, ${wg}>;
var<private> rowA: u32;
var<private> rowB: u32;

fn logit(i: u32) -> f32 { return p.wa * la[rowA + i] + p.wb * lb[rowB + i]; }
// Order-preserving u32 of an f32 (larger float → larger key).
fn order_key(x: f32) -> u32 {
  let b = bitcast<u32>(x);
  return select(b | 0x80000000u, ~b, (b & 0x80000000u) != 0u);
}
${treeReduce(wg, 'f32', (a, b) => `${a} + ${b}`, { name: 'sum_f', array: 'sf', declared: true })}
${treeReduce(wg, 'u32', (a, b) => `${a} + ${b}`, { name: 'sum_u', array: 'su', declared: true })}
${treeReduce(wg, 'f32', (a, b) => `max(${a}, ${b})`, { name: 'max_f', array: 'sf', declared: true })}

@compute @workgroup_size(${wg})
fn main(${LINEAR_MAIN_ARGS}) {
  // One workgroup per (image, token); every branch below is uniform across the workgroup.
  let id = linear_workgroup(wid, nwg);
  if (id >= p.images * p.tokens) { return; }
  let img = id / p.tokens;
  let t = id % p.tokens;
  rowA = (p.aBase + img * p.tokens + t) * p.V;
  rowB = (p.bBase + img * p.tokens + t) * p.V;
  // Thread li owns the contiguous index range [i0, i1) (contiguity makes the inverse CDF a prefix scan).
  let per = (p.V + ${wg - 1}u) / ${wg}u;
  let i0 = min(li * per, p.V);
  let i1 = min(i0 + per, p.V);

  var mx = -3.4028234663852886e38;
  for (var i = i0; i < i1; i++) { mx = max(mx, logit(i)); }
  mx = max_f(li, mx);

  // Top-k: the largest key t with count(key ≥ t) ≥ k is the k-th largest key.
  var lowKey = 0u;
  if (p.topK > 0u && p.topK < p.V) {
    for (var bit = 31i; bit >= 0i; bit--) {
      let cand = lowKey | (1u << u32(bit));
      var c = 0u;
      for (var i = i0; i < i1; i++) { c += select(0u, 1u, order_key(logit(i)) >= cand); }
      if (sum_u(li, c) >= p.topK) { lowKey = cand; }
    }
  }
  var z = 0.0;
  for (var i = i0; i < i1; i++) {
    let l = logit(i);
    if (order_key(l) >= lowKey) { z += exp(l - mx); }
  }
  z = sum_f(li, z);

  // Top-p: drop values whose kept mass of values ≤ them is ≤ cut·z: the largest such key, then keep keys above it.
  if (p.cut > 0.0) {
    var drop = 0u;
    for (var bit = 31i; bit >= 0i; bit--) {
      let cand = drop | (1u << u32(bit));
      var m = 0.0;
      for (var i = i0; i < i1; i++) {
        let l = logit(i);
        let k = order_key(l);
        if (k >= lowKey && k <= cand) { m += exp(l - mx); }
      }
      if (sum_f(li, m) <= p.cut * z) { drop = cand; }
    }
    // Keys ≤ drop go (drop is 0 when nothing goes: every finite logit's key is above 0).
    lowKey = max(lowKey, drop + 1u);
    var z2 = 0.0;
    for (var i = i0; i < i1; i++) {
      let l = logit(i);
      if (order_key(l) >= lowKey) { z2 += exp(l - mx); }
    }
    z = sum_f(li, z2);
  }

  // Inverse CDF with one uniform: thread li owns the mass interval [incl. prefix of li − 1, incl. prefix of li),
  // so the intervals tile [0, total) exactly; the owner walks its index range.
  var mine = 0.0;
  var last = 0u;
  var hasLast = false;
  for (var i = i0; i < i1; i++) {
    let l = logit(i);
    if (order_key(l) >= lowKey) { mine += exp(l - mx); last = i; hasLast = true; }
  }
  workgroupBarrier();
  sf[li] = mine;
  for (var s = 1u; s < ${wg}u; s = s << 1u) {
    workgroupBarrier();
    let v = select(0.0, sf[max(li, s) - s], li >= s);
    workgroupBarrier();
    sf[li] = sf[li] + v;
  }
  workgroupBarrier();
  let after = sf[li];
  let before = select(0.0, sf[max(li, 1u) - 1u], li > 0u);
  let total = sf[${wg - 1}u];
  // The last kept index overall: the answer when rounding puts the target at the total.
  workgroupBarrier();
  su[li] = select(0u, last + 1u, hasLast);
  for (var s = ${wg / 2}u; s > 0u; s = s >> 1u) {
    workgroupBarrier();
    if (li < s) { su[li] = max(su[li], su[li + s]); }
  }
  workgroupBarrier();
  let lastKept = su[0] - 1u;
  workgroupBarrier();
  if (li == 0u) { su[0] = lastKept; }
  workgroupBarrier();
  let x = philox(vec4<u32>(t >> 2u, 0u, p.stream, 0u), vec2<u32>(keys[2u * img], keys[2u * img + 1u]));
  let goal = uniform01(x[t & 3u]) * total;
  if (hasLast && goal >= before && goal < after) {
    var acc = before;
    var pick = last;
    for (var i = i0; i < i1; i++) {
      let l = logit(i);
      if (order_key(l) >= lowKey) {
        acc += exp(l - mx);
        if (goal < acc) { pick = i; break; }
      }
    }
    su[0] = pick;
  }
  workgroupBarrier();
  if (li == 0u) { out[id] = i32(su[0]); }
}`,
  };
  tokenSpecs.set(wg, spec);
  return spec;
}

export interface SampleTokensOptions extends DrawOptions {
  /** Vocabulary size V (logits are [rows·T, V]). */
  vocab: number;
}

/** Samples one token per (image, token) from vocabulary logits: → i32 [B, T]. See the file comment. */
export function sampleTokens(gpu: Gpu, mix: LogitMix, o: SampleTokensOptions): Tensor {
  const name = 'sample_tokens';
  const V = o.vocab;
  if (!Number.isInteger(V) || V < 1) throw new ShapeError(name, `vocabulary size ${V} must be a positive integer`);
  checkCommon(name, gpu, mix, o, V);
  const { images: B, tokens: T } = o;
  const out = o.out ?? gpu.empty([B, T], 'i32', name);
  if (out.dtype !== 'i32' || out.numel !== B * T) throw new ShapeError(name, `out ${out} must be i32 with ${B * T} elements`);
  if (out.buffer === mix.a.buffer || out.buffer === (mix.b ?? mix.a).buffer) throw new ShapeError(name, 'out shares a buffer with the logits');
  const keys = gpu.upload(seedWords(name, o.seeds, B), [B, 2], 'u32', 'sample-keys');
  const topP = o.topP ?? 1;
  const params = new Params()
    .u32(B, T, V, mix.aBase ?? 0, mix.bBase ?? 0)
    .f32(mix.wa, mix.wb)
    .u32(o.topK ?? 0)
    .f32(topP < 1 ? 1 - topP : -1)
    .u32(o.stream);
  gpu.run(tokensSpec(V >= 4096 ? 256 : 64), [mix.a, mix.b ?? mix.a, keys, out], params, B * T);
  keys.dispose();
  return out;
}

/**
 * The kept distribution of one token in float64, exactly as upstream builds it (top-k mask with ties kept,
 * then top-p on the ascending sort with the largest never removed): probabilities over the V values.
 */
export function tokenDistributionRef(logits: ArrayLike<number>, topK = 0, topP = 1): Float64Array {
  const V = logits.length;
  const keep = new Array<boolean>(V).fill(true);
  if (topK > 0 && topK < V) {
    const kth = Array.from(logits).sort((x, y) => y - x)[topK - 1];
    for (let i = 0; i < V; i++) keep[i] = logits[i] >= kth;
  }
  let mx = -Infinity;
  for (let i = 0; i < V; i++) if (keep[i]) mx = Math.max(mx, logits[i]);
  const w = Float64Array.from({ length: V }, (_, i) => (keep[i] ? Math.exp(logits[i] - mx) : 0));
  if (topP < 1) {
    const z = w.reduce((s, v) => s + v, 0);
    const order = Array.from({ length: V }, (_, i) => i).filter((i) => keep[i]).sort((x, y) => logits[x] - logits[y]);
    let cum = 0;
    const cut = new Set<number>();
    // Tied values share one decision (the GPU's threshold rule): a run of equal logits is judged by its end.
    for (let r = 0; r < order.length; ) {
      let e = r;
      let mass = 0;
      while (e < order.length && logits[order[e]] === logits[order[r]]) mass += w[order[e++]];
      cum += mass;
      if (cum / z <= 1 - topP && e < order.length) for (let q = r; q < e; q++) cut.add(order[q]);
      r = e;
    }
    for (const i of cut) w[i] = 0;
  }
  const z = w.reduce((s, v) => s + v, 0);
  return w.map((v) => v / z);
}

/** CPU twin of sampleTokens for one token: inverse CDF of `tokenDistributionRef` in index order at uniform u. */
export function sampleTokenRef(logits: ArrayLike<number>, u: number, topK = 0, topP = 1): number {
  const prob = tokenDistributionRef(logits, topK, topP);
  let acc = 0;
  let last = -1;
  for (let i = 0; i < prob.length; i++) {
    if (prob[i] === 0) continue;
    acc += prob[i];
    last = i;
    if (u < acc) return i;
  }
  return last;
}

/** Mixed logits of one (image, token) row on the host (for the CPU twins). */
export function mixedRowRef(x: SampleRefInput, width: number, tokens: number, image: number, token: number): Float64Array {
  return Float64Array.from({ length: width }, (_, c) => mixedRef(x, width, tokens, image, token, c));
}
