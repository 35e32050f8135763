// Token layout ↔ VAE grid layout of Infinity's bit latents, with the optional spatial patchify of the 8B
// model (PyTorch pixel_shuffle / pixel_unshuffle, factor p). A token (y, x) of a transformer grid (h, w)
// carries d·p² bits; bit k = c·p² + i·p + j is VAE channel c at VAE cell (p·y + i, p·x + j).
// With p = 1 both kernels are the plain [B, h·w, d] ↔ [B, d, h, w] transposes.
//
//   bitsToCodes   bits i32 [B, h·w, d·p²] → codes f32 [B, d, p·h, p·w], bit b ↦ (2b − 1)/√d
//   gridToTokens  f32 [B, d, p·h, p·w] → [B, h·w, d·p²]  (next-scale input before word_embed)

import type { Gpu } from '../../engine/device.js';
import { ShapeError, shapeStr } from '../../engine/errors.js';
import { Params } from '../../engine/params.js';
import type { KernelSpec } from '../../engine/pipelines.js';
import type { Tensor } from '../../engine/tensor.js';
import { LINEAR_WORKGROUP } from '../../kernels/wgsl.js';

const WG = 256;

/** The code value of a set bit, as upstream computes it: l2norm of a ±1 vector of d entries, in f32. */
export function codeMagnitude(channels: number): number {
  return Math.fround(1 / Math.fround(Math.sqrt(channels)));
}

// Output element (b, c, Y, X) of [B, d, p·h, p·w] ↔ token (b, y·w + x) bit c·p² + (Y mod p)·p + (X mod p).
// Both kernels walk the grid side and compute the token-side index the same way.
const GRID_INDEX = /* wgsl */ `
struct P { n: u32, d: u32, h: u32, w: u32, p: u32, magnitude: f32 }
fn token_index(i: u32) -> u32 {
  let gw = p.w * p.p;
  let gh = p.h * p.p;
  let X = i % gw;
  let Y = (i / gw) % gh;
  let c = (i / (gw * gh)) % p.d;
  let b = i / (gw * gh * p.d);
  let bits = p.d * p.p * p.p;
  let t = (Y / p.p) * p.w + X / p.p;
  let k = c * p.p * p.p + (Y % p.p) * p.p + X % p.p;
  return (b * p.h * p.w + t) * bits + k;
}`;

const BITS_TO_CODES: KernelSpec = {
  name: 'infinity_bits_to_codes',
  bindings: ['read', 'write'],
  code: /* wgsl */ `
${GRID_INDEX}
@group(0) @binding(0) var<storage, read> bits: array<i32>;
@group(0) @binding(1) var<storage, read_write> codes: array<f32>;
@group(0) @binding(2) var<uniform> p: P;
${LINEAR_WORKGROUP}
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let i = linear_workgroup(wid, nwg) * ${WG}u + li;
  if (i >= p.n) { return; }
  codes[i] = select(-p.magnitude, p.magnitude, bits[token_index(i)] != 0);
}`,
};

const GRID_TO_TOKENS: KernelSpec = {
  name: 'infinity_grid_to_tokens',
  bindings: ['read', 'write'],
  code: /* wgsl */ `
${GRID_INDEX}
@group(0) @binding(0) var<storage, read> grid: array<f32>;
@group(0) @binding(1) var<storage, read_write> tokens: array<f32>;
@group(0) @binding(2) var<uniform> p: P;
${LINEAR_WORKGROUP}
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let i = linear_workgroup(wid, nwg) * ${WG}u + li;
  if (i >= p.n) { return; }
  tokens[token_index(i)] = grid[i];
}`,
};

export interface PatchGeometry {
  /** Transformer grid of the scale. */
  h: number;
  w: number;
  /** VAE channels d and patch factor p (bits per token = d·p²). */
  channels: number;
  patch: number;
}

function params(n: number, g: PatchGeometry): Params {
  return new Params().u32(n, g.channels, g.h, g.w, g.patch).f32(codeMagnitude(g.channels));
}

/** bits i32 [B, h·w, d·p²] (0/1) → codes f32 [B, d, p·h, p·w]. */
export function bitsToCodes(gpu: Gpu, bits: Tensor, g: PatchGeometry): Tensor {
  const name = BITS_TO_CODES.name;
  const perToken = g.channels * g.patch * g.patch;
  if (bits.dtype !== 'i32' || bits.rank !== 3 || bits.shape[1] !== g.h * g.w || bits.shape[2] !== perToken) {
    throw new ShapeError(name, `bits ${shapeStr(bits.shape)} ${bits.dtype} must be i32 [B, ${g.h * g.w}, ${perToken}] for grid ${g.h}×${g.w}`);
  }
  const out = gpu.empty([bits.shape[0], g.channels, g.patch * g.h, g.patch * g.w], 'f32', name);
  gpu.run(BITS_TO_CODES, [bits, out], params(out.numel, g), Math.ceil(out.numel / WG));
  return out;
}

/** grid f32 [B, d, p·h, p·w] → tokens f32 [B, h·w, d·p²]. */
export function gridToTokens(gpu: Gpu, grid: Tensor, g: PatchGeometry): Tensor {
  const name = GRID_TO_TOKENS.name;
  if (grid.dtype !== 'f32' || grid.rank !== 4 || grid.shape[1] !== g.channels || grid.shape[2] !== g.patch * g.h || grid.shape[3] !== g.patch * g.w) {
    throw new ShapeError(name, `grid ${shapeStr(grid.shape)} must be f32 [B, ${g.channels}, ${g.patch * g.h}, ${g.patch * g.w}]`);
  }
  const out = gpu.empty([grid.shape[0], g.h * g.w, g.channels * g.patch * g.patch], 'f32', name);
  gpu.run(GRID_TO_TOKENS, [grid, out], params(grid.numel, g), Math.ceil(grid.numel / WG));
  return out;
}

// ---- float64 references (written from the PyTorch definitions, independently of the index helper) ----

/** pixel_shuffle(x, p) on [B, d·p², h, w] → [B, d, p·h, p·w]: out[b, c, y·p+i, x·p+j] = in[b, c·p²+i·p+j, y, x]. */
export function pixelShuffleRef(x: ArrayLike<number>, b: number, cIn: number, h: number, w: number, p: number): Float64Array {
  const d = cIn / (p * p);
  const out = new Float64Array(x.length);
  for (let n = 0; n < b; n++)
    for (let c = 0; c < d; c++)
      for (let i = 0; i < p; i++)
        for (let j = 0; j < p; j++)
          for (let y = 0; y < h; y++)
            for (let xx = 0; xx < w; xx++) {
              const src = ((n * cIn + c * p * p + i * p + j) * h + y) * w + xx;
              const dst = ((n * d + c) * p * h + y * p + i) * p * w + xx * p + j;
              out[dst] = x[src];
            }
  return out;
}

/** pixel_unshuffle(x, p) on [B, d, p·h, p·w] → [B, d·p², h, w] (the inverse of pixelShuffleRef). */
export function pixelUnshuffleRef(x: ArrayLike<number>, b: number, d: number, hp: number, wp: number, p: number): Float64Array {
  const h = hp / p;
  const w = wp / p;
  const out = new Float64Array(x.length);
  for (let n = 0; n < b; n++)
    for (let c = 0; c < d; c++)
      for (let i = 0; i < p; i++)
        for (let j = 0; j < p; j++)
          for (let y = 0; y < h; y++)
            for (let xx = 0; xx < w; xx++) {
              const dst = ((n * d * p * p + c * p * p + i * p + j) * h + y) * w + xx;
              const src = ((n * d + c) * hp + y * p + i) * wp + xx * p + j;
              out[dst] = x[src];
            }
  return out;
}

/** [B, L, C] ↔ [B, C, L] (token-major ↔ channel-major). */
export function transposeRef(x: ArrayLike<number>, b: number, rows: number, cols: number): Float64Array {
  const out = new Float64Array(x.length);
  for (let n = 0; n < b; n++) for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[(n * cols + c) * rows + r] = x[(n * rows + r) * cols + c];
  return out;
}

/** bitsToCodes in float64: codes = pixel_shuffle((2·bits − 1)/√d as [B, d·p², h, w]). */
export function bitsToCodesRef(bits: ArrayLike<number>, batch: number, g: PatchGeometry): Float64Array {
  const perToken = g.channels * g.patch * g.patch;
  const signed = Float64Array.from(bits, (v) => (2 * v - 1) / Math.sqrt(g.channels));
  const chw = transposeRef(signed, batch, g.h * g.w, perToken); // [B, d·p², h·w]
  return pixelShuffleRef(chw, batch, perToken, g.h, g.w, g.patch);
}

/** gridToTokens in float64: pixel_unshuffle, then [B, d·p², h·w] → [B, h·w, d·p²]. */
export function gridToTokensRef(grid: ArrayLike<number>, batch: number, g: PatchGeometry): Float64Array {
  const un = pixelUnshuffleRef(grid, batch, g.channels, g.patch * g.h, g.patch * g.w, g.patch);
  return transposeRef(un, batch, g.channels * g.patch * g.patch, g.h * g.w);
}
