// Layout family: row gather (embedding lookup), row scatter, batched 2-D transpose through workgroup
// memory, row copies at any element offset (KV-cache appends) and column slices. Each has an exact CPU
// reference.
//
// Every launcher binds *windows* (see `elementWindow`): the buffer range from the aligned byte at or below
// the first element it touches, with that element's index inside the binding passed in the uniforms.
// So row offsets and views need no 16-byte alignment, and tensors larger than one binding
// (maxStorageBufferBindingSize) are processed in row chunks, one dispatch per chunk.

import type { Gpu } from '../engine/device.js';
import { type DType, isFloat, itemSize } from '../engine/dtype.js';
import { ShapeError, shapeStr } from '../engine/errors.js';
import { Params } from '../engine/params.js';
import type { BufferRange, KernelSpec } from '../engine/pipelines.js';
import type { Tensor } from '../engine/tensor.js';
import { LINEAR_MAIN_ARGS, LINEAR_WORKGROUP, ceilDiv, loadAsF32, storageElement } from './wgsl.js';

const WG = 256;

// ---- windows: bindings at any element offset -------------------------------------------------

/** A binding covering some elements of a tensor; `first` is the index of the first of them within the
 *  binding, counted in the tensor's elements (halves for f16/bf16, which kernels read as packed u32). */
export interface Window {
  range: BufferRange;
  first: number;
}

/** Binds elements [start, start + count) of `t`, starting at the storage-aligned byte at or below them. */
export function elementWindow(gpu: Gpu, t: Tensor, start: number, count: number): Window {
  t.assertAlive();
  const size = itemSize(t.dtype);
  const begin = t.byteOffset + start * size;
  const base = begin - (begin % gpu.limits.minStorageBufferOffsetAlignment);
  const end = Math.ceil((begin + count * size) / 4) * 4; // bindings are whole 32-bit words
  const bytes = Math.min(Math.max(4, end - base), t.buffer.size - base);
  return { range: { buffer: t.buffer, offset: base, size: bytes }, first: (begin - base) / size };
}

/** Elements of `dtype` that always fit one window (a binding, less the slack of aligning its start down). */
export function windowElements(gpu: Gpu, dtype: DType): number {
  const slack = gpu.limits.minStorageBufferOffsetAlignment + 4;
  return Math.floor((gpu.limits.maxStorageBufferBindingSize - slack) / itemSize(dtype));
}

/** Rows of `cols` elements per window (at least one: a single larger row fails in gpu.run with a LimitError). */
function windowRows(gpu: Gpu, dtype: DType, cols: number): number {
  return Math.max(1, Math.floor(windowElements(gpu, dtype) / Math.max(1, cols)));
}

/** WebGPU rejects a dispatch that binds one buffer as writable and also through another binding (the
 *  usage rule is per buffer, whatever the ranges), so a written tensor must not share a buffer with an input. */
export function assertSeparateBuffers(kernel: string, written: Window, writtenName: string, others: Record<string, Window>): void {
  for (const [name, w] of Object.entries(others)) {
    if (w.range.buffer === written.range.buffer) throw new ShapeError(kernel, `${writtenName} shares a buffer with ${name}; use separate tensors`);
  }
}

function memo<K, V>(make: (key: K) => V): (key: K) => V {
  const cache = new Map<K, V>();
  return (key) => {
    let v = cache.get(key);
    if (v === undefined) cache.set(key, (v = make(key)));
    return v;
  };
}

// ---- gatherRows ------------------------------------------------------------------------------

// One invocation per output element. Indices are clamped into [0, V): the launcher cannot see them (they
// live on the GPU), and a read past the table would be undefined behaviour, so a bad id yields row 0 or V-1.
// A table bigger than one binding is bound in row chunks; each invocation writes only when its row falls
// in the current chunk, so every output element is written by exactly one dispatch.
const gatherSpec = memo(
  (dtype: DType): KernelSpec => ({
    name: `gather_rows_${dtype}`,
    bindings: ['read', 'read', 'write'],
    code: /* wgsl */ `
struct P { n: u32, C: u32, V: u32, v0: u32, vc: u32, tFirst: u32, iFirst: u32, oFirst: u32 }
@group(0) @binding(0) var<storage, read> table: array<${storageElement(dtype)}>;
@group(0) @binding(1) var<storage, read> indices: array<i32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<uniform> p: P;
${loadAsF32('load_table', 'table', dtype)}
${LINEAR_WORKGROUP}
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let e = linear_workgroup(wid, nwg) * ${WG}u + li;
  if (e >= p.n) { return; }
  let k = e / p.C;
  let c = e - k * p.C;
  let row = u32(clamp(indices[p.iFirst + k], 0, i32(p.V) - 1));
  if (row < p.v0 || row >= p.v0 + p.vc) { return; }
  out[p.oFirst + e] = load_table(p.tFirst + (row - p.v0) * p.C + c);
}`,
  }),
);

/**
 * out[k] = table[indices[k]] (embedding lookup): table [V, C] f32/f16/bf16, indices i32 of any shape
 * ([n] in the contract) → f32 [...indices.shape, C]. Out-of-range indices are NOT detected (they are on
 * the GPU): the kernel clamps them to 0 or V-1 so it never reads outside the table.
 */
export function gatherRows(gpu: Gpu, table: Tensor, indices: Tensor, opts: { out?: Tensor } = {}): Tensor {
  const name = 'gather_rows';
  if (table.rank !== 2 || !isFloat(table.dtype)) throw new ShapeError(name, `table ${table} must be [V, C] f32/f16/bf16`);
  if (indices.dtype !== 'i32') throw new ShapeError(name, `indices ${indices} must be i32`);
  const [V, C] = table.shape;
  const n = indices.numel;
  if (V === 0 && n > 0) throw new ShapeError(name, `table ${shapeStr(table.shape)} has no rows to gather ${n} indices from`);
  const out = opts.out ?? gpu.empty([...indices.shape, C], 'f32', name);
  if (out.dtype !== 'f32' || out.numel !== n * C) {
    throw new ShapeError(name, `out ${out} must be f32 with ${n}·${C} elements (indices ${shapeStr(indices.shape)}, table ${shapeStr(table.shape)})`);
  }
  if (n === 0 || C === 0) return out;
  const outRows = windowRows(gpu, 'f32', C);
  const tableRows = windowRows(gpu, table.dtype, C);
  for (let r0 = 0; r0 < n; r0 += outRows) {
    const rc = Math.min(outRows, n - r0);
    const iw = elementWindow(gpu, indices, r0, rc);
    const ow = elementWindow(gpu, out, r0 * C, rc * C);
    for (let v0 = 0; v0 < V; v0 += tableRows) {
      const vc = Math.min(tableRows, V - v0);
      const tw = elementWindow(gpu, table, v0 * C, vc * C);
      assertSeparateBuffers(name, ow, 'out', { table: tw, indices: iw });
      const params = new Params().u32(rc * C, C, V, v0, vc, tw.first, iw.first, ow.first);
      gpu.run(gatherSpec(table.dtype), [tw.range, iw.range, ow.range], params, ceilDiv(rc * C, WG));
    }
  }
  return out;
}

/** Exact reference (same clamping). `table` holds values (halves already widened). */
export function gatherRowsRef(table: ArrayLike<number>, C: number, indices: ArrayLike<number>): Float64Array {
  const V = table.length / C;
  const out = new Float64Array(indices.length * C);
  for (let k = 0; k < indices.length; k++) {
    const row = Math.min(Math.max(indices[k], 0), V - 1);
    for (let c = 0; c < C; c++) out[k * C + c] = table[row * C + c];
  }
  return out;
}

// ---- scatterRows -----------------------------------------------------------------------------

// One invocation per source element; rows whose index is outside [0, V) are dropped (clamping would
// overwrite a real row). Duplicate indices race: one of the rows lands, which one is unspecified.
const SCATTER: KernelSpec = {
  name: 'scatter_rows',
  bindings: ['read', 'read', 'write'],
  code: /* wgsl */ `
struct P { n: u32, C: u32, v0: u32, vc: u32, sFirst: u32, iFirst: u32, dFirst: u32 }
@group(0) @binding(0) var<storage, read> src: array<f32>;
@group(0) @binding(1) var<storage, read> indices: array<i32>;
@group(0) @binding(2) var<storage, read_write> dst: array<f32>;
@group(0) @binding(3) var<uniform> p: P;
${LINEAR_WORKGROUP}
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let e = linear_workgroup(wid, nwg) * ${WG}u + li;
  if (e >= p.n) { return; }
  let k = e / p.C;
  let c = e - k * p.C;
  // Chunks cover [0, V), so this also drops ids outside it (negative ones wrap to huge u32).
  let row = u32(indices[p.iFirst + k]);
  if (row < p.v0 || row >= p.v0 + p.vc) { return; }
  dst[p.dFirst + (row - p.v0) * p.C + c] = src[p.sFirst + e];
}`,
};

/**
 * In place: dst[indices[k]] = src[k] for every row k. src [n, C] (any leading dims, flattened to rows),
 * indices i32 with n elements, dst [V, C] f32. Out-of-range indices are skipped; with duplicate indices
 * an unspecified one of the rows wins. Returns dst.
 */
export function scatterRows(gpu: Gpu, src: Tensor, indices: Tensor, dst: Tensor): Tensor {
  const name = 'scatter_rows';
  const shapes = `src ${shapeStr(src.shape)}, indices ${shapeStr(indices.shape)}, dst ${shapeStr(dst.shape)}`;
  if (src.dtype !== 'f32' || dst.dtype !== 'f32' || indices.dtype !== 'i32') {
    throw new ShapeError(name, `src ${src} and dst ${dst} must be f32, indices ${indices} i32`);
  }
  if (dst.rank !== 2 || src.rank < 1) throw new ShapeError(name, `dst must be [V, C] and src [..., C]: ${shapes}`);
  const [V, C] = dst.shape;
  const n = indices.numel;
  if (src.shape[src.rank - 1] !== C || src.numel !== n * C) throw new ShapeError(name, `src must hold one row of ${C} per index: ${shapes}`);
  if (n === 0 || C === 0 || V === 0) return dst;
  const srcRows = windowRows(gpu, 'f32', C);
  const dstRows = windowRows(gpu, 'f32', C);
  for (let r0 = 0; r0 < n; r0 += srcRows) {
    const rc = Math.min(srcRows, n - r0);
    const sw = elementWindow(gpu, src, r0 * C, rc * C);
    const iw = elementWindow(gpu, indices, r0, rc);
    for (let v0 = 0; v0 < V; v0 += dstRows) {
      const vc = Math.min(dstRows, V - v0);
      const dw = elementWindow(gpu, dst, v0 * C, vc * C);
      assertSeparateBuffers(name, dw, 'dst', { src: sw, indices: iw });
      const params = new Params().u32(rc * C, C, v0, vc, sw.first, iw.first, dw.first);
      gpu.run(SCATTER, [sw.range, iw.range, dw.range], params, ceilDiv(rc * C, WG));
    }
  }
  return dst;
}

/** Exact reference for indices without duplicates: a copy of dst with the rows replaced. */
export function scatterRowsRef(src: ArrayLike<number>, indices: ArrayLike<number>, dst: ArrayLike<number>, C: number): Float64Array {
  const out = Float64Array.from(dst);
  const V = dst.length / C;
  for (let k = 0; k < indices.length; k++) {
    const row = indices[k];
    if (row < 0 || row >= V) continue;
    for (let c = 0; c < C; c++) out[row * C + c] = src[k * C + c];
  }
  return out;
}

// ---- transpose2d -----------------------------------------------------------------------------

// 16×16 tiles: a workgroup reads a tile with consecutive threads on consecutive columns (coalesced),
// then writes it transposed, again consecutive threads on consecutive output columns. The tile row
// stride is 17 words so the transposed read hits 16 different banks. Data moves as raw 32-bit words,
// so f32, i32 and u32 (NaN payloads included) go through bit-exact.
const T = 16;
const TRANSPOSE: KernelSpec = {
  name: 'transpose2d',
  bindings: ['read', 'write'],
  code: /* wgsl */ `
struct P { R: u32, C: u32, B: u32, tilesC: u32, tilesR: u32, xFirst: u32, yFirst: u32 }
@group(0) @binding(0) var<storage, read> x: array<u32>;
@group(0) @binding(1) var<storage, read_write> y: array<u32>;
@group(0) @binding(2) var<uniform> p: P;
var<workgroup> tile: array<u32, ${T * (T + 1)}>;
${LINEAR_WORKGROUP}
@compute @workgroup_size(${T}, ${T})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
  // Linear tile id over (batch, tile row, tile col), folded by gpu.run when large; uniform per workgroup,
  // so returning here keeps the barrier below in uniform control flow.
  var t = linear_workgroup(wid, nwg);
  let tc = t % p.tilesC;
  t = t / p.tilesC;
  let tr = t % p.tilesR;
  let b = t / p.tilesR;
  if (b >= p.B) { return; }
  let base = b * p.R * p.C;
  let r = tr * ${T}u + lid.y;
  let c = tc * ${T}u + lid.x;
  if (r < p.R && c < p.C) { tile[lid.y * ${T + 1}u + lid.x] = x[p.xFirst + base + r * p.C + c]; }
  workgroupBarrier();
  let orow = tc * ${T}u + lid.y; // output row = input column
  let ocol = tr * ${T}u + lid.x; // output column = input row
  if (orow < p.C && ocol < p.R) { y[p.yFirst + base + orow * p.R + ocol] = tile[lid.x * ${T + 1}u + lid.y]; }
}`,
};

// CPU adapters (lavapipe) compile workgroup memory and barriers into slow per-lane code: there a kernel without
// tiles — each invocation reads 4 consecutive elements of a row and writes them down a column — runs ≈ 9×
// faster (2.7 ms against 24 ms for [2521, 512] on lavapipe).
const TRANSPOSE_CPU: KernelSpec = {
  name: 'transpose2d_rows',
  bindings: ['read', 'write'],
  code: /* wgsl */ `
struct P { R: u32, C: u32, B: u32, quads: u32, xFirst: u32, yFirst: u32 }
@group(0) @binding(0) var<storage, read> x: array<u32>;
@group(0) @binding(1) var<storage, read_write> y: array<u32>;
@group(0) @binding(2) var<uniform> p: P;
${LINEAR_WORKGROUP}
@compute @workgroup_size(64)
fn main(${LINEAR_MAIN_ARGS}) {
  // Invocation id → (batch b, row r, quad q of the row's columns).
  var t = linear_workgroup(wid, nwg) * 64u + li;
  let q = t % p.quads;
  t = t / p.quads;
  let r = t % p.R;
  let b = t / p.R;
  if (b >= p.B) { return; }
  let base = b * p.R * p.C;
  for (var u = 0u; u < 4u; u++) {
    let c = 4u * q + u;
    if (c < p.C) { y[p.yFirst + base + c * p.R + r] = x[p.xFirst + base + r * p.C + c]; }
  }
}`,
};

/** [..., R, C] → [..., C, R] (the last two dims swapped, batched over the leading ones). f32, i32 or u32. */
export function transpose2d(gpu: Gpu, x: Tensor, opts: { out?: Tensor } = {}): Tensor {
  const name = 'transpose2d';
  if (x.rank < 2) throw new ShapeError(name, `x ${shapeStr(x.shape)} needs at least 2 dims`);
  if (itemSize(x.dtype) !== 4) throw new ShapeError(name, `x ${x} must be f32, i32 or u32 (16-bit types are not supported)`);
  const R = x.shape[x.rank - 2];
  const C = x.shape[x.rank - 1];
  const lead = x.shape.slice(0, -2);
  const out = opts.out ?? gpu.empty([...lead, C, R], x.dtype, name);
  if (out.dtype !== x.dtype || out.numel !== x.numel) throw new ShapeError(name, `out ${out} vs x ${x}: need ${x.dtype} [${[...lead, C, R].join(', ')}]`);
  const B = x.numel / Math.max(1, R * C);
  if (x.numel === 0) return out;
  const tilesR = ceilDiv(R, T);
  const tilesC = ceilDiv(C, T);
  const perChunk = windowRows(gpu, x.dtype, R * C);
  for (let b0 = 0; b0 < B; b0 += perChunk) {
    const bc = Math.min(perChunk, B - b0);
    const xw = elementWindow(gpu, x, b0 * R * C, bc * R * C);
    const yw = elementWindow(gpu, out, b0 * R * C, bc * R * C);
    assertSeparateBuffers(name, yw, 'out', { x: xw });
    if (gpu.tuning === 'cpu') {
      const quads = ceilDiv(C, 4);
      gpu.run(TRANSPOSE_CPU, [xw.range, yw.range], new Params().u32(R, C, bc, quads, xw.first, yw.first), ceilDiv(bc * R * quads, 64));
      continue;
    }
    const params = new Params().u32(R, C, bc, tilesC, tilesR, xw.first, yw.first);
    gpu.run(TRANSPOSE, [xw.range, yw.range], params, bc * tilesR * tilesC);
  }
  return out;
}

/** Exact reference: x holds B·R·C values, returned as B·C·R. */
export function transpose2dRef(x: ArrayLike<number>, R: number, C: number): Float64Array {
  const out = new Float64Array(x.length);
  const B = x.length / Math.max(1, R * C);
  for (let b = 0; b < B; b++) for (let r = 0; r < R; r++) for (let c = 0; c < C; c++) out[b * R * C + c * R + r] = x[b * R * C + r * C + c];
  return out;
}

// ---- copyRows, copyColumns -------------------------------------------------------------------

// Both are one strided copy into a contiguous destination: destination element j comes from source
// element sFirst + (j / len)·sStride + j % len (segments of `len` elements, `sStride` apart). Data moves
// as raw bits, so any dtype is exact.
const SRC_INDEX = /* wgsl */ `
fn src_index(j: u32) -> u32 { let seg = j / p.len; return p.sFirst + seg * p.sStride + (j - seg * p.len); }`;

// 32-bit elements: one invocation per element.
const COPY_WORDS: KernelSpec = {
  name: 'strided_copy',
  bindings: ['read', 'write'],
  code: /* wgsl */ `
struct P { n: u32, len: u32, sStride: u32, sFirst: u32, dFirst: u32 }
@group(0) @binding(0) var<storage, read> src: array<u32>;
@group(0) @binding(1) var<storage, read_write> dst: array<u32>;
@group(0) @binding(2) var<uniform> p: P;
${SRC_INDEX}
${LINEAR_WORKGROUP}
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let j = linear_workgroup(wid, nwg) * ${WG}u + li;
  if (j < p.n) { dst[p.dFirst + j] = src[src_index(j)]; }
}`,
};

// 16-bit elements at any half offset: one invocation per destination word, so two invocations never write
// the same word. A word only partly inside the range keeps its other half (read-modify-write).
const COPY_HALVES: KernelSpec = {
  name: 'strided_copy_16',
  bindings: ['read', 'write'],
  code: /* wgsl */ `
struct P { n: u32, len: u32, sStride: u32, sFirst: u32, dFirst: u32 }
@group(0) @binding(0) var<storage, read> src: array<u32>;
@group(0) @binding(1) var<storage, read_write> dst: array<u32>;
@group(0) @binding(2) var<uniform> p: P;
${SRC_INDEX}
fn src_half(j: u32) -> u32 { let i = src_index(j); return (src[i >> 1u] >> ((i & 1u) * 16u)) & 0xffffu; }
${LINEAR_WORKGROUP}
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let w = (p.dFirst >> 1u) + linear_workgroup(wid, nwg) * ${WG}u + li;
  let lo = 2u * w;
  let end = p.dFirst + p.n;
  if (lo >= end) { return; }
  let inLo = lo >= p.dFirst;
  let inHi = lo + 1u >= p.dFirst && lo + 1u < end;
  var word: u32;
  if (inLo && inHi) {
    word = src_half(lo - p.dFirst) | (src_half(lo + 1u - p.dFirst) << 16u);
  } else {
    word = dst[w];
    if (inLo) { word = (word & 0xffff0000u) | src_half(lo - p.dFirst); }
    if (inHi) { word = (word & 0x0000ffffu) | (src_half(lo + 1u - p.dFirst) << 16u); }
  }
  dst[w] = word;
}`,
};

/** Records one strided copy of n elements between two windows. */
function stridedCopy(gpu: Gpu, name: string, src: Window, dst: Window, dtype: DType, n: number, len: number, sStride: number): void {
  assertSeparateBuffers(name, dst, 'dst', { src });
  const halves = itemSize(dtype) === 2;
  const invocations = halves ? ((dst.first + n - 1) >> 1) - (dst.first >> 1) + 1 : n;
  const params = new Params().u32(n, len, sStride, src.first, dst.first);
  gpu.run(halves ? COPY_HALVES : COPY_WORDS, [src.range, dst.range], params, ceilDiv(invocations, WG));
}

export interface CopyRowsOptions {
  /** First row of src to copy (rows are all dims but the last, flattened). Default 0. */
  srcRow?: number;
  /** Row of dst receiving the first copied row. Default 0. */
  dstRow?: number;
  /** Rows to copy. Default: all of src from srcRow. */
  rows?: number;
}

/**
 * Copies rows [srcRow, srcRow + rows) of src into rows [dstRow, dstRow + rows) of dst (same dtype, same
 * last dim). Any dtype; row offsets need no alignment (odd halves included), because offsets travel in
 * the uniforms. src and dst may be views of one buffer, even overlapping ones (memmove semantics, through a
 * temporary copy). Returns dst.
 */
export function copyRows(gpu: Gpu, src: Tensor, dst: Tensor, opts: CopyRowsOptions = {}): Tensor {
  const name = 'copy_rows';
  if (src.rank < 1 || dst.rank < 1) throw new ShapeError(name, `src ${shapeStr(src.shape)} and dst ${shapeStr(dst.shape)} need a row dim`);
  const C = src.shape[src.rank - 1];
  if (dst.shape[dst.rank - 1] !== C || src.dtype !== dst.dtype) {
    throw new ShapeError(name, `src ${src} and dst ${dst} need the same dtype and last dim`);
  }
  const srcRows = C === 0 ? 0 : src.numel / C;
  const dstRows = C === 0 ? 0 : dst.numel / C;
  const srcRow = opts.srcRow ?? 0;
  const dstRow = opts.dstRow ?? 0;
  const rows = opts.rows ?? srcRows - srcRow;
  for (const v of [srcRow, dstRow, rows]) {
    if (!Number.isInteger(v) || v < 0) throw new ShapeError(name, `srcRow ${srcRow}, dstRow ${dstRow}, rows ${rows} must be non-negative integers`);
  }
  if (srcRow + rows > srcRows || dstRow + rows > dstRows) {
    throw new ShapeError(name, `rows [${srcRow}, ${srcRow + rows}) of src ${shapeStr(src.shape)} → rows [${dstRow}, ${dstRow + rows}) of dst ${shapeStr(dst.shape)}: out of range`);
  }
  if (rows === 0 || C === 0) return dst;
  if (src.buffer === dst.buffer) {
    // One buffer cannot be bound for reading and writing in one dispatch: go through a temporary
    // (which also makes overlapping ranges behave like memmove).
    const tmp = gpu.empty([rows, C], src.dtype, name);
    copyRows(gpu, src, tmp, { srcRow, dstRow: 0, rows });
    copyRows(gpu, tmp, dst, { srcRow: 0, dstRow, rows });
    tmp.dispose();
    return dst;
  }
  const perChunk = windowRows(gpu, src.dtype, C);
  for (let r0 = 0; r0 < rows; r0 += perChunk) {
    const n = Math.min(perChunk, rows - r0) * C;
    const sw = elementWindow(gpu, src, (srcRow + r0) * C, n);
    const dw = elementWindow(gpu, dst, (dstRow + r0) * C, n);
    stridedCopy(gpu, name, sw, dw, src.dtype, n, n, 0); // one contiguous segment
  }
  return dst;
}

/** Exact reference: dst with the rows replaced (values or bit patterns, as given). */
export function copyRowsRef(src: ArrayLike<number>, dst: ArrayLike<number>, C: number, srcRow: number, dstRow: number, rows: number): Float64Array {
  const out = Float64Array.from(dst);
  for (let i = 0; i < rows * C; i++) out[dstRow * C + i] = src[srcRow * C + i];
  return out;
}

/**
 * Columns [colStart, colStart + cols) of the last dim of x ([..., C] → [..., cols]), any dtype, as a new
 * contiguous tensor (or into `out`, same dtype and element count). Used to slice weights along Cin.
 */
export function copyColumns(gpu: Gpu, x: Tensor, colStart: number, cols: number, opts: { out?: Tensor } = {}): Tensor {
  const name = 'copy_columns';
  if (x.rank < 1) throw new ShapeError(name, `x ${shapeStr(x.shape)} needs a last dim`);
  const C = x.shape[x.rank - 1];
  if (!Number.isInteger(colStart) || !Number.isInteger(cols) || colStart < 0 || cols < 0 || colStart + cols > C) {
    throw new ShapeError(name, `columns [${colStart}, ${colStart + cols}) outside x ${shapeStr(x.shape)}`);
  }
  const shape = [...x.shape.slice(0, -1), cols];
  const out = opts.out ?? gpu.empty(shape, x.dtype, name);
  const R = C === 0 ? 0 : x.numel / C;
  if (out.dtype !== x.dtype || out.numel !== R * cols) throw new ShapeError(name, `out ${out} must be ${x.dtype} ${shapeStr(shape)}`);
  if (R === 0 || cols === 0) return out;
  const perChunk = windowRows(gpu, x.dtype, C);
  for (let r0 = 0; r0 < R; r0 += perChunk) {
    const rc = Math.min(perChunk, R - r0);
    const sw = elementWindow(gpu, x, r0 * C + colStart, (rc - 1) * C + cols);
    const dw = elementWindow(gpu, out, r0 * cols, rc * cols);
    stridedCopy(gpu, name, sw, dw, x.dtype, rc * cols, cols, C);
  }
  return out;
}

/** Exact reference: x holds R·C values → R·cols. */
export function copyColumnsRef(x: ArrayLike<number>, C: number, colStart: number, cols: number): Float64Array {
  const R = x.length / C;
  const out = new Float64Array(R * cols);
  for (let r = 0; r < R; r++) for (let c = 0; c < cols; c++) out[r * cols + c] = x[r * C + colStart + c];
  return out;
}
