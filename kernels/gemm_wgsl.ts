// WGSL shared by the two GEMM kernels of the matmul family (`matmul.ts`: register-blocked with subgroup
// shuffles, for CPU adapters; `gemm_tiled.ts`: workgroup-memory tiles, for GPUs): the operand description,
// typed loaders, the params struct, bindings and the epilogue (bias, activation, transposed store). Both
// kernels take the same params and bindings, so the launcher in matmul.ts runs either.

import { ACTIVATIONS_WGSL } from './elementwise.js';

export type Stored = 'f32' | 'f16' | 'bf16';

/** What a GEMM kernel variant multiplies: operand dtypes and layouts, and whether vector loads are safe. */
export interface GemmOperands {
  kind: 'linear' | 'matmul';
  aDtype: 'f32' | 'f16';
  /** A stored [K, M]. */
  aTrans: boolean;
  bDtype: Stored;
  /** B stored [K, N] (matmul without transB); otherwise [N, K] (a PyTorch weight). */
  bKN: boolean;
  outDtype: 'f32' | 'f16';
  /** Vector loads: every row of A and B starts on a 4-element boundary along the loaded dimension (k, or m
   *  for a transposed A, n for B [K, N]). Otherwise everything is loaded as scalars. */
  vec: boolean;
}

export function operandFlags(v: GemmOperands): string {
  return [v.kind, v.aDtype, v.bDtype, v.outDtype, v.aTrans ? 'at' : 'an', v.bKN ? 'kn' : 'nk', v.vec ? 'v' : 's'].join('_');
}

/** The operands part of a GEMM kernel's name (profiles, `gpu.compiledKernels`): linear_<w dtype>w[_f16x][_f16out]
 *  or matmul_<n|t><n|t>; each kernel appends its own variant (_r16, _tiled128, _skinny). */
export function gemmKernelName(v: Omit<GemmOperands, 'vec'>): string {
  if (v.kind === 'linear') return `linear_${v.bDtype}w${v.aDtype === 'f16' ? '_f16x' : ''}${v.outDtype === 'f16' ? '_f16out' : ''}`;
  return `matmul_${v.aTrans ? 't' : 'n'}${v.bKN ? 'n' : 't'}`;
}

/** Storage element type of an operand: f32 or packed halves, as vec4 / vec2 / scalar (`width` elements). */
function arrayType(dtype: Stored, width: number): string {
  if (dtype === 'f32') return width === 1 ? 'f32' : `vec${width}<f32>`;
  return width === 4 ? 'vec2<u32>' : 'u32'; // 4 halves = 2 words; halves are never loaded 2 at a time here
}

function widen(dtype: Stored, word: string): string {
  // f16 through unpack2x16float; bf16 is the top half of an f32, widened by shifting. Neither needs a feature.
  return dtype === 'f16' ? `unpack2x16float(${word})` : `bitcast<vec2<f32>>(vec2<u32>(${word} << 16u, ${word} & 0xffff0000u))`;
}

/**
 * WGSL loaders for one operand stored as `dtype` in array `arr` with `width` elements per array entry:
 * `<fn>1(e) -> f32` reads element e (any width), and for width 4 `<fn>4(e) -> vec4<f32>` reads elements
 * e..e+3 (e % 4 == 0), for width 2 `<fn>2(e) -> vec2<f32>`.
 */
function loaders(fn: string, arr: string, dtype: Stored, width: number): string {
  const out: string[] = [];
  if (dtype === 'f32') {
    out.push(width === 1 ? `fn ${fn}1(e: u32) -> f32 { return ${arr}[e]; }` : `fn ${fn}1(e: u32) -> f32 { return ${arr}[e / ${width}u][e % ${width}u]; }`);
    if (width > 1) out.push(`fn ${fn}${width}(e: u32) -> vec${width}<f32> { return ${arr}[e / ${width}u]; }`);
  } else if (width === 4) {
    out.push(`fn ${fn}1(e: u32) -> f32 { let w = ${arr}[e / 4u][(e / 2u) % 2u]; return ${widen(dtype, 'w')}[e % 2u]; }`);
    out.push(`fn ${fn}4(e: u32) -> vec4<f32> { let w = ${arr}[e / 4u]; return vec4<f32>(${widen(dtype, 'w.x')}, ${widen(dtype, 'w.y')}); }`);
  } else {
    out.push(`fn ${fn}1(e: u32) -> f32 { let w = ${arr}[e / 2u]; return ${widen(dtype, 'w')}[e % 2u]; }`);
  }
  return out.join('\n');
}

/** Uniform params of both GEMM kernels, in the order the launcher writes them. */
export const GEMM_PARAMS = 'struct P { M: u32, N: u32, K: u32, steps: u32, aOff: u32, bOff: u32, cOff: u32, biasOff: u32, aBatch: u32, bBatch: u32, cBatch: u32, act: u32, hasBias: u32, transC: u32 }';

/**
 * Everything above `main`: enables, params, bindings (a, b, bias, c, params), loaders `lda1/lda4` and
 * `ldb1/ldb<bWidth>` over arrays of `aWidth`/`bWidth` elements, and `emit(cb, row, col, acc)`, which adds the
 * bias, applies the activation and stores one output (skipping columns past N; the caller checks rows).
 */
export function gemmPrelude(v: GemmOperands, aWidth: number, bWidth: number, enables: string[] = []): string {
  const en = [...enables, ...(v.outDtype === 'f16' ? ['f16'] : [])].map((e) => `enable ${e};`).join('');
  return /* wgsl */ `${en}
${GEMM_PARAMS}
@group(0) @binding(0) var<storage, read> a: array<${arrayType(v.aDtype, aWidth)}>;
@group(0) @binding(1) var<storage, read> b: array<${arrayType(v.bDtype, bWidth)}>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> c: array<${v.outDtype}>;
@group(0) @binding(4) var<uniform> p: P;
${ACTIVATIONS_WGSL}
${loaders('lda', 'a', v.aDtype, aWidth)}
${loaders('ldb', 'b', v.bDtype, bWidth)}
fn activate(x: f32) -> f32 {
  switch p.act {
    case 1u: { return gelu_tanh(x); }
    case 2u: { return 0.5 * x * (1.0 + erf_f32(x * 0.7071067811865476)); }
    case 3u: { return x / (1.0 + exp(-x)); }
    default: { return x; }
  }
}
// Epilogue for one output element (cb: element index of C(0, 0) in this batch). Bias and activation are
// uniform flags rather than variants: they run once per output, and fewer variants compile faster.
fn emit(cb: u32, row: u32, col: u32, acc: f32) {
  if (col >= p.N) { return; }
  var v = acc;
  if (p.hasBias != 0u) { v += bias[p.biasOff + col]; }
  // transC: the problem was swapped (Cᵀ = Bᵀ·Aᵀ) and C is stored transposed.
  let e = select(row * p.N + col, col * p.M + row, p.transC != 0u);
  c[cb + e] = ${v.outDtype}(activate(v));
}`;
}
