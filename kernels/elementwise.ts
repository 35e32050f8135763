// Elementwise family: activations (GELU tanh/erf, SiLU), binary add/mul with row broadcasting, scale.
// f32 in and out; each op has a float64 CPU reference below.

import type { Gpu } from '../engine/device.js';
import { ShapeError, shapeStr } from '../engine/errors.js';
import { Params } from '../engine/params.js';
import type { KernelSpec } from '../engine/pipelines.js';
import type { Tensor } from '../engine/tensor.js';
import { LINEAR_WORKGROUP } from './wgsl.js';

export type UnaryOp = 'gelu_tanh' | 'gelu_erf' | 'silu' | 'scale' | 'identity';
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
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
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
  gpu.run(unarySpec(op), [x, out], new Params().u32(x.numel).f32(opts.alpha ?? 1), Math.ceil(x.numel / WG));
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
struct P { n: u32, nb: u32, alpha: f32, beta: f32 }
@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<uniform> p: P;
${LINEAR_WORKGROUP}
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let i = linear_workgroup(wid, nwg) * ${WG}u + li;
  if (i >= p.n) { return; }
  let bv = b[i % p.nb];
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
  const params = new Params().u32(a.numel, b.numel).f32(opts.alpha ?? 1, opts.beta ?? 1);
  gpu.run(binarySpec(op), [a, b, out], params, Math.ceil(a.numel / WG));
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
