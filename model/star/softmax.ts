// Row softmax, softmax(scale·x) over the last dim, for the VQ-VAE decoder's single-head attention. That
// attention has head dim = channels (640 in the released VAE), beyond the flash kernel's 256, so the decoder
// forms the score matrix explicitly (at most 4096² at the 64×64 level) and normalises it here.
// One workgroup per row; max and sum are reduced in workgroup memory, in f32 like PyTorch's CPU softmax.

import type { Gpu } from '../../engine/device.js';
import { ShapeError } from '../../engine/errors.js';
import { Params } from '../../engine/params.js';
import type { KernelSpec } from '../../engine/pipelines.js';
import type { Tensor } from '../../engine/tensor.js';
import { LINEAR_WORKGROUP } from '../../kernels/wgsl.js';

const WG = 64;

const SOFTMAX: KernelSpec = {
  name: 'star_softmax_rows',
  bindings: ['read', 'write'],
  code: /* wgsl */ `
struct P { rows: u32, n: u32, scale: f32 }
@group(0) @binding(0) var<storage, read> x: array<f32>;
@group(0) @binding(1) var<storage, read_write> y: array<f32>;
@group(0) @binding(2) var<uniform> p: P;
var<workgroup> red: array<f32, ${WG}>;
${LINEAR_WORKGROUP}
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let row = linear_workgroup(wid, nwg);
  // Uniform control flow: every invocation of a workgroup shares the row, so they all return together.
  if (row >= p.rows) { return; }
  let base = row * p.n;
  var m = -3.4028234663852886e38f;
  for (var j = li; j < p.n; j += ${WG}u) { m = max(m, p.scale * x[base + j]); }
  red[li] = m;
  workgroupBarrier();
  for (var s = ${WG / 2}u; s > 0u; s >>= 1u) {
    if (li < s) { red[li] = max(red[li], red[li + s]); }
    workgroupBarrier();
  }
  let mx = red[0];
  workgroupBarrier();
  var sum = 0.0;
  for (var j = li; j < p.n; j += ${WG}u) {
    let e = exp(p.scale * x[base + j] - mx);
    y[base + j] = e;
    sum += e;
  }
  red[li] = sum;
  workgroupBarrier();
  for (var s = ${WG / 2}u; s > 0u; s >>= 1u) {
    if (li < s) { red[li] = red[li] + red[li + s]; }
    workgroupBarrier();
  }
  let inv = 1.0 / red[0];
  for (var j = li; j < p.n; j += ${WG}u) { y[base + j] = y[base + j] * inv; }
}`,
};

/** softmax(scale·x) along the last dim of an f32 tensor → a new tensor of the same shape. */
export function softmaxRows(gpu: Gpu, x: Tensor, scale = 1): Tensor {
  if (x.dtype !== 'f32' || x.rank < 1) throw new ShapeError('star_softmax_rows', `x ${x} must be f32 [..., N]`);
  const n = x.shape[x.rank - 1];
  const rows = n === 0 ? 0 : x.numel / n;
  const out = gpu.empty(x.shape, 'f32', 'softmax');
  if (rows > 0) gpu.run(SOFTMAX, [x, out], new Params().u32(rows, n).f32(scale), rows);
  return out;
}

/** float64 reference. */
export function softmaxRowsRef(x: ArrayLike<number>, n: number, scale = 1): Float64Array {
  const out = new Float64Array(x.length);
  for (let r = 0; r < x.length / n; r++) {
    let m = -Infinity;
    for (let j = 0; j < n; j++) m = Math.max(m, scale * x[r * n + j]);
    let s = 0;
    for (let j = 0; j < n; j++) s += out[r * n + j] = Math.exp(scale * x[r * n + j] - m);
    for (let j = 0; j < n; j++) out[r * n + j] /= s;
  }
  return out;
}
