// Resize family: PyTorch-compatible spatial resampling of f32 maps, one invocation per output element.
//   bilinear  F.interpolate(mode='bilinear', align_corners=False, antialias=False) — Infinity's next-scale inputs
//   bicubic   F.interpolate(mode='bicubic', align_corners=False), A = −0.75, border taps clamped — STAR's VQ-VAE
//   area      F.interpolate(mode='area') = adaptive_avg_pool2d, also when upsampling — STAR, StageVAR RTR
//   nearest   F.interpolate(mode='nearest'): src = floor(dst·in/out) — the VAE decoder's ×2 upsampling
// Layouts: 'nchw' [N, C, H, W] and 'nhwc' [N, H, W, C]. Both run the same shader: NCHW is NHWC with
// N·C "images" of one channel each, so the kernel only sees [planes, H, W, C'] with C' = 1 or C.
// Each has a float64 CPU reference (`resizeRef`).

import type { Gpu } from '../engine/device.js';
import { LimitError, ShapeError, shapeStr } from '../engine/errors.js';
import { Params } from '../engine/params.js';
import type { BufferRange, KernelSpec } from '../engine/pipelines.js';
import type { Tensor } from '../engine/tensor.js';
import { LINEAR_MAIN_ARGS, LINEAR_WORKGROUP } from './wgsl.js';

export type ResizeMode = 'bilinear' | 'bicubic' | 'area' | 'nearest';
export type ResizeLayout = 'nchw' | 'nhwc';

export interface ResizeOptions {
  layout?: ResizeLayout;
  /** Write into this f32 tensor (same element count as the result) instead of a new one. */
  out?: Tensor;
  /** Test hook: pretend bindings may hold at most this many bytes (forces the split path). */
  maxBindingBytes?: number;
}

const WG = 256;
const MODES: readonly ResizeMode[] = ['bilinear', 'bicubic', 'area', 'nearest'];

/**
 * A binding covering elements [start, start + count) of an f32/i32/u32 tensor. WebGPU wants binding
 * offsets aligned to minStorageBufferOffsetAlignment, so the range starts at the aligned byte below and
 * `skip` says how many elements the kernel must add to its indices (0…align/4 − 1).
 */
export function elementRange(gpu: Gpu, t: Tensor, start: number, count: number): { range: BufferRange; skip: number } {
  const align = gpu.limits.minStorageBufferOffsetAlignment;
  const first = t.byteOffset + start * 4;
  const offset = first - (first % align);
  return { range: { buffer: t.buffer, offset, size: first - offset + Math.max(1, count) * 4 }, skip: (first - offset) / 4 };
}

/** The most bytes a binding may hold: the device limit, or the test hook's smaller cap. */
export function bindingCap(gpu: Gpu, hook?: number): number {
  const device = gpu.limits.maxStorageBufferBindingSize;
  return hook === undefined ? device : Math.min(device, hook);
}

// Per-mode body: computes `v` for output (p, oy, ox, c) from `ld(p, y, x, c)` with p.scale_h / p.scale_w
// = in/out rounded to f32, as PyTorch computes its source coordinates in f32 for f32 maps.
function modeBody(mode: ResizeMode): string {
  switch (mode) {
    case 'nearest':
      // Exact integer floor(dst·in/out); PyTorch's float product agrees whenever it is exact (e.g. ×2).
      return `
  let y = min(oy * p.in_h / p.out_h, p.in_h - 1u);
  let x = min(ox * p.in_w / p.out_w, p.in_w - 1u);
  let v = ld(pl, y, x, c);`;
    case 'area':
      // Adaptive average pooling window [floor(i·in/out), ceil((i+1)·in/out)), in integers.
      return `
  let y0 = oy * p.in_h / p.out_h;
  let y1 = ((oy + 1u) * p.in_h + p.out_h - 1u) / p.out_h;
  let x0 = ox * p.in_w / p.out_w;
  let x1 = ((ox + 1u) * p.in_w + p.out_w - 1u) / p.out_w;
  var s = 0.0;
  for (var y = y0; y < y1; y++) {
    for (var x = x0; x < x1; x++) { s += ld(pl, y, x, c); }
  }
  let v = s / f32((y1 - y0) * (x1 - x0));`;
    case 'bilinear':
      return `
  let sy = linear_src(oy, p.scale_h, p.in_h);
  let sx = linear_src(ox, p.scale_w, p.in_w);
  let top = (1.0 - sx.w) * ld(pl, sy.i0, sx.i0, c) + sx.w * ld(pl, sy.i0, sx.i1, c);
  let bot = (1.0 - sx.w) * ld(pl, sy.i1, sx.i0, c) + sx.w * ld(pl, sy.i1, sx.i1, c);
  let v = (1.0 - sy.w) * top + sy.w * bot;`;
    case 'bicubic':
      return `
  let sy = cubic_src(oy, p.scale_h, p.in_h);
  let sx = cubic_src(ox, p.scale_w, p.in_w);
  var v = 0.0;
  for (var j = 0; j < 4; j++) {
    let y = clamp_idx(sy.i + j - 1, p.in_h);
    var row = 0.0;
    for (var i = 0; i < 4; i++) { row += sx.w[i] * ld(pl, y, clamp_idx(sx.i + i - 1, p.in_w), c); }
    v += sy.w[j] * row;
  }`;
  }
}

const HELPERS = /* wgsl */ `
struct Lin { i0: u32, i1: u32, w: f32 }
// PyTorch area_pixel_compute_source_index (align_corners=False, linear): clamp the coordinate at 0.
fn linear_src(o: u32, scale: f32, n: u32) -> Lin {
  let s = max((f32(o) + 0.5) * scale - 0.5, 0.0);
  let i0 = min(u32(s), n - 1u);
  return Lin(i0, min(i0 + 1u, n - 1u), s - f32(i0));
}
struct Cub { i: i32, w: vec4<f32> }
// Cubic convolution (Keys, A = −0.75). PyTorch does not clamp the cubic coordinate at 0; it clamps taps.
fn cc1(x: f32) -> f32 { let a = -0.75; return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0; }
fn cc2(x: f32) -> f32 { let a = -0.75; return ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a; }
fn cubic_src(o: u32, scale: f32, n: u32) -> Cub {
  let s = (f32(o) + 0.5) * scale - 0.5;
  let f = min(floor(s), f32(n) - 1.0);
  let t = clamp(s - f, 0.0, 1.0);
  return Cub(i32(f), vec4<f32>(cc2(t + 1.0), cc1(t), cc1(1.0 - t), cc2(2.0 - t)));
}
fn clamp_idx(i: i32, n: u32) -> u32 { return u32(clamp(i, 0, i32(n) - 1)); }
`;

const specs = new Map<ResizeMode, KernelSpec>();
function resizeSpec(mode: ResizeMode): KernelSpec {
  let spec = specs.get(mode);
  if (!spec) {
    spec = {
      name: `resize_${mode}`,
      bindings: ['read', 'write'],
      code: /* wgsl */ `
// One block: planes × band_rows output rows (from global row oy0) × out_w × ch. The input binding starts at
// input row iy0 of the block's first plane; in_skip / out_skip are the alignment slack of the bindings.
struct P {
  total: u32, ch: u32, in_h: u32, in_w: u32, out_h: u32, out_w: u32,
  oy0: u32, band_rows: u32, iy0: u32, in_skip: u32, out_skip: u32,
  scale_h: f32, scale_w: f32,
}
@group(0) @binding(0) var<storage, read> src: array<f32>;
@group(0) @binding(1) var<storage, read_write> dst: array<f32>;
@group(0) @binding(2) var<uniform> p: P;
${LINEAR_WORKGROUP}
${HELPERS}
fn ld(pl: u32, y: u32, x: u32, c: u32) -> f32 {
  return src[p.in_skip + ((pl * p.in_h + y - p.iy0) * p.in_w + x) * p.ch + c];
}
@compute @workgroup_size(${WG})
fn main(${LINEAR_MAIN_ARGS}) {
  let i = linear_workgroup(wid, nwg) * ${WG}u + li;
  if (i >= p.total) { return; }
  let c = i % p.ch;
  let t = i / p.ch;
  let ox = t % p.out_w;
  let r = (t / p.out_w) % p.band_rows;
  let pl = t / (p.out_w * p.band_rows);
  let oy = p.oy0 + r;
  ${modeBody(mode)}
  dst[p.out_skip + i] = v;
}`,
    };
    specs.set(mode, spec);
  }
  return spec;
}

/** Input rows [lo, hi) that output rows [a, b) can read, for every mode (bicubic reaches furthest: ±2). */
function inputRows(a: number, b: number, inN: number, outN: number): [number, number] {
  const lo = Math.max(0, Math.floor((a * inN) / outN) - 2);
  const hi = Math.min(inN, Math.ceil((b * inN) / outN) + 2);
  return [lo, hi];
}

/**
 * Resizes the spatial dims of x to outH × outW. x is [N, C, H, W] ('nchw', default) or [N, H, W, C]
 * ('nhwc'); a 3-D [C, H, W] / [H, W, C] is taken as N = 1 and the result keeps the input's rank.
 *
 * Large maps: a block of whole planes (NCHW: one channel of one image; NHWC: one image) is bound per
 * dispatch, as many planes as fit in a binding; a single plane that does not fit is cut into bands of
 * output rows, each binding only the input rows it reads. Throws LimitError if one output row (or the
 * input rows it reads) exceeds the binding limit.
 */
export function resize(gpu: Gpu, x: Tensor, outH: number, outW: number, mode: ResizeMode, opts: ResizeOptions = {}): Tensor {
  const name = `resize_${mode}`;
  const layout = opts.layout ?? 'nchw';
  if (!MODES.includes(mode)) throw new ShapeError('resize', `unknown mode "${mode}"`);
  if (layout !== 'nchw' && layout !== 'nhwc') throw new ShapeError(name, `unknown layout "${layout}"`);
  if (x.dtype !== 'f32') throw new ShapeError(name, `${x} must be f32`);
  if (x.rank !== 3 && x.rank !== 4) throw new ShapeError(name, `x ${shapeStr(x.shape)} must be 4-D (or 3-D) ${layout}`);
  if (!Number.isInteger(outH) || !Number.isInteger(outW) || outH < 1 || outW < 1) {
    throw new ShapeError(name, `output size ${outH}×${outW} must be positive integers (x ${shapeStr(x.shape)})`);
  }
  const s4 = x.rank === 4 ? x.shape : [1, ...x.shape];
  const [n, c, h, w] = layout === 'nchw' ? s4 : [s4[0], s4[3], s4[1], s4[2]];
  if (h < 1 || w < 1) throw new ShapeError(name, `x ${shapeStr(x.shape)} has an empty spatial dim`);
  const outShape4 = layout === 'nchw' ? [n, c, outH, outW] : [n, outH, outW, c];
  const outShape = x.rank === 4 ? outShape4 : outShape4.slice(1);
  const out = opts.out ?? gpu.empty(outShape, 'f32', name);
  if (out.dtype !== 'f32' || out.numel !== n * c * outH * outW) {
    throw new ShapeError(name, `out ${out} must be f32 with the shape ${shapeStr(outShape)} (x ${shapeStr(x.shape)})`);
  }
  if (n * c === 0) return out;

  // The kernel's view: `planes` images of [h, w, ch].
  const [planes, ch] = layout === 'nchw' ? [n * c, 1] : [n, c];
  const inPlane = h * w * ch;
  const outPlane = outH * outW * ch;
  const cap = bindingCap(gpu, opts.maxBindingBytes);
  const slack = gpu.limits.minStorageBufferOffsetAlignment; // an aligned-down binding start adds < this
  const fits = (elements: number) => elements * 4 + slack <= cap;
  const spec = resizeSpec(mode);
  const scaleH = Math.fround(h / outH);
  const scaleW = Math.fround(w / outW);

  const dispatch = (p0: number, np: number, oy0: number, rows: number, iy0: number, inRows: number) => {
    const src = elementRange(gpu, x, p0 * inPlane + iy0 * w * ch, (np - 1) * inPlane + inRows * w * ch);
    const total = np * rows * outW * ch;
    const dst = elementRange(gpu, out, p0 * outPlane + oy0 * outW * ch, total);
    const params = new Params()
      .u32(total, ch, h, w, outH, outW, oy0, rows, iy0, src.skip, dst.skip)
      .f32(scaleH, scaleW);
    gpu.run(spec, [src.range, dst.range], params, Math.ceil(total / WG));
  };

  if (fits(inPlane) && fits(outPlane)) {
    const per = Math.max(1, Math.min(Math.floor((cap - slack) / 4 / inPlane), Math.floor((cap - slack) / 4 / outPlane)));
    for (let p0 = 0; p0 < planes; p0 += per) dispatch(p0, Math.min(per, planes - p0), 0, outH, 0, h);
    return out;
  }
  // Row bands of one plane: grow the band while its output rows and the input rows they read fit.
  const bandFits = (a: number, b: number) => {
    const [lo, hi] = inputRows(a, b, h, outH);
    return fits((b - a) * outW * ch) && fits((hi - lo) * w * ch);
  };
  if (!bandFits(0, 1)) {
    const [lo, hi] = inputRows(0, 1, h, outH);
    const need = Math.max(outW * ch, (hi - lo) * w * ch) * 4 + slack;
    throw new LimitError(`${name}: one output row of ${shapeStr(outShape)} from ${shapeStr(x.shape)}`, 'maxStorageBufferBindingSize', need, cap);
  }
  for (let pl = 0; pl < planes; pl++) {
    for (let a = 0; a < outH; ) {
      let b = a + 1;
      while (b < outH && bandFits(a, b + 1)) b++; // rows add linearly: a short scan, once per band
      const [lo, hi] = inputRows(a, b, h, outH);
      dispatch(pl, 1, a, b - a, lo, hi - lo);
      a = b;
    }
  }
  return out;
}

// ---- float64 reference -----------------------------------------------------------------------

/** Taps (source index, weight) of each output index along one axis, from PyTorch's definitions. */
export function resizeTaps(inN: number, outN: number, mode: ResizeMode): Array<Array<[number, number]>> {
  const scale = inN / outN;
  const clampIdx = (i: number) => Math.min(Math.max(i, 0), inN - 1);
  const taps: Array<Array<[number, number]>> = [];
  for (let o = 0; o < outN; o++) {
    switch (mode) {
      case 'nearest':
        taps.push([[Math.min(Math.floor((o * inN) / outN), inN - 1), 1]]);
        break;
      case 'area': {
        const lo = Math.floor((o * inN) / outN);
        const hi = Math.ceil(((o + 1) * inN) / outN);
        const list: Array<[number, number]> = [];
        for (let i = lo; i < hi; i++) list.push([i, 1 / (hi - lo)]);
        taps.push(list);
        break;
      }
      case 'bilinear': {
        const s = Math.max((o + 0.5) * scale - 0.5, 0);
        const i0 = Math.min(Math.floor(s), inN - 1);
        const l = s - i0;
        taps.push([[i0, 1 - l], [Math.min(i0 + 1, inN - 1), l]]);
        break;
      }
      case 'bicubic': {
        const A = -0.75;
        const cc1 = (t: number) => ((A + 2) * t - (A + 3)) * t * t + 1;
        const cc2 = (t: number) => ((A * t - 5 * A) * t + 8 * A) * t - 4 * A;
        const s = (o + 0.5) * scale - 0.5; // not clamped at 0 for cubic (PyTorch)
        const f = Math.min(Math.floor(s), inN - 1);
        const t = Math.min(Math.max(s - f, 0), 1);
        const w = [cc2(t + 1), cc1(t), cc1(1 - t), cc2(2 - t)];
        taps.push(w.map((wt, k): [number, number] => [clampIdx(f + k - 1), wt]));
        break;
      }
    }
  }
  return taps;
}

/** Float64 reference of `resize` on host data of a 4-D shape in the given layout. */
export function resizeRef(
  x: ArrayLike<number>,
  shape: readonly number[],
  outH: number,
  outW: number,
  mode: ResizeMode,
  layout: ResizeLayout = 'nchw',
): Float64Array {
  const [n, c, h, w] = layout === 'nchw' ? shape : [shape[0], shape[3], shape[1], shape[2]];
  const ty = resizeTaps(h, outH, mode);
  const tx = resizeTaps(w, outW, mode);
  const inIdx = layout === 'nchw' ? (b: number, k: number, y: number, xx: number) => ((b * c + k) * h + y) * w + xx : (b: number, k: number, y: number, xx: number) => ((b * h + y) * w + xx) * c + k;
  const outIdx = layout === 'nchw' ? (b: number, k: number, y: number, xx: number) => ((b * c + k) * outH + y) * outW + xx : (b: number, k: number, y: number, xx: number) => ((b * outH + y) * outW + xx) * c + k;
  const y = new Float64Array(n * c * outH * outW);
  for (let b = 0; b < n; b++) {
    for (let k = 0; k < c; k++) {
      for (let oy = 0; oy < outH; oy++) {
        for (let ox = 0; ox < outW; ox++) {
          let s = 0;
          if (mode === 'area') {
            // Mean of the window: sum first, divide once (exact for exactly summable inputs).
            for (const [iy] of ty[oy]) for (const [ix] of tx[ox]) s += x[inIdx(b, k, iy, ix)];
            s /= ty[oy].length * tx[ox].length;
          } else {
            for (const [iy, wy] of ty[oy]) for (const [ix, wx] of tx[ox]) s += wy * wx * x[inIdx(b, k, iy, ix)];
          }
          y[outIdx(b, k, oy, ox)] = s;
        }
      }
    }
  }
  return y;
}
