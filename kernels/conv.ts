// Conv family: 2-D convolution (PyTorch nn.Conv2d, square kernel, zero padding, groups = 1) of an NCHW f32
// map, as an implicit GEMM: Y[co, pixel] = Σ_{ci, tap} W[co, ci, tap] · X[ci, pixel shifted by tap].
// Weights f32, or f16/bf16 read through packed-u32 loads; bias f32 or none. Float64 reference: `conv2dRef`.
// On CPU adapters (lavapipe) the launcher runs im2col + the register-blocked GEMM instead where it applies
// (conv_gemm.ts): this kernel's workgroup-memory tiles are slow there.
//
// Kernel: a workgroup computes a tile of BM output channels × BN output pixels (pixels run over all images
// of the dispatch, so small maps still fill tiles). The K loop runs over the k² taps, and inside each tap
// over blocks of BK = 8 input channels: with the tap fixed, a thread's input pixel (and whether it falls in
// the zero padding) is computed once per tap instead of once per element. Each K step stages a BK×BM
// weight tile and a BK×BN input tile in workgroup memory; each thread accumulates TM × TN outputs
// (TM channels × TN pixels) in registers from them.
//
// Large maps (the VAE decoder at 1024²: 128 ch × 1024² f32 = 512 MiB, over the 128 MiB binding limit):
// an NCHW plane of one channel is contiguous, and so is a run of planes, so the launcher binds
// sub-ranges made of whole planes:
//   1. as many whole images as fit (x and y), one dispatch each (the usual case);
//   2. else, per image: output channels in blocks [o0, o0 + ob) (separate dispatches, each binding only
//      its output planes) and input channels in blocks [c0, c0 + cb) (a split K: the first block writes
//      bias + partial sum, the next ones add to y; dispatches in a pass are ordered, so this is race-free).
// Row bands would not help in NCHW: the rows of one band are spread over every channel plane, so their
// binding would span nearly the whole image. A single plane over the limit (> 32 M pixels) throws LimitError.
// Binding offsets must be multiples of the storage alignment (16 B), but plane boundaries need not be
// (e.g. 33×33 maps): a range starts at the aligned byte below and the kernel skips the slack (`x_skip`).

import type { Gpu } from '../engine/device.js';
import { LimitError, ShapeError, shapeStr } from '../engine/errors.js';
import { Params } from '../engine/params.js';
import type { KernelSpec } from '../engine/pipelines.js';
import type { Tensor } from '../engine/tensor.js';
import { conv2dByGemm } from './conv_gemm.js';
import { bindingCap, elementRange } from './resize.js';
import { LINEAR_MAIN_ARGS, LINEAR_WORKGROUP } from './wgsl.js';

export interface Conv2dOptions {
  /** Zero padding on every side (default 0, as nn.Conv2d). */
  padding?: number;
  /** Stride (default 1). */
  stride?: number;
  /** Write into this f32 tensor of shape [N, Cout, H', W'] instead of a new one. */
  out?: Tensor;
  /** Force a tile configuration (benchmarks, tests); default: picked per dispatch from the channel count. */
  tile?: ConvTileName;
  /** Test hook: pretend bindings may hold at most this many bytes (forces the split path). */
  maxBindingBytes?: number;
  /** 'direct' (this file's kernel) or 'gemm' (im2col + GEMM, conv_gemm.ts). Default: 'gemm' on CPU adapters
   *  where it applies (f32/f16 weights, one image of x and y within a binding, no `tile`), else 'direct'. */
  method?: 'direct' | 'gemm';
}

/** Threads along output channels (ty) × pixels (tx), and outputs per thread (tm channels × tn pixels). */
interface ConvTile {
  ty: number;
  tx: number;
  tm: number;
  tn: number;
  /** Relative speed on lavapipe (GFLOP per CPU-second, 128→128 ch 3×3 at 48²), used to pick a tile. */
  speed: number;
}
export type ConvTileName = 'c128p128' | 'c32p256' | 'c4p256';
// Tile sizes are compile-time (they size registers and workgroup memory); every shape runs on all three.
// Bigger register blocks pay off on lavapipe too (each workgroup-memory read there is a per-lane gather):
// 4×4 per thread ran at 1.2 GFLOP/cpu-s, 8×8 at 2.5. Each pipeline costs seconds to compile on lavapipe,
// so the weight dtype is a run-time switch rather than a variant.
const TILES: Record<ConvTileName, ConvTile> = {
  c128p128: { ty: 16, tx: 16, tm: 8, tn: 8, speed: 2.5 }, // the workhorse: 128 channels × 128 pixels
  c32p256: { ty: 4, tx: 64, tm: 8, tn: 4, speed: 1.8 }, // channel blocks of 32 (1024² maps), 64-ch layers
  c4p256: { ty: 4, tx: 64, tm: 1, tn: 4, speed: 0.4 }, // few output channels (the RGB conv_out)
};
// Input channels per K step. 8 with 128×128 tiles is the classic SGEMM shape (8 KiB of workgroup memory);
// on lavapipe 16 ran no faster and took 20–40% longer to compile.
const BK = 8;
const WTYPE: Record<string, number> = { f32: 0, f16: 1, bf16: 2 };

/** The tile with the best expected throughput for `ob` output channels (speed × useful fraction). */
function pickTile(ob: number): ConvTileName {
  let best: ConvTileName = 'c128p128';
  let bestRate = 0;
  for (const [name, t] of Object.entries(TILES) as [ConvTileName, ConvTile][]) {
    const bm = t.ty * t.tm;
    const rate = (t.speed * ob) / (Math.ceil(ob / bm) * bm);
    if (rate > bestRate) [best, bestRate] = [name, rate];
  }
  return best;
}

const specs = new Map<ConvTileName, KernelSpec>();
function convSpec(tileName: ConvTileName): KernelSpec {
  let spec = specs.get(tileName);
  if (spec) return spec;
  const { ty, tx, tm, tn } = TILES[tileName];
  const threads = ty * tx;
  const bm = ty * tm;
  const bn = tx * tn;
  const nv = tn / 4; // vec4 pixel groups per thread
  const av = tm % 4 === 0; // weight tile held as vec4s of 4 output channels
  // The register block is written out as named variables (acc{i}_{j}: channel i, pixel group j).
  const accs: string[] = [];
  const fmas: string[] = [];
  for (let j = 0; j < nv; j++) fmas.push(`let b${j} = b_tile[kk * ${bn / 4}u + ${j * tx}u + txi];`);
  if (av) for (let q = 0; q < tm / 4; q++) fmas.push(`let a${q} = a_tile[kk * ${bm / 4}u + tyi * ${tm / 4}u + ${q}u];`);
  else for (let i = 0; i < tm; i++) fmas.push(`let a${i} = a_tile[kk * ${bm}u + tyi * ${tm}u + ${i}u];`);
  for (let i = 0; i < tm; i++) {
    const a = av ? `a${i >> 2}.${'xyzw'[i & 3]}` : `a${i}`;
    for (let j = 0; j < nv; j++) {
      accs.push(`var acc${i}_${j} = vec4<f32>(0.0);`);
      fmas.push(`acc${i}_${j} = fma(vec4<f32>(${a}), b${j}, acc${i}_${j});`);
    }
  }
  // Weight staging: slot → (channel lane kk, 4 output channels) as one vec4, or one channel when tm = 1.
  const aSlots = av ? (BK * bm) / 4 : BK * bm;
  const aStage = `for (var r = 0u; r < ${Math.ceil(aSlots / threads)}u; r++) {
        let slot = li + ${threads}u * r;
        if (slot < ${aSlots}u) {
          let kk = slot % ${BK}u;
          let ci = ci0 + kk;
          ${
            av
              ? `var v = vec4<f32>(0.0);
          for (var e = 0u; e < 4u; e++) {
            let co = co_base + (slot / ${BK}u) * 4u + e;
            if (co < co_end && ci < p.cb) { v[e] = wload((co * p.cin + p.c0 + ci) * kk2 + tap); }
          }
          a_tile[kk * ${bm / 4}u + slot / ${BK}u] = v;`
              : `var v = 0.0;
          let co = co_base + slot / ${BK}u;
          if (co < co_end && ci < p.cb) { v = wload((co * p.cin + p.c0 + ci) * kk2 + tap); }
          a_tile[kk * ${bm}u + slot / ${BK}u] = v;`
          }
        }
      }`;
  spec = {
    name: `conv2d_${tileName}`,
    bindings: ['read', 'read', 'read', 'write'],
    code: /* wgsl */ `
// One dispatch: m output pixels (images of hw_out pixels), output channels [o0, o0 + ob), input channels
// [c0, c0 + cb). The x binding starts at channel c0 of the first image, y at channel o0; *_img are the
// per-image strides inside the bindings and *_skip the alignment slack of their starts. wtype: 0 f32,
// 1 f16, 2 bf16 (halves packed two per u32). Without a bias, binding 2 repeats the weights, unread.
struct P {
  m: u32, hw_out: u32, w_out: u32, h: u32, w: u32,
  cin: u32, c0: u32, cb: u32, o0: u32, ob: u32,
  k: u32, stride: u32, pad: u32,
  x_img: u32, y_img: u32, x_skip: u32, y_skip: u32,
  accumulate: u32, has_bias: u32, wtype: u32, tiles_o: u32, tiles: u32,
  bk: u32, // always BK: a run-time bound keeps the 64-FMA step a loop (unrolled ×BK it compiled 2× slower on lavapipe)
}
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read> wt: array<u32>;
@group(0) @binding(2) var<storage, read> bias: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<uniform> p: P;
${LINEAR_WORKGROUP}

fn wload(i: u32) -> f32 {
  if (p.wtype == 0u) { return bitcast<f32>(wt[i]); }
  let word = wt[i >> 1u];
  if (p.wtype == 1u) { return unpack2x16float(word)[i & 1u]; }
  return bitcast<f32>(select(word << 16u, word & 0xffff0000u, (i & 1u) == 1u));
}

var<workgroup> a_tile: array<${av ? 'vec4<f32>' : 'f32'}, ${aSlots}>; // [kk][co]
var<workgroup> b_tile: array<vec4<f32>, ${(BK * bn) / 4}>; // [kk][pixel / 4]

@compute @workgroup_size(${threads})
fn main(${LINEAR_MAIN_ARGS}) {
  let wg = linear_workgroup(wid, nwg);
  if (wg >= p.tiles) { return; }
  // Output-channel tiles vary fastest: neighbouring workgroups share their input tile in cache.
  let co_base = p.o0 + (wg % p.tiles_o) * ${bm}u;
  let px_base = (wg / p.tiles_o) * ${bn}u;
  let co_end = p.o0 + p.ob;
  let hw = p.h * p.w;
  let kk2 = p.k * p.k;
  let tyi = li / ${tx}u;
  let txi = li % ${tx}u;

  // The input pixel this thread stages (rows lk, lk + ${threads / bn}, … of the BK × BN tile), decoded once.
  let lp = li % ${bn}u;
  let lk = li / ${bn}u;
  let gp = px_base + lp;
  let p_ok = gp < p.m;
  let img = gp / p.hw_out;
  let rem = gp % p.hw_out;
  let iy_org = i32((rem / p.w_out) * p.stride) - i32(p.pad);
  let ix_org = i32((rem % p.w_out) * p.stride) - i32(p.pad);
  let x_pix = p.x_skip + img * p.x_img;

  ${accs.join('\n  ')}

  for (var tap = 0u; tap < kk2; tap++) {
    let iy = iy_org + i32(tap / p.k);
    let ix = ix_org + i32(tap % p.k);
    let in_ok = p_ok && iy >= 0 && iy < i32(p.h) && ix >= 0 && ix < i32(p.w);
    let x_at = x_pix + u32(max(iy, 0)) * p.w + u32(max(ix, 0));
    for (var ci0 = 0u; ci0 < p.cb; ci0 += ${BK}u) {
      for (var r = 0u; r < ${(BK * bn) / threads}u; r++) {
        let kk = lk + ${threads / bn}u * r;
        let ci = ci0 + kk;
        var v = 0.0;
        if (in_ok && ci < p.cb) { v = x[x_at + ci * hw]; }
        b_tile[kk * ${bn / 4}u + lp / 4u][lp % 4u] = v;
      }
      ${aStage}
      workgroupBarrier();
      for (var kk = 0u; kk < p.bk; kk++) {
        ${fmas.join('\n        ')}
      }
      workgroupBarrier();
    }
  }

  // Epilogue: thread (tyi, txi) owns channels co_base + tyi·${tm} + i and pixels px_base + (j·${tx} + txi)·4 + e.
  // Its loops have run-time bounds (the ragged edge) and index a private copy of the accumulators, so the
  // compiler keeps them as loops: unrolled, the stores made up most of lavapipe's compile time (≈ 10 s).
  var res = array<vec4<f32>, ${tm * nv}>(${accs.map((a) => a.split(' ')[1]).join(', ')});
  let co_first = co_base + tyi * ${tm}u;
  let n_i = min(${tm}u, max(co_end, co_first) - co_first);
  for (var j = 0u; j < ${nv}u; j++) {
    let q0 = px_base + (j * ${tx}u + txi) * 4u;
    let n_e = min(4u, max(p.m, q0) - q0);
    for (var e = 0u; e < n_e; e++) {
      let q = q0 + e;
      let at = p.y_skip + (q / p.hw_out) * p.y_img + q % p.hw_out + (co_first - p.o0) * p.hw_out;
      for (var i = 0u; i < n_i; i++) {
        let idx = at + i * p.hw_out;
        var prior = 0.0;
        if (p.accumulate != 0u) { prior = y[idx]; } else if (p.has_bias != 0u) { prior = bias[co_first + i]; }
        y[idx] = res[i * ${nv}u + j][e] + prior;
      }
    }
  }
}`,
  };
  specs.set(tileName, spec);
  return spec;
}

/** Block size ≤ max splitting `total` into equal-ish blocks, rounded up to `quantum` when that still fits. */
function blockSize(total: number, max: number, quantum: number): number {
  const size = Math.ceil(total / Math.ceil(total / max));
  const rounded = Math.ceil(size / quantum) * quantum;
  return rounded <= max ? Math.min(rounded, total) : size;
}

/**
 * y = conv2d(x, w) + bias, as torch.nn.functional.conv2d(x, w, bias, stride, padding).
 * x [N, Cin, H, W] f32; w [Cout, Cin, k, k] f32/f16/bf16; bias [Cout] f32 or null → [N, Cout, H', W'] f32
 * with H' = ⌊(H + 2·padding − k) / stride⌋ + 1.
 */
export function conv2d(gpu: Gpu, x: Tensor, w: Tensor, bias: Tensor | null, opts: Conv2dOptions = {}): Tensor {
  const name = 'conv2d';
  const padding = opts.padding ?? 0;
  const stride = opts.stride ?? 1;
  const shapes = `x ${shapeStr(x.shape)}, w ${shapeStr(w.shape)}${bias ? `, bias ${shapeStr(bias.shape)}` : ''}`;
  if (x.dtype !== 'f32' || x.rank !== 4) throw new ShapeError(name, `x must be f32 [N, Cin, H, W]: ${x}`);
  if (w.rank !== 4 || w.shape[2] !== w.shape[3] || w.shape[1] !== x.shape[1]) {
    throw new ShapeError(name, `w must be [Cout, Cin, k, k] with Cin = x's channels: ${shapes}`);
  }
  if (w.dtype !== 'f32' && w.dtype !== 'f16' && w.dtype !== 'bf16') throw new ShapeError(name, `w must be f32, f16 or bf16: ${w}`);
  if (bias && (bias.dtype !== 'f32' || bias.rank !== 1 || bias.shape[0] !== w.shape[0])) {
    throw new ShapeError(name, `bias must be f32 [Cout]: ${shapes}`);
  }
  if (!Number.isInteger(padding) || padding < 0 || !Number.isInteger(stride) || stride < 1) {
    throw new ShapeError(name, `padding ${padding} must be an integer ≥ 0 and stride ${stride} an integer ≥ 1 (${shapes})`);
  }
  const [n, cin, h, wd] = x.shape;
  const [cout, , k] = w.shape;
  const ho = Math.floor((h + 2 * padding - k) / stride) + 1;
  const wo = Math.floor((wd + 2 * padding - k) / stride) + 1;
  if (k < 1 || ho < 1 || wo < 1) throw new ShapeError(name, `no output pixels for ${shapes}, padding ${padding}, stride ${stride}`);
  if (opts.tile !== undefined && !(opts.tile in TILES)) throw new ShapeError(name, `unknown tile "${opts.tile}"`);
  const outShape = [n, cout, ho, wo];
  const out = opts.out ?? gpu.empty(outShape, 'f32', name);
  if (out.dtype !== 'f32' || out.shape.length !== 4 || out.shape.some((d, i) => d !== outShape[i])) {
    throw new ShapeError(name, `out ${out} must be f32 ${shapeStr(outShape)} (${shapes})`);
  }
  if (out.buffer === x.buffer) throw new ShapeError(name, `out must not share x's buffer (${shapes})`);
  if (n === 0 || cout === 0) return out;

  const hw = h * wd;
  const hwo = ho * wo;
  const cap = bindingCap(gpu, opts.maxBindingBytes);
  // A binding that starts mid-way through an alignment unit carries up to align − 4 bytes of slack.
  const align = gpu.limits.minStorageBufferOffsetAlignment;
  const slackOf = (t: Tensor, planeElems: number) => (t.byteOffset % align === 0 && (planeElems * 4) % align === 0 ? 0 : align - 4);
  const xSlack = slackOf(x, hw);
  const ySlack = slackOf(out, hwo);

  const dispatch = (n0: number, nb: number, c0: number, cb: number, o0: number, ob: number) => {
    const tileName = opts.tile ?? pickTile(ob);
    const { ty, tx, tm, tn } = TILES[tileName];
    const xr = elementRange(gpu, x, (n0 * cin + c0) * hw, ((nb - 1) * cin + cb) * hw);
    const yr = elementRange(gpu, out, (n0 * cout + o0) * hwo, ((nb - 1) * cout + ob) * hwo);
    const m = nb * hwo;
    const tilesO = Math.ceil(ob / (ty * tm));
    const tiles = tilesO * Math.ceil(m / (tx * tn));
    const params = new Params().u32(
      m, hwo, wo, h, wd,
      cin, c0, cb, o0, ob,
      k, stride, padding,
      cin * hw, cout * hwo, xr.skip, yr.skip,
      c0 > 0 ? 1 : 0, bias ? 1 : 0, WTYPE[w.dtype], tilesO, tiles, BK,
    );
    gpu.run(convSpec(tileName), [xr.range, w, bias ?? w, yr.range], params, tiles);
  };

  const xImg = cin * hw * 4;
  const yImg = cout * hwo * 4;
  const wholeImages = xImg + xSlack <= cap && yImg + ySlack <= cap;
  if (opts.method !== undefined && opts.method !== 'direct' && opts.method !== 'gemm') throw new ShapeError(name, `method "${opts.method as string}" is not one of: direct, gemm`);
  const gemmApplies = wholeImages && w.dtype !== 'bf16' && opts.tile === undefined;
  if (opts.method === 'gemm' && !gemmApplies) {
    throw new ShapeError(name, `method 'gemm' needs f32/f16 weights, no tile and one image of x and y within a binding (${shapes})`);
  }
  if (gemmApplies && (opts.method ?? (gpu.tuning === 'cpu' ? 'gemm' : 'direct')) === 'gemm') {
    conv2dByGemm(gpu, x, w, bias, out, { k, stride, padding, ho, wo, cap });
    return out;
  }
  if (wholeImages) {
    const per = Math.min(Math.floor((cap - xSlack) / xImg), Math.floor((cap - ySlack) / yImg));
    for (let n0 = 0; n0 < n; n0 += per) dispatch(n0, Math.min(per, n - n0), 0, cin, 0, cout);
    return out;
  }
  const cbMax = Math.floor((cap - xSlack) / (hw * 4));
  const obMax = Math.floor((cap - ySlack) / (hwo * 4));
  if (cbMax < 1) throw new LimitError(`${name}: one input channel plane of ${shapes}`, 'maxStorageBufferBindingSize', hw * 4 + xSlack, cap);
  if (obMax < 1) throw new LimitError(`${name}: one output channel plane [${ho}, ${wo}] of ${shapes}`, 'maxStorageBufferBindingSize', hwo * 4 + ySlack, cap);
  const cb = blockSize(cin, cbMax, BK);
  const ob = blockSize(cout, obMax, 32);
  for (let i = 0; i < n; i++) {
    for (let o0 = 0; o0 < cout; o0 += ob) {
      for (let c0 = 0; c0 < cin; c0 += cb) dispatch(i, 1, c0, Math.min(cb, cin - c0), o0, Math.min(ob, cout - o0));
    }
  }
  return out;
}

/** FLOPs of a conv2d (2 per multiply-add), for benchmarks. */
export function conv2dFlops(n: number, cin: number, cout: number, ho: number, wo: number, k: number): number {
  return 2 * n * cout * ho * wo * cin * k * k;
}

// ---- float64 reference -----------------------------------------------------------------------

/** Float64 conv2d on host data: x [N, Cin, H, W], w [Cout, Cin, k, k] (as numbers), bias [Cout] or null. */
export function conv2dRef(
  x: ArrayLike<number>,
  xShape: readonly number[],
  w: ArrayLike<number>,
  wShape: readonly number[],
  bias: ArrayLike<number> | null,
  padding = 0,
  stride = 1,
): Float64Array {
  const [n, cin, h, wd] = xShape;
  const [cout, , k] = wShape;
  const ho = Math.floor((h + 2 * padding - k) / stride) + 1;
  const wo = Math.floor((wd + 2 * padding - k) / stride) + 1;
  const y = new Float64Array(n * cout * ho * wo);
  for (let b = 0; b < n; b++) {
    for (let co = 0; co < cout; co++) {
      for (let oy = 0; oy < ho; oy++) {
        for (let ox = 0; ox < wo; ox++) {
          let s = bias ? bias[co] : 0;
          for (let ci = 0; ci < cin; ci++) {
            for (let ky = 0; ky < k; ky++) {
              const iy = oy * stride + ky - padding;
              if (iy < 0 || iy >= h) continue;
              for (let kx = 0; kx < k; kx++) {
                const ix = ox * stride + kx - padding;
                if (ix < 0 || ix >= wd) continue;
                s += w[((co * cin + ci) * k + ky) * k + kx] * x[((b * cin + ci) * h + iy) * wd + ix];
              }
            }
          }
          y[((b * cout + co) * ho + oy) * wo + ox] = s;
        }
      }
    }
  }
  return y;
}
