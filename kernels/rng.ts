// Counter-based random numbers: Philox-4×32-10 (Salmon, Moraes, Dror & Shaw, "Parallel random numbers:
// as easy as 1, 2, 3", SC 2011), on the GPU and on the CPU with identical bits.
//
// Counter scheme. Element g of a stream (g = offset + i for output i) is lane g mod 4 of the Philox block
//   counter = (b mod 2³², ⌊b / 2³²⌋, stream, 0) with b = ⌊g / 4⌋,   key = (k0, k1).
// So any slice of a stream can be generated on its own (offset k gives the stream shifted by k), and the
// `stream` word gives 2³² independent streams per key.
//   randomU32:     the raw lane.
//   randomUniform: (u32 >> 8) · 2⁻²⁴ — exact in f32, in [0, 1), never 1.0. GPU and CPU bit-identical.
//   randomNormal:  Box–Muller on the lane pairs (0, 1) and (2, 3) of a block: with a, b the pair's words,
//                  u1 = ((a >> 8) + 1) · 2⁻²⁴ ∈ (0, 1] (so log never sees 0), u2 = (b >> 8) · 2⁻²⁴,
//                  r = √(−2 ln u1); lane 0/2 = r·cos 2πu2, lane 1/3 = r·sin 2πu2; then mean + std·z.
//                  The GPU evaluates ln and sin/cos in f32 with its own argument reduction and
//                  polynomials (WGSL's builtins only promise ~2⁻¹¹ absolute error for cos, and lose all
//                  relative accuracy of ln near 1); the CPU twin uses float64 Math.log/sin/cos. They agree
//                  to ≤ 1e-6 relative in z, not bit for bit.

import type { Gpu } from '../engine/device.js';
import { ShapeError } from '../engine/errors.js';
import { Params } from '../engine/params.js';
import type { KernelSpec } from '../engine/pipelines.js';
import type { Tensor } from '../engine/tensor.js';
import { elementWindow, windowElements } from './layout.js';
import { ceilDiv, LINEAR_MAIN_ARGS, LINEAR_WORKGROUP } from './wgsl.js';

const WG = 256;
const M0 = 0xd2511f53;
const M1 = 0xcd9e8d57;
const W0 = 0x9e3779b9;
const W1 = 0xbb67ae85;
const TWO32 = 2 ** 32;

/** A Philox key: a non-negative safe integer (split into low and high 32 bits) or the two words. */
export type RngKey = number | readonly [number, number];

export interface RandomOptions {
  key: RngKey;
  /** Index of the first element within the stream (a non-negative safe integer). Default 0. */
  offset?: number;
  /** Counter word 2: selects one of 2³² independent streams per key. Default 0. */
  stream?: number;
  /** Output tensor with n elements (f32, or u32 for randomU32) instead of a new one. */
  out?: Tensor;
}

export interface NormalOptions extends RandomOptions {
  mean?: number;
  std?: number;
}

// ---- CPU ---------------------------------------------------------------------------------------

/** High 32 bits of the 64-bit product a·b (u32 operands), from 16-bit halves: every partial product is < 2³². */
function mulhi(a: number, b: number): number {
  const a0 = a & 0xffff;
  const a1 = a >>> 16;
  const b0 = b & 0xffff;
  const b1 = b >>> 16;
  const p01 = a0 * b1;
  const p10 = a1 * b0;
  const mid = ((a0 * b0) >>> 16) + (p01 & 0xffff) + (p10 & 0xffff);
  return (a1 * b1 + (p01 >>> 16) + (p10 >>> 16) + (mid >>> 16)) >>> 0;
}

/** Philox-4×32-10 of one counter block. Returns four u32. */
export function philox4x32(
  counter: readonly [number, number, number, number],
  key: readonly [number, number],
): [number, number, number, number] {
  let [c0, c1, c2, c3] = counter.map((v) => v >>> 0);
  let [k0, k1] = key.map((v) => v >>> 0);
  for (let round = 0; round < 10; round++) {
    const hi0 = mulhi(M0, c0);
    const lo0 = Math.imul(M0, c0) >>> 0;
    const hi1 = mulhi(M1, c2);
    const lo1 = Math.imul(M1, c2) >>> 0;
    [c0, c1, c2, c3] = [(hi1 ^ c1 ^ k0) >>> 0, lo1, (hi0 ^ c3 ^ k1) >>> 0, lo0];
    k0 = (k0 + W0) >>> 0;
    k1 = (k1 + W1) >>> 0;
  }
  return [c0, c1, c2, c3];
}

function keyWords(kernel: string, key: RngKey): [number, number] {
  const words: [number, number] = typeof key === 'number' ? [key % TWO32, Math.floor(key / TWO32)] : [key[0], key[1]];
  const ok = typeof key === 'number' ? Number.isSafeInteger(key) && key >= 0 : words.every((w) => Number.isInteger(w) && w >= 0 && w < TWO32);
  if (!ok) throw new ShapeError(kernel, `key ${JSON.stringify(key)} must be a non-negative safe integer or two u32 words`);
  return words;
}

interface Stream {
  key: [number, number];
  offset: number;
  stream: number;
}

function streamOf(kernel: string, n: number, opts: RandomOptions): Stream {
  const offset = opts.offset ?? 0;
  const stream = opts.stream ?? 0;
  if (!Number.isInteger(n) || n < 0) throw new ShapeError(kernel, `n ${n} must be a non-negative integer`);
  if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(offset + n)) {
    throw new ShapeError(kernel, `offset ${offset} (+ n ${n}) must be a non-negative safe integer`);
  }
  if (!Number.isInteger(stream) || stream < 0 || stream >= TWO32) throw new ShapeError(kernel, `stream ${stream} must be a u32`);
  return { key: keyWords(kernel, opts.key), offset, stream };
}

/** Calls visit(i, block) for the Philox block of every element i of [offset, offset + n). */
function forEachBlock(n: number, s: Stream, visit: (i: number, lane: number, block: number[]) => void): void {
  let cached = -1;
  let block: number[] = [];
  for (let i = 0; i < n; i++) {
    const g = s.offset + i;
    const b = Math.floor(g / 4);
    if (b !== cached) {
      block = philox4x32([b % TWO32, Math.floor(b / TWO32), s.stream, 0], s.key);
      cached = b;
    }
    visit(i, g % 4, block);
  }
}

/** The raw u32 stream on the CPU (bit-identical to randomU32). */
export function randomU32Cpu(n: number, opts: RandomOptions): Uint32Array {
  const out = new Uint32Array(n);
  forEachBlock(n, streamOf('randomU32Cpu', n, opts), (i, lane, block) => (out[i] = block[lane]));
  return out;
}

/** Uniforms in [0, 1) on the CPU (bit-identical to randomUniform). */
export function randomUniformCpu(n: number, opts: RandomOptions): Float32Array {
  const out = new Float32Array(n);
  forEachBlock(n, streamOf('randomUniformCpu', n, opts), (i, lane, block) => (out[i] = (block[lane] >>> 8) * 2 ** -24));
  return out;
}

/** sin and cos of 2π·k·2⁻²⁴ (k < 2²⁴) with the GPU's exact reduction to an angle ≤ π/4. */
function sincos2piCpu(k: number): [number, number] {
  const q = k >>> 22;
  const f = k & 0x3fffff;
  const swap = f > 0x200000;
  const a = ((swap ? 0x400000 - f : f) / 0x400000) * (Math.PI / 2);
  let [s, c] = swap ? [Math.cos(a), Math.sin(a)] : [Math.sin(a), Math.cos(a)];
  for (let r = 0; r < q; r++) [s, c] = [c, -s]; // each quadrant adds π/2
  return [s, c];
}

/** Normals on the CPU in float64, rounded to f32 (within 1e-6 relative of randomNormal's z; see the header). */
export function randomNormalCpu(n: number, opts: NormalOptions): Float32Array {
  const mean = opts.mean ?? 0;
  const std = opts.std ?? 1;
  const out = new Float32Array(n);
  forEachBlock(n, streamOf('randomNormalCpu', n, opts), (i, lane, block) => {
    const pair = lane & 2;
    const r = Math.sqrt(-2 * Math.log(((block[pair] >>> 8) + 1) * 2 ** -24));
    const [s, c] = sincos2piCpu(block[pair + 1] >>> 8);
    out[i] = mean + std * r * (lane & 1 ? s : c);
  });
  return out;
}

// ---- GPU ---------------------------------------------------------------------------------------

const lit = (x: number) => x.toPrecision(17);
const fact = (n: number): number => (n <= 1 ? 1 : n * fact(n - 1));
/** Taylor coefficients of sin(π/2·t) (odd powers) and cos(π/2·t) (even powers) in t. */
const SIN = [1, 3, 5, 7, 9, 11].map((p, k) => lit((-1) ** k * (Math.PI / 2) ** p / fact(p)));
const COS = [0, 2, 4, 6, 8, 10].map((p, k) => lit((-1) ** k * (Math.PI / 2) ** p / fact(p)));

/** WGSL `philox(counter, key)`, its `mulhilo` and `uniform01(word)`, shared with kernels that draw inline (sample.ts). */
export const PHILOX_WGSL = /* wgsl */ `
// (hi, lo) of the 64-bit product a·b from 16-bit halves (WGSL has no 32×32→64 multiply).
fn mulhilo(a: u32, b: u32) -> vec2<u32> {
  let a0 = a & 0xffffu; let a1 = a >> 16u; let b0 = b & 0xffffu; let b1 = b >> 16u;
  let p01 = a0 * b1;
  let p10 = a1 * b0;
  let mid = ((a0 * b0) >> 16u) + (p01 & 0xffffu) + (p10 & 0xffffu);
  return vec2<u32>(a1 * b1 + (p01 >> 16u) + (p10 >> 16u) + (mid >> 16u), a * b);
}
fn philox(counter: vec4<u32>, key: vec2<u32>) -> vec4<u32> {
  var c = counter;
  var k = key;
  for (var r = 0u; r < 10u; r++) {
    let p0 = mulhilo(${M0}u, c.x);
    let p1 = mulhilo(${M1}u, c.z);
    c = vec4<u32>(p1.x ^ c.y ^ k.x, p1.y, p0.x ^ c.w ^ k.y, p0.y);
    k = k + vec2<u32>(${W0}u, ${W1}u);
  }
  return c;
}// A Philox word → uniform in [0, 1): the top 24 bits times 2^-24, exact in f32 and never 1.0.
fn uniform01(bits: u32) -> f32 { return f32(bits >> 8u) * 5.9604644775390625e-8; }
`;

// ln(m·2⁻²⁴) for an integer m in [1, 2²⁴], accurate to a few ulp *relative*: m = 2^e·x with x ∈ [√½, √2)
// built exactly from m's bits, ln x = 2·atanh(s) with s = (x−1)/(x+1) (x−1 is exact), and e·ln 2 from a
// split constant whose high part times |e| ≤ 24 is exact. sin/cos(2π·k·2⁻²⁴): the quadrant and the
// reflection about π/4 are exact integer ops on k, then polynomials in t ∈ [0, ½] (truncation < 3e-9).
const NORMAL_WGSL = /* wgsl */ `
fn ln_u24(m: u32) -> f32 {
  if (m >= 0x1000000u) { return 0.0; }
  var e = 31u - countLeadingZeros(m);
  var x = bitcast<f32>(((m << (23u - e)) & 0x7fffffu) | 0x3f800000u);
  var k = f32(e) - 24.0;
  if (x > 1.4142135) { x = x * 0.5; k = k + 1.0; }
  let s = (x - 1.0) / (x + 1.0);
  let s2 = s * s;
  let lnx = 2.0 * s * (1.0 + s2 * (0.33333333333333333 + s2 * (0.2 + s2 * (0.14285714285714286 + s2 * 0.11111111111111111))));
  return k * 0.693145751953125 + (k * 1.4286068202862268e-6 + lnx);
}
fn sincos_2pi(k: u32) -> vec2<f32> {
  let q = k >> 22u;
  let f = k & 0x3fffffu;
  let swap = f > 0x200000u;
  let t = f32(select(f, 0x400000u - f, swap)) * 2.384185791015625e-7;
  let t2 = t * t;
  let s0 = t * (${SIN[0]} + t2 * (${SIN[1]} + t2 * (${SIN[2]} + t2 * (${SIN[3]} + t2 * (${SIN[4]} + t2 * ${SIN[5]})))));
  let c0 = ${COS[0]} + t2 * (${COS[1]} + t2 * (${COS[2]} + t2 * (${COS[3]} + t2 * (${COS[4]} + t2 * ${COS[5]}))));
  var sc = select(vec2<f32>(s0, c0), vec2<f32>(c0, s0), swap);
  if ((q & 1u) == 1u) { sc = vec2<f32>(sc.y, -sc.x); }
  if (q >= 2u) { sc = -sc; }
  return sc; // (sin, cos)
}
fn box_muller(a: u32, b: u32) -> vec2<f32> {
  let r = sqrt(-2.0 * ln_u24((a >> 8u) + 1u));
  let sc = sincos_2pi(b >> 8u);
  return vec2<f32>(r * sc.y, r * sc.x);
}`;

type Kind = 'u32' | 'uniform' | 'normal';

function values(kind: Kind): string {
  switch (kind) {
    case 'u32':
      return 'x';
    case 'uniform':
      return 'bitcast<vec4<u32>>(vec4<f32>(x >> vec4<u32>(8u)) * 5.9604644775390625e-8)';
    case 'normal':
      return 'bitcast<vec4<u32>>(p.mean + p.sd * vec4<f32>(box_muller(x.x, x.y), box_muller(x.z, x.w)))';
  }
}

const randomSpecs = new Map<Kind, KernelSpec>();
function randomSpec(kind: Kind): KernelSpec {
  let spec = randomSpecs.get(kind);
  if (spec) return spec;
  spec = {
    name: `random_${kind}`,
    bindings: ['write'],
    code: /* wgsl */ `
struct P { n: u32, head: u32, bLo: u32, bHi: u32, stream: u32, k0: u32, k1: u32, yFirst: u32, mean: f32, sd: f32 }
@group(0) @binding(0) var<storage, read_write> y: array<u32>;
@group(0) @binding(1) var<uniform> p: P;
${PHILOX_WGSL}
${kind === 'normal' ? NORMAL_WGSL : ''}
${LINEAR_WORKGROUP}
// Lane l of block t is output element 4t + l − head, when that lies in [0, n).
fn put(j: u32, bits: u32) { if (j >= p.head && j - p.head < p.n) { y[p.yFirst + j - p.head] = bits; } }
@compute @workgroup_size(${WG})
fn main(${LINEAR_MAIN_ARGS}) {
  // One invocation per Philox block: block index (64-bit) = first block + t.
  let t = linear_workgroup(wid, nwg) * ${WG}u + li;
  if (4u * t >= p.head + p.n) { return; }
  let lo = p.bLo + t;
  let x = philox(vec4<u32>(lo, p.bHi + select(0u, 1u, lo < t), p.stream, 0u), vec2<u32>(p.k0, p.k1));
  let v = ${values(kind)};
  put(4u * t, v.x);
  put(4u * t + 1u, v.y);
  put(4u * t + 2u, v.z);
  put(4u * t + 3u, v.w);
}`,
  };
  randomSpecs.set(kind, spec);
  return spec;
}

function launch(gpu: Gpu, kind: Kind, n: number, opts: NormalOptions): Tensor {
  const name = `random_${kind}`;
  const s = streamOf(name, n, opts);
  const dtype = kind === 'u32' ? 'u32' : 'f32';
  const out = opts.out ?? gpu.empty([n], dtype, name);
  if (out.dtype !== dtype || out.numel !== n) throw new ShapeError(name, `out ${out} must be ${dtype} with ${n} elements`);
  // Chunks of whole blocks when n exceeds one binding; each continues the stream at its own offset.
  const chunk = Math.floor(windowElements(gpu, dtype) / 4) * 4;
  for (let e0 = 0; e0 < n; e0 += chunk) {
    const m = Math.min(chunk, n - e0);
    const g = s.offset + e0;
    const b = Math.floor(g / 4);
    const head = g % 4;
    const yw = elementWindow(gpu, out, e0, m);
    const params = new Params()
      .u32(m, head, b % TWO32, Math.floor(b / TWO32), s.stream, s.key[0], s.key[1], yw.first)
      .f32(opts.mean ?? 0, opts.std ?? 1);
    gpu.run(randomSpec(kind), [yw.range], params, ceilDiv(ceilDiv(head + m, 4), WG));
  }
  return out;
}

/** n raw u32 of the stream (u32 [n]). */
export function randomU32(gpu: Gpu, n: number, opts: RandomOptions): Tensor {
  return launch(gpu, 'u32', n, opts);
}

/** n uniforms in [0, 1), f32 [n]; bit-identical to randomUniformCpu. */
export function randomUniform(gpu: Gpu, n: number, opts: RandomOptions): Tensor {
  return launch(gpu, 'uniform', n, opts);
}

/** n normals mean + std·z, f32 [n]; z within 1e-6 relative of randomNormalCpu. */
export function randomNormal(gpu: Gpu, n: number, opts: NormalOptions): Tensor {
  return launch(gpu, 'normal', n, opts);
}

const PHILOX_BLOCKS: KernelSpec = {
  name: 'philox4x32',
  bindings: ['read', 'write'],
  code: /* wgsl */ `
struct P { m: u32, k0: u32, k1: u32, cFirst: u32, yFirst: u32 }
@group(0) @binding(0) var<storage, read> counters: array<u32>;
@group(0) @binding(1) var<storage, read_write> y: array<u32>;
@group(0) @binding(2) var<uniform> p: P;
${PHILOX_WGSL}
${LINEAR_WORKGROUP}
@compute @workgroup_size(${WG})
fn main(${LINEAR_MAIN_ARGS}) {
  let i = linear_workgroup(wid, nwg) * ${WG}u + li;
  if (i >= p.m) { return; }
  let c = p.cFirst + 4u * i;
  let x = philox(vec4<u32>(counters[c], counters[c + 1u], counters[c + 2u], counters[c + 3u]), vec2<u32>(p.k0, p.k1));
  let o = p.yFirst + 4u * i;
  y[o] = x.x; y[o + 1u] = x.y; y[o + 2u] = x.z; y[o + 3u] = x.w;
}`,
};

/** Philox-4×32-10 of explicit counters on the GPU: counters u32 [m, 4] → u32 [m, 4], one key for all. */
export function philox4x32Gpu(gpu: Gpu, counters: Tensor, key: RngKey): Tensor {
  const name = 'philox4x32';
  if (counters.dtype !== 'u32' || counters.rank !== 2 || counters.shape[1] !== 4) {
    throw new ShapeError(name, `counters ${counters} must be u32 [m, 4]`);
  }
  const [k0, k1] = keyWords(name, key);
  const m = counters.shape[0];
  const out = gpu.empty([m, 4], 'u32', name);
  const cw = elementWindow(gpu, counters, 0, 4 * m);
  const yw = elementWindow(gpu, out, 0, 4 * m);
  gpu.run(PHILOX_BLOCKS, [cw.range, yw.range], new Params().u32(m, k0, k1, cw.first, yw.first), ceilDiv(m, WG));
  return out;
}
