// Rotary position embedding: `applyRope` rotates interleaved pairs (x[2i], x[2i+1]) of every head in place
// by per-token angles from a precomputed (cos, sin) table; `rope2dTable` builds that table on the CPU for the
// 2D (row, column) RoPE of Infinity and STAR. Float64 references at the bottom.
//
// 2D RoPE (infinity.md §2.7, star.md §3.6): a head of D dims has D/2 pairs; half of them (D/4) rotate with
// the token's row position and half with its column position, each half with its own frequency ladder
// ω_j = θ^(−2j/(D/2)) = θ^(−4j/D), j = 0..D/4−1 (Infinity-2B, D = 128: 10000^(−j/32); STAR, D = 64:
// 10000^(−j/16)). Infinity puts the row half first ('rows-first'), STAR the column half ('cols-first').
// Angles are computed in float64 and cos/sin rounded once to f32. (The PyTorch references compute the
// ladder and the angle in fp32; at positions ≤ 64 that differs from this table by at most ~4e-6.)
// x may be f16 (the f16 activation path, needs gpu.hasF16): the pair is widened, rotated in f32 with the
// f32 table, and rounded back once.

import type { Gpu } from '../engine/device.js';
import { ShapeError, shapeStr } from '../engine/errors.js';
import { Params } from '../engine/params.js';
import type { KernelSpec } from '../engine/pipelines.js';
import type { Tensor } from '../engine/tensor.js';
import { LINEAR_MAIN_ARGS, LINEAR_WORKGROUP } from './wgsl.js';

const WG = 256;

/** The kernel for x stored as f32 or f16 (the source for f32 is the one this file always had). */
function ropeSpec(dtype: 'f32' | 'f16'): KernelSpec {
  const half = dtype === 'f16';
  return {
    name: half ? 'rope_f16' : 'rope',
    bindings: ['write', 'read'],
    code: /* wgsl */ `${half ? 'enable f16;' : ''}
struct P { pairs: u32, row_pairs: u32, head_pairs: u32, rows_per_batch: u32, offset: u32 }
@group(0) @binding(0) var<storage, read_write> x: array<vec2<${dtype}>>;
@group(0) @binding(1) var<storage, read> table: array<vec2<f32>>; // [L, D/2] of (cos, sin)
@group(0) @binding(2) var<uniform> p: P;
${LINEAR_WORKGROUP}
@compute @workgroup_size(${WG})
fn main(${LINEAR_MAIN_ARGS}) {
  // One invocation per pair: pair e of the tensor is pair (e mod C/2) of row r, i.e. pair i of its head.
  let e = linear_workgroup(wid, nwg) * ${WG}u + li;
  if (e >= p.pairs) { return; }
  let r = e / p.row_pairs;
  let i = (e % p.row_pairs) % p.head_pairs;
  let t = r % p.rows_per_batch + p.offset;
  let cs = table[t * p.head_pairs + i];
  let v = ${half ? 'vec2<f32>(x[e])' : 'x[e]'};
  x[e] = ${half ? 'vec2<f16>(vec2<f32>(v.x * cs.x - v.y * cs.y, v.x * cs.y + v.y * cs.x))' : 'vec2<f32>(v.x * cs.x - v.y * cs.y, v.x * cs.y + v.y * cs.x)'};
}`,
  };
}
const ROPE = { f32: ropeSpec('f32'), f16: ropeSpec('f16') };

export interface RopeOptions {
  heads: number;
  /** Rows per batch element: row r is token r mod rowsPerBatch. Default: the second-to-last dim of x. */
  rowsPerBatch?: number;
  /** Table row of token 0 (e.g. the first token of the current scale). Default 0. */
  tableOffset?: number;
}

/**
 * Rotates x [.., R, H·D] f32 (or f16 with shader-f16) in place: row r's token t = (r mod rowsPerBatch) + tableOffset uses table
 * [L, D/2, 2] row t; pair i of every head, (x[2i], x[2i+1]) → (x0·cos − x1·sin, x0·sin + x1·cos).
 * Returns x.
 */
export function applyRope(gpu: Gpu, x: Tensor, table: Tensor, opts: RopeOptions): Tensor {
  const name = 'rope';
  const shapes = `x ${shapeStr(x.shape)} ${x.dtype}, table ${shapeStr(table.shape)} ${table.dtype}`;
  if (!(x.dtype === 'f32' || x.dtype === 'f16') || table.dtype !== 'f32') throw new ShapeError(name, `x must be f32 or f16 and table f32 (${shapes})`);
  if (x.dtype === 'f16' && !gpu.hasF16) throw new ShapeError(name, `f16 x needs the shader-f16 feature, which this device lacks (${shapes})`);
  if (x.rank < 2) throw new ShapeError(name, `x must be [.., R, H·D] (${shapes})`);
  const c = x.shape[x.rank - 1];
  const rows = x.numel / Math.max(c, 1);
  const { heads, tableOffset = 0 } = opts;
  const rowsPerBatch = opts.rowsPerBatch ?? x.shape[x.rank - 2];
  if (!Number.isInteger(heads) || heads < 1 || c % heads !== 0 || (c / heads) % 2 !== 0) {
    throw new ShapeError(name, `${heads} heads must split ${c} channels into even head dims (${shapes})`);
  }
  const d = c / heads;
  if (table.rank !== 3 || table.shape[1] !== d / 2 || table.shape[2] !== 2) {
    throw new ShapeError(name, `table must be [L, ${d / 2}, 2] for head dim ${d} (${shapes})`);
  }
  if (!Number.isInteger(rowsPerBatch) || rowsPerBatch < 1) throw new ShapeError(name, `rowsPerBatch ${rowsPerBatch} must be a positive integer (${shapes})`);
  const lastToken = Math.min(rows, rowsPerBatch) - 1 + tableOffset;
  if (!Number.isInteger(tableOffset) || tableOffset < 0 || (rows > 0 && lastToken >= table.shape[0])) {
    throw new ShapeError(name, `tokens ${tableOffset}..${lastToken} (rowsPerBatch ${rowsPerBatch}, tableOffset ${tableOffset}) exceed the ${table.shape[0]} table rows (${shapes})`);
  }
  const pairs = x.numel / 2;
  if (pairs === 0) return x;
  gpu.run(ROPE[x.dtype], [x, table], new Params().u32(pairs, c / 2, d / 2, rowsPerBatch, tableOffset), Math.ceil(pairs / WG));
  return x;
}

export type RopeOrder = 'rows-first' | 'cols-first';

export interface Rope2dOptions {
  /** Frequency base. Default 10000. */
  theta?: number;
  /** Which axis the first D/4 pairs rotate with: 'rows-first' (Infinity) or 'cols-first' (STAR). */
  order: RopeOrder;
}

/**
 * The (cos, sin) table [L, D/2, 2] for 2D RoPE. `positions` gives (row, col) per token, as objects or
 * as a flat Float64Array [row0, col0, row1, col1, …]; fractional positions are fine (STAR normalises
 * them to [0, 64]). Pair p < D/4 rotates by (first axis)·ω_p, pair p ≥ D/4 by (second axis)·ω_{p−D/4},
 * with ω_j = θ^(−4j/D).
 */
export function rope2dTable(positions: readonly { row: number; col: number }[] | Float64Array, headDim: number, opts: Rope2dOptions): Float32Array {
  const angles = rope2dAngles(positions, headDim, opts);
  const out = new Float32Array(2 * angles.length);
  for (let i = 0; i < angles.length; i++) {
    out[2 * i] = Math.cos(angles[i]);
    out[2 * i + 1] = Math.sin(angles[i]);
  }
  return out;
}

/** The angles [L, D/2] behind `rope2dTable`, in float64 (also its reference). */
export function rope2dAngles(positions: readonly { row: number; col: number }[] | Float64Array, headDim: number, opts: Rope2dOptions): Float64Array {
  const name = 'rope2dTable';
  if (!Number.isInteger(headDim) || headDim < 4 || headDim % 4 !== 0) {
    throw new ShapeError(name, `head dim ${headDim} must be a positive multiple of 4 (two axes of D/4 pairs each)`);
  }
  if (opts.order !== 'rows-first' && opts.order !== 'cols-first') throw new ShapeError(name, `order must be 'rows-first' or 'cols-first', got ${String(opts.order)}`);
  const theta = opts.theta ?? 10000;
  if (!(theta > 0)) throw new ShapeError(name, `theta ${theta} must be positive`);
  const flat = positions instanceof Float64Array;
  if (flat && positions.length % 2 !== 0) throw new ShapeError(name, `flat positions need (row, col) pairs, got ${positions.length} numbers`);
  const tokens = flat ? positions.length / 2 : positions.length;
  const half = headDim / 2;
  const quarter = headDim / 4;
  const freqs = Float64Array.from({ length: quarter }, (_, j) => theta ** ((-2 * j) / half));
  const out = new Float64Array(tokens * half);
  for (let t = 0; t < tokens; t++) {
    const row = flat ? positions[2 * t] : (positions as readonly { row: number; col: number }[])[t].row;
    const col = flat ? positions[2 * t + 1] : (positions as readonly { row: number; col: number }[])[t].col;
    if (!Number.isFinite(row) || !Number.isFinite(col)) throw new ShapeError(name, `token ${t} has position (${row}, ${col})`);
    const [first, second] = opts.order === 'rows-first' ? [row, col] : [col, row];
    for (let j = 0; j < quarter; j++) {
      out[t * half + j] = first * freqs[j];
      out[t * half + quarter + j] = second * freqs[j];
    }
  }
  return out;
}

/** Float64 reference of `applyRope` on host data x [R, C] with a [L, D/2, 2] table. */
export function applyRopeRef(
  x: ArrayLike<number>,
  table: ArrayLike<number>,
  c: number,
  opts: { heads: number; rowsPerBatch: number; tableOffset?: number },
): Float64Array {
  const d = c / opts.heads;
  const out = new Float64Array(x.length);
  for (let r = 0; r < x.length / c; r++) {
    const t = (r % opts.rowsPerBatch) + (opts.tableOffset ?? 0);
    for (let h = 0; h < opts.heads; h++) {
      for (let i = 0; i < d / 2; i++) {
        const at = r * c + h * d + 2 * i;
        const cos = table[(t * (d / 2) + i) * 2];
        const sin = table[(t * (d / 2) + i) * 2 + 1];
        out[at] = x[at] * cos - x[at + 1] * sin;
        out[at + 1] = x[at] * sin + x[at + 1] * cos;
      }
    }
  }
  return out;
}
