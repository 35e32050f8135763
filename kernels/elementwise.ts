// Elementwise family: activations (GELU tanh/erf, SiLU), binary add/mul with row broadcasting, scale.
// f32 in and out; each op has a float64 CPU reference below.

import type { Gpu } from '../engine/device.js';
import { ShapeError, shapeStr } from '../engine/errors.js';
import { Params } from '../engine/params.js';
import type { KernelSpec } from '../engine/pipelines.js';
import type { Tensor } from '../engine/tensor.js';
import { type DType, isFloat } from '../engine/dtype.js';
import { assertSeparateBuffers, elementWindow, windowElements } from './layout.js';
import { ceilDiv, LINEAR_MAIN_ARGS, LINEAR_WORKGROUP } from './wgsl.js';

export type UnaryOp = 'gelu_tanh' | 'gelu_erf' | 'silu' | 'scale' | 'clamp' | 'identity';
export type BinaryOp = 'add' | 'mul';

const WG = 256;

// erf for the exact GELU (CLIP's): Taylor series below 1 (terms to x^17, truncation < 2e-7), and the
// Numerical Recipes erfc rational form above (relative error < 1.2e-7). Both sit near f32 rounding.
const ERF_WGSL = /* wgsl */ `
fn erf_f32(x: f32) -> f32 {
  let a = abs(x);
  if (a < 1.0) {
    // erf(x)/x = 2/√π Σ (-1)^n x^2n / (n!(2n+1)), nine terms.
    let t = a * a;
    let p = 1.1283791670955126 + t * (-0.37612638903183754 + t * (0.11283791670955126 + t * (-0.026866170645131252
      + t * (0.005223977625442188 + t * (-0.0008548327023450852 + t * (0.00012055332981789664 + t * (-0.000014925650358406251
      + t * 0.0000016462114365889246)))))));
    return sign(x) * a * p;
  }
  // erfc via exp(-x²)·rational(1/(1+p·a)), Numerical Recipes' erfcc (rel. error < 1.2e-7).
  let z = 1.0 / (1.0 + 0.5 * a);
  let r = z * exp(-a * a - 1.26551223 + z * (1.00002368 + z * (0.37409196 + z * (0.09678418 + z * (-0.18628806
    + z * (0.27886807 + z * (-1.13520398 + z * (1.48851587 + z * (-0.82215223 + z * 0.17087277)))))))));
  return sign(x) * (1.0 - r);
}`;

function unaryExpr(op: UnaryOp): string {
  switch (op) {
    case 'gelu_tanh':
      // tanh written through exp of a non-positive argument so large |u| cannot overflow.
      return 'gelu_tanh(v)';
    case 'gelu_erf':
      return '0.5 * v * (1.0 + erf_f32(v * 0.7071067811865476))';
    case 'silu':
      return 'v / (1.0 + exp(-v))';
    case 'scale':
      return 'v * p.alpha';
    case 'clamp':
      return 'clamp(v, -p.alpha, p.alpha)';
    case 'identity':
      return 'v';
  }
}

const GELU_TANH_WGSL = /* wgsl */ `
fn tanh_safe(u: f32) -> f32 {
  let e = exp(-2.0 * abs(u));
  return sign(u) * (1.0 - e) / (1.0 + e);
}
fn gelu_tanh(v: f32) -> f32 {
  return 0.5 * v * (1.0 + tanh_safe(0.7978845608028654 * (v + 0.044715 * v * v * v)));
}`;

/** WGSL helpers every activation epilogue can include (matmul fuses these too). */
export const ACTIVATIONS_WGSL = ERF_WGSL + GELU_TANH_WGSL;

const unarySpecs = new Map<UnaryOp, KernelSpec>();
function unarySpec(op: UnaryOp): KernelSpec {
  let spec = unarySpecs.get(op);
  if (!spec) {
    spec = {
      name: `unary_${op}`,
      bindings: ['read', 'write'],
      code: /* wgsl */ `
struct P { n: u32, alpha: f32 }
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<uniform> p: P;
${ACTIVATIONS_WGSL}
${LINEAR_WORKGROUP}
@compute @workgroup_size(${WG})
fn main(${LINEAR_MAIN_ARGS}) {
  let i = linear_workgroup(wid, nwg) * ${WG}u + li;
  if (i >= p.n) { return; }
  let v = x[i];
  y[i] = ${unaryExpr(op)};
}`,
    };
    unarySpecs.set(op, spec);
  }
  return spec;
}

/** Element ranges that each fit one binding (f32), starting at multiples of 1024 elements (4 KiB: aligned). */
function elementChunks(gpu: Gpu, numel: number): Array<[number, number]> {
  const max = Math.floor(gpu.limits.maxStorageBufferBindingSize / 4 / 1024) * 1024;
  if (numel <= max) return [[0, numel]];
  const out: Array<[number, number]> = [];
  for (let s = 0; s < numel; s += max) out.push([s, Math.min(max, numel - s)]);
  return out;
}

function flatRange(t: Tensor, start: number, n: number): Tensor {
  return start === 0 && n === t.numel ? t : t.reshape([t.numel]).rows(start, n);
}

function checkF32(kernel: string, ...ts: Tensor[]): void {
  for (const t of ts) if (t.dtype !== 'f32') throw new ShapeError(kernel, `${t} must be f32`);
}

/** y = op(x) elementwise. `out` (same element count) may be given; it must not be `x` (WebGPU forbids aliasing). */
export function unary(gpu: Gpu, op: UnaryOp, x: Tensor, opts: { alpha?: number; out?: Tensor } = {}): Tensor {
  const name = `unary_${op}`;
  checkF32(name, x);
  const out = opts.out ?? gpu.empty(x.shape, 'f32', name);
  checkF32(name, out);
  if (out.numel !== x.numel) throw new ShapeError(name, `out ${shapeStr(out.shape)} vs x ${shapeStr(x.shape)}`);
  for (const [start, n] of elementChunks(gpu, x.numel)) {
    const params = new Params().u32(n).f32(opts.alpha ?? 1);
    gpu.run(unarySpec(op), [flatRange(x, start, n), flatRange(out, start, n)], params, Math.ceil(n / WG));
  }
  return out;
}

export const gelu = (gpu: Gpu, x: Tensor, form: 'tanh' | 'erf' = 'tanh') => unary(gpu, form === 'tanh' ? 'gelu_tanh' : 'gelu_erf', x);
export const silu = (gpu: Gpu, x: Tensor) => unary(gpu, 'silu', x);
export const scale = (gpu: Gpu, x: Tensor, alpha: number) => unary(gpu, 'scale', x, { alpha });

const binarySpecs = new Map<BinaryOp, KernelSpec>();
function binarySpec(op: BinaryOp): KernelSpec {
  let spec = binarySpecs.get(op);
  if (!spec) {
    spec = {
      name: `binary_${op}`,
      bindings: ['read', 'read', 'write'],
      code: /* wgsl */ `
struct P { n: u32, nb: u32, alpha: f32, beta: f32, base: u32 }
@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<uniform> p: P;
${LINEAR_WORKGROUP}
@compute @workgroup_size(${WG})
fn main(${LINEAR_MAIN_ARGS}) {
  let i = linear_workgroup(wid, nwg) * ${WG}u + li;
  if (i >= p.n) { return; }
  let bv = b[(p.base + i) % p.nb];
  y[i] = ${op === 'add' ? 'p.alpha * a[i] + p.beta * bv' : 'p.alpha * a[i] * bv'};
}`,
    };
    binarySpecs.set(op, spec);
  }
  return spec;
}

/**
 * y = α·a + β·b (add) or α·a·b (mul). `b` broadcasts when its element count divides a's and a's trailing
 * dims end with b's shape (e.g. a bias row [C] against [N, C]).
 */
export function binary(gpu: Gpu, op: BinaryOp, a: Tensor, b: Tensor, opts: { alpha?: number; beta?: number; out?: Tensor } = {}): Tensor {
  const name = `binary_${op}`;
  checkF32(name, a, b);
  const tail = a.shape.slice(a.shape.length - b.shape.length);
  if (b.numel === 0 || a.numel % b.numel !== 0 || b.shape.length > a.shape.length || tail.some((d, i) => d !== b.shape[i])) {
    throw new ShapeError(name, `cannot broadcast b ${shapeStr(b.shape)} onto a ${shapeStr(a.shape)}`);
  }
  const out = opts.out ?? gpu.empty(a.shape, 'f32', name);
  checkF32(name, out);
  if (out.numel !== a.numel) throw new ShapeError(name, `out ${shapeStr(out.shape)} vs a ${shapeStr(a.shape)}`);
  for (const [start, n] of elementChunks(gpu, a.numel)) {
    const params = new Params().u32(n, b.numel).f32(opts.alpha ?? 1, opts.beta ?? 1).u32(start % b.numel);
    gpu.run(binarySpec(op), [flatRange(a, start, n), b, flatRange(out, start, n)], params, Math.ceil(n / WG));
  }
  return out;
}

export const add = (gpu: Gpu, a: Tensor, b: Tensor, out?: Tensor) => binary(gpu, 'add', a, b, { out });
export const mul = (gpu: Gpu, a: Tensor, b: Tensor, out?: Tensor) => binary(gpu, 'mul', a, b, { out });

// ---- float64 references ----------------------------------------------------------------------

export function erfRef(x: number): number {
  const a = Math.abs(x);
  let r: number;
  if (a < 2.5) {
    // Taylor series: erf(x) = 2/√π Σ (-1)^n x^(2n+1) / (n! (2n+1)); converges fast for |x| < 2.5.
    let term = a;
    let sum = a;
    for (let n = 1; n < 200; n++) {
      term *= (-a * a) / n;
      const add = term / (2 * n + 1);
      sum += add;
      if (Math.abs(add) < 1e-17 * Math.abs(sum)) break;
    }
    r = (2 / Math.sqrt(Math.PI)) * sum;
  } else {
    // Continued fraction for erfc (Lentz), accurate for large x.
    let f = a;
    let c = a;
    let d = 0;
    for (let n = 1; n < 300; n++) {
      const an = n / 2;
      d = a + an * d;
      d = 1 / d;
      c = a + an / c;
      const delta = c * d;
      f *= delta;
      if (Math.abs(delta - 1) < 1e-16) break;
    }
    r = 1 - Math.exp(-a * a) / (f * Math.sqrt(Math.PI));
  }
  return x < 0 ? -r : r;
}

export function unaryRef(op: UnaryOp, x: ArrayLike<number>, alpha = 1): Float64Array {
  const y = new Float64Array(x.length);
  for (let i = 0; i < x.length; i++) {
    const v = x[i];
    switch (op) {
      case 'gelu_tanh':
        y[i] = 0.5 * v * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (v + 0.044715 * v ** 3)));
        break;
      case 'gelu_erf':
        y[i] = 0.5 * v * (1 + erfRef(v / Math.SQRT2));
        break;
      case 'silu':
        y[i] = v / (1 + Math.exp(-v));
        break;
      case 'scale':
        y[i] = v * alpha;
        break;
      case 'clamp':
        y[i] = Math.min(Math.max(v, -alpha), alpha);
        break;
      case 'identity':
        y[i] = v;
    }
  }
  return y;
}

export function binaryRef(op: BinaryOp, a: ArrayLike<number>, b: ArrayLike<number>, alpha = 1, beta = 1): Float64Array {
  const y = new Float64Array(a.length);
  for (let i = 0; i < a.length; i++) {
    const bv = b[i % b.length];
    y[i] = op === 'add' ? alpha * a[i] + beta * bv : alpha * a[i] * bv;
  }
  return y;
}

// ---- cast ------------------------------------------------------------------------------------

// Float conversions done with integer ops on the bit patterns, so they need no shader-f16, never see a
// float unit's flush-to-zero or NaN canonicalisation, and match engine/dtype.ts f32ToF16Bits /
// f32ToBf16Bits bit for bit (round to nearest even, subnormals, overflow to ±Inf, quiet NaN).
const CAST_BITS_WGSL = /* wgsl */ `
fn f16_to_f32_bits(h: u32) -> u32 {
  let s = (h & 0x8000u) << 16u;
  let e = (h >> 10u) & 0x1fu;
  let m = h & 0x3ffu;
  if (e == 0x1fu) { return s | 0x7f800000u | (m << 13u); } // Inf, NaN (payload kept)
  if (e != 0u) { return s | ((e + 112u) << 23u) | (m << 13u); }
  if (m == 0u) { return s; }
  // Subnormal half m·2^-24: its top set bit q gives the f32 exponent q - 24, the bits below it the mantissa.
  let q = 31u - countLeadingZeros(m);
  return s | ((q + 103u) << 23u) | ((m << (23u - q)) & 0x7fffffu);
}
fn f32_bits_to_f16(x: u32) -> u32 {
  let s = (x >> 16u) & 0x8000u;
  let ex = (x >> 23u) & 0xffu;
  let mant = x & 0x7fffffu;
  if (ex == 0xffu) { return s | 0x7c00u | select(0u, 0x200u | (mant >> 13u), mant != 0u); }
  let e = i32(ex) - 112; // rebiased for half (bias 15)
  if (e >= 31) { return s | 0x7c00u; }
  if (e <= 0) {
    // Subnormal half (or zero): shift the 24-bit significand into place and round.
    if (e < -10) { return s; }
    let m = mant | 0x800000u;
    let shift = u32(14 - e);
    let half = 1u << (shift - 1u);
    let rest = m & ((1u << shift) - 1u);
    var r = m >> shift;
    if (rest > half || (rest == half && (r & 1u) == 1u)) { r += 1u; }
    return s | r;
  }
  var r = (u32(e) << 10u) | (mant >> 13u);
  let rest = mant & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (r & 1u) == 1u)) { r += 1u; } // a carry into the exponent is right (→ Inf at the top)
  return s | r;
}
fn f32_bits_to_bf16(x: u32) -> u32 {
  if ((x & 0x7f800000u) == 0x7f800000u && (x & 0x7fffffu) != 0u) { return ((x >> 16u) | 0x40u) & 0xffffu; }
  return ((x + 0x7fffu + ((x >> 16u) & 1u)) >> 16u) & 0xffffu;
}`;

type FloatDType = 'f32' | 'f16' | 'bf16';

function castExpr(from: FloatDType, to: FloatDType): string {
  if (from === to) return 'b'; // a plain copy, bit for bit
  const wide = from === 'f32' ? 'b' : from === 'f16' ? 'f16_to_f32_bits(b)' : '(b << 16u)';
  return to === 'f32' ? wide : to === 'f16' ? `f32_bits_to_f16(${wide})` : `f32_bits_to_bf16(${wide})`;
}

const castSpecs = new Map<string, KernelSpec>();
function castSpec(from: FloatDType, to: FloatDType): KernelSpec {
  const key = `${from}_${to}`;
  let spec = castSpecs.get(key);
  if (spec) return spec;
  const load =
    from === 'f32'
      ? 'let b = x[p.xFirst + j];'
      : 'let i = p.xFirst + j; let b = (x[i >> 1u] >> ((i & 1u) * 16u)) & 0xffffu;';
  // f32 out: one invocation per element. 16-bit out: one invocation per output word (two halves), so no
  // two invocations write the same word; a word only partly inside the output keeps its other half.
  const body =
    to === 'f32'
      ? /* wgsl */ `
  let i = linear_workgroup(wid, nwg) * ${WG}u + li;
  if (i < p.n) { y[p.yFirst + i] = out_bits(i); }`
      : /* wgsl */ `
  let w = (p.yFirst >> 1u) + linear_workgroup(wid, nwg) * ${WG}u + li;
  let lo = 2u * w;
  let end = p.yFirst + p.n;
  if (lo >= end) { return; }
  let inLo = lo >= p.yFirst;
  let inHi = lo + 1u >= p.yFirst && lo + 1u < end;
  var word: u32;
  if (inLo && inHi) {
    word = out_bits(lo - p.yFirst) | (out_bits(lo + 1u - p.yFirst) << 16u);
  } else {
    word = y[w];
    if (inLo) { word = (word & 0xffff0000u) | out_bits(lo - p.yFirst); }
    if (inHi) { word = (word & 0x0000ffffu) | (out_bits(lo + 1u - p.yFirst) << 16u); }
  }
  y[w] = word;`;
  spec = {
    name: `cast_${key}`,
    bindings: ['read', 'write'],
    code: /* wgsl */ `
struct P { n: u32, xFirst: u32, yFirst: u32 }
@group(0) @binding(0) var<storage, read> x: array<u32>;
@group(0) @binding(1) var<storage, read_write> y: array<u32>;
@group(0) @binding(2) var<uniform> p: P;
${CAST_BITS_WGSL}
// Output bits of element j (relative to the first element of this dispatch).
fn out_bits(j: u32) -> u32 { ${load} return ${castExpr(from, to)}; }
${LINEAR_WORKGROUP}
@compute @workgroup_size(${WG})
fn main(${LINEAR_MAIN_ARGS}) {${body}
}`,
  };
  castSpecs.set(key, spec);
  return spec;
}

/**
 * Converts between f32, f16 and bf16 (round to nearest even; overflow → ±Inf; NaN stays NaN), bit-exact
 * with engine/dtype.ts. Any element count and offset (views of halves may start mid-word). Tensors
 * larger than one binding are converted in chunks. `out` (same element count, dtype `dtype`) may be given,
 * e.g. a persistent tensor for weights; it must not share a buffer with x. Same dtype in and out is a bit copy.
 */
export function cast(gpu: Gpu, x: Tensor, dtype: DType, opts: { out?: Tensor } = {}): Tensor {
  const name = `cast_${x.dtype}_${dtype}`;
  if (!isFloat(x.dtype) || !isFloat(dtype)) throw new ShapeError(name, `${x} → ${dtype}: only f32, f16 and bf16 are supported`);
  const out = opts.out ?? gpu.empty(x.shape, dtype, name);
  if (out.dtype !== dtype || out.numel !== x.numel) throw new ShapeError(name, `out ${out} must be ${dtype} with the ${x.numel} elements of ${x}`);
  const spec = castSpec(x.dtype as FloatDType, dtype as FloatDType);
  const halvesOut = dtype !== 'f32';
  const chunk = Math.min(windowElements(gpu, x.dtype), windowElements(gpu, dtype));
  for (let e0 = 0; e0 < x.numel; e0 += chunk) {
    const n = Math.min(chunk, x.numel - e0);
    const xw = elementWindow(gpu, x, e0, n);
    const yw = elementWindow(gpu, out, e0, n);
    assertSeparateBuffers(name, yw, 'out', { x: xw });
    const invocations = halvesOut ? ((yw.first + n - 1) >> 1) - (yw.first >> 1) + 1 : n;
    gpu.run(spec, [xw.range, yw.range], new Params().u32(n, xw.first, yw.first), ceilDiv(invocations, WG));
  }
  return out;
}
