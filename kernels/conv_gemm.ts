// conv2d as im2col + GEMM, for CPU adapters (`gpu.tuning === 'cpu'`: lavapipe). The direct kernel in conv.ts
// stages tiles in workgroup memory, which lavapipe compiles to per-lane gathers (≈ 5 GFLOP/s there), while
// its register-blocked GEMM (matmul.ts) runs at ≈ 20: 3×3 convs run 2.3–2.5× faster this way (bench/conv.ts).
// Each image's output pixels go in chunks:
//   1. im2col:  colᵀ[j, ci·k² + tap] = x[ci, oy·s + ky − pad, ox·s + kx − pad] (0 in the padding), for the
//               chunk's pixels j — rows contiguous along the weight's own [Cin, k, k] order;
//   2. GEMM:    t = W · colᵀᵀ with W = w viewed as [Cout, Cin·k²] (f32 or f16: `linear` with W as its left
//               operand), t [Cout, chunk], every row a run of output pixels;
//   3. place:   y[co, p0 + j] = t[co, j] + bias[co].
// A chunk holds at most 32 MiB of colᵀ or t (and less than a binding). colᵀ costs k²·Cin·4 bytes per pixel of
// writes, small against the 2·k²·Cin·Cout FLOPs per pixel of the GEMM. Used when one image's input and output
// each fit a binding (the VAE decoder splits its maps so that they do) and the weights are f32/f16; the
// direct kernel runs everything else, and everything on GPUs.

import type { Gpu } from '../engine/device.js';
import { Params } from '../engine/params.js';
import type { KernelSpec } from '../engine/pipelines.js';
import type { Tensor } from '../engine/tensor.js';
import { linear } from './matmul.js';
import { elementRange } from './resize.js';
import { LINEAR_MAIN_ARGS, LINEAR_WORKGROUP, ceilDiv } from './wgsl.js';

const WG = 64;
const CHUNK_BYTES = 32 * 2 ** 20;

const IM2COL: KernelSpec = {
  name: 'conv_im2col',
  bindings: ['read', 'write'],
  code: /* wgsl */ `
// x: one image [Cin, H, W] starting at x_skip; col: [n, kc] with kc = Cin·k², output pixels p0 .. p0 + n.
struct P { n: u32, p0: u32, wo: u32, h: u32, w: u32, k: u32, stride: u32, pad: u32, kc: u32, x_skip: u32 }
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> col: array<f32>;
@group(0) @binding(2) var<uniform> p: P;
${LINEAR_WORKGROUP}
@compute @workgroup_size(${WG})
fn main(${LINEAR_MAIN_ARGS}) {
  // One invocation per (pixel j, input channel ci): its k² taps are consecutive in col, and the pixel's
  // coordinates are worked out once for all of them (integer division is costly per lane on lavapipe).
  let e = linear_workgroup(wid, nwg) * ${WG}u + li;
  let kk = p.k * p.k;
  let cin = p.kc / kk;
  if (e >= p.n * cin) { return; }
  let j = e / cin;
  let ci = e % cin;
  let px = p.p0 + j;
  // Signed arithmetic: the padding puts sources above and left of the map.
  let y0 = i32((px / p.wo) * p.stride) - i32(p.pad);
  let x0 = i32((px % p.wo) * p.stride) - i32(p.pad);
  let plane = p.x_skip + ci * p.h * p.w;
  var o = j * p.kc + ci * kk;
  for (var ky = 0u; ky < p.k; ky++) {
    let iy = y0 + i32(ky);
    let rowOk = iy >= 0 && iy < i32(p.h);
    for (var kx = 0u; kx < p.k; kx++) {
      let ix = x0 + i32(kx);
      var v = 0.0;
      if (rowOk && ix >= 0 && ix < i32(p.w)) { v = x[plane + u32(iy) * p.w + u32(ix)]; }
      col[o] = v;
      o++;
    }
  }
}`,
};

const PLACE: KernelSpec = {
  name: 'conv_place',
  bindings: ['read', 'read', 'write'],
  code: /* wgsl */ `
// t [cout, n] → y[co, p0 + j] (+ bias[co]); y: one image [Cout, hwo] starting at y_skip.
struct P { n: u32, p0: u32, hwo: u32, cout: u32, y_skip: u32, has_bias: u32 }
@group(0) @binding(0) var<storage, read> t: array<f32>;
@group(0) @binding(1) var<storage, read> bias: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<uniform> p: P;
${LINEAR_WORKGROUP}
@compute @workgroup_size(${WG})
fn main(${LINEAR_MAIN_ARGS}) {
  let e = linear_workgroup(wid, nwg) * ${WG}u + li;
  if (e >= p.n * p.cout) { return; }
  let co = e / p.n;
  let j = e % p.n;
  var v = t[e];
  if (p.has_bias != 0u) { v += bias[co]; }
  y[p.y_skip + co * p.hwo + p.p0 + j] = v;
}`,
};

export interface ConvGemmArgs {
  k: number;
  stride: number;
  padding: number;
  ho: number;
  wo: number;
  /** The binding cap the launcher works against. */
  cap: number;
}

/** Output pixels per chunk for Cin·k² = kc and Cout channels; at most 65535·64, which keeps the GEMM's grid
 *  (N/128 workgroups in x on CPU adapters, N/64 with the tiled kernel) within one dimension. */
export function convGemmChunk(kc: number, cout: number, cap: number, align: number): number {
  return Math.max(1, Math.min(65535 * 64, Math.floor(Math.min(CHUNK_BYTES, cap - align) / (4 * Math.max(kc, cout)))));
}

/**
 * conv2d's semantics through im2col + GEMM (see the header). x [N, Cin, H, W] f32, w [Cout, Cin, k, k] f32/f16,
 * bias [Cout] or null, out [N, Cout, ho, wo]; the launcher in conv.ts has checked shapes and that one image of x
 * and of out each fit `cap`.
 */
export function conv2dByGemm(gpu: Gpu, x: Tensor, w: Tensor, bias: Tensor | null, out: Tensor, a: ConvGemmArgs): void {
  const [n, cin, h, wd] = x.shape;
  const cout = w.shape[0];
  const kc = cin * a.k * a.k;
  const hwo = a.ho * a.wo;
  const weights = w.reshape([cout, kc]);
  const chunk = Math.min(hwo, convGemmChunk(kc, cout, a.cap, gpu.limits.minStorageBufferOffsetAlignment));
  for (let i = 0; i < n; i++) {
    const xr = elementRange(gpu, x, i * cin * h * wd, cin * h * wd);
    const yr = elementRange(gpu, out, i * cout * hwo, cout * hwo);
    for (let p0 = 0; p0 < hwo; p0 += chunk) {
      const m = Math.min(chunk, hwo - p0);
      const col = gpu.empty([m, kc], 'f32', 'conv-col');
      let t: Tensor;
      try {
        gpu.run(IM2COL, [xr.range, col], new Params().u32(m, p0, a.wo, h, wd, a.k, a.stride, a.padding, kc, xr.skip), ceilDiv(m * cin, WG));
        t = linear(gpu, weights, col, null);
      } finally {
        col.dispose();
      }
      try {
        gpu.run(PLACE, [t, bias ?? t, yr.range], new Params().u32(m, p0, hwo, cout, yr.skip, bias ? 1 : 0), ceilDiv(m * cout, WG));
      } finally {
        t.dispose();
      }
    }
  }
}
