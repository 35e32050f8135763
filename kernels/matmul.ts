// Matrix products: `linear` (y = act(x·Wᵀ + b), PyTorch weight layout, f32/f16/bf16 weights) and batched f32
// `matmul` with transpose flags. Both launch one register-blocked GEMM kernel, generated per variant (operand
// dtypes and layouts, vector loads, subgroups, rows per workgroup); shapes, strides, offsets, the bias flag and
// the activation travel in the params uniform.
//
// Tuned for lavapipe (llvmpipe): a workgroup runs on one CPU thread, 8 invocations per SIMD vector, and every
// storage or workgroup-memory load is compiled per lane (bounds check, scalar load, insert: ≈7 instructions per
// lane and element, even when all lanes read the same address), while a multiply-add costs 1–2 instructions
// per 8 lanes. So the kernel minimises loads per multiply-add:
// - each invocation owns R rows × 2 columns of C (R = 16: 32 accumulators; more spill) and loads its columns'
//   B values itself, each reused R times from registers;
// - the rows' A values, the same for every lane, are loaded once per group of 8 lanes (each lane loading
//   different ones) and handed around with subgroupShuffle, which lavapipe compiles to one vector permute;
// - no workgroup memory and no barriers (its loads are per lane too, and barriers switch coroutines).
// On lavapipe (2 cores) this is 2–3× faster than the same blocking with plain loads: 1024³ f32 runs at
// ≈ 21–25 GFLOP/s on a quiet machine, where a 16×16 shared-memory tile does 0.6 and a 64×64 tile with 8×8
// outputs per thread ≈ 2–4 (bench/matmul.ts).
// On a GPU (`gpu.tuning === 'gpu'`) the launcher runs the workgroup-memory tiled kernel of gemm_tiled.ts
// instead, or for a few rows (≤ 64) of a linear the K-split kernel of gemm_skinny.ts; all take the same
// params and bindings (gemm_wgsl.ts), so splitting and epilogues are shared.

import type { Gpu } from '../engine/device.js';
import { LimitError, ShapeError, shapeStr } from '../engine/errors.js';
import { Params } from '../engine/params.js';
import type { BufferRange, KernelSpec } from '../engine/pipelines.js';
import type { Tensor } from '../engine/tensor.js';
import { unaryRef } from './elementwise.js';
import { SKINNY_COLS, SKINNY_MAX_ROWS, SKINNY_ROWS, skinnyGemmSpec } from './gemm_skinny.js';
import { type GemmTile, GEMM_TILES, pickGemmTile, tiledGemmSpec } from './gemm_tiled.js';
import { type GemmOperands, gemmKernelName, gemmPrelude, operandFlags } from './gemm_wgsl.js';
import { ceilDiv } from './wgsl.js';

export type Activation = 'none' | 'gelu_tanh' | 'gelu_erf' | 'silu';
const ACTIVATION_CODE: Record<Activation, number> = { none: 0, gelu_tanh: 1, gelu_erf: 2, silu: 3 };

export interface LinearOptions {
  out?: Tensor;
  activation?: Activation;
  /** Output dtype: f32 (default) or f16 (needs `gpu.hasF16`). */
  outDtype?: 'f32' | 'f16';
  /** Binding size to split rows against (default: the device's maxStorageBufferBindingSize). Tests lower it. */
  maxBindingBytes?: number;
}

export interface MatmulOptions {
  /** a is stored [Bt, K, M] / [K, M] and used transposed. */
  transA?: boolean;
  /** b is stored [Bt, N, K] / [N, K] and used transposed. */
  transB?: boolean;
  out?: Tensor;
  /** See LinearOptions.maxBindingBytes. */
  maxBindingBytes?: number;
}

// ---- kernel variants ---------------------------------------------------------------------------

const WG = 64; // invocations per workgroup: 8 SIMD batches on lavapipe, 8 groups of 8 lanes
// Output columns per invocation (adjacent): 2 weight rows for B [N, K] (3 or 4 were no faster); a vec4 of a
// row of B [K, N] (only transposed-A matmuls use that layout, see `matmul`).
const NK_COLS = 2;
const KN_COLS = 4;
const colsOf = (v: { bKN: boolean }) => (v.bKN ? KN_COLS : NK_COLS);
// k per main-loop step (4 or 8). 8 halves the loop overhead but doubles the unrolled loads, and with them
// lavapipe's compile time (≈2× per variant); measured speed: f16 weights +9%, f32 even, A·B −25%.
const KB = 4;

interface Variant extends GemmOperands {
  /** A values are spread over each group of 8 lanes and exchanged with subgroupShuffle. */
  sg: boolean;
  /** Output rows per workgroup (8 or 16): the reuse factor of every B element a lane loads. */
  rows: number;
}

/**
 * Rows per workgroup: 16 (32 accumulators per lane; 24 measured no faster, 4 columns × 16 rows slower: spills);
 * 8 for the first scales' few rows (M ≤ 8), and without subgroups, where every lane loads all its A values.
 */
function rowsFor(M: number, sg: boolean): number {
  return M <= 8 || !sg ? 8 : 16;
}

const specs = new Map<string, KernelSpec>();

function variantKey(v: Variant): string {
  return [operandFlags(v), v.sg ? 'sg' : 'nosg', v.rows].join('_');
}

function kernelName(v: Variant): string {
  return `${gemmKernelName(v)}_r${v.rows}`;
}

/**
 * The GEMM. Each workgroup owns R rows × 64·COLS columns of C; each invocation owns R rows × COLS adjacent
 * columns (R·COLS accumulators). The main loop steps k by KB: a lane loads its columns' KB B values itself,
 * while the R×KB A values are loaded once per group of 8 lanes, spread across the group (each lane loads
 * distinct values) and exchanged with subgroupShuffle. A remainder loop handles K % KB. Without subgroups
 * (`sg` false) every lane loads all of its A values (fine on a GPU, where equal addresses broadcast).
 */
function gemmSpec(v: Variant): KernelSpec {
  const key = variantKey(v);
  const hit = specs.get(key);
  if (hit) return hit;
  const R = v.rows;
  const RB = R / 8;
  const COLS = colsOf(v);
  const QB = KB / 4; // quads (vec4 loads) per row per step
  // Element widths of the array views: A in quads along k (or along m when transposed), B in quads along k
  // ([N, K]) or along n ([K, N]).
  const aWidth = v.vec ? 4 : 1;
  const bWidth = !v.vec ? 1 : v.bKN ? COLS : 4;
  const quad = (fn: string, e: string, vec: boolean) =>
    vec ? `${fn}4(${e})` : `vec4<f32>(${fn}1(${e}), ${fn}1(${e} + 1u), ${fn}1(${e} + 2u), ${fn}1(${e} + 3u))`;
  const init: string[] = [];
  const block: string[] = [`let k0 = ${KB}u * i;`];
  const tail: string[] = [];
  const store: string[] = [];

  // B values of one step, W(c, kk), and of one remainder step, w(c).
  let W: (c: number, kk: number) => string;
  if (!v.bKN) {
    for (let c = 0; c < COLS; c++) init.push(`let wb${c} = bOff + min(col + ${c}u, p.N - 1u) * p.K;`);
    for (let c = 0; c < COLS; c++) for (let q = 0; q < QB; q++) block.push(`let w${c}_${q} = ${quad('ldb', `wb${c} + k0 + ${4 * q}u`, v.vec)};`);
    W = (c, kk) => `w${c}_${kk >> 2}[${kk % 4}]`;
    tail.push(...Array.from({ length: COLS }, (_, c) => `let w${c} = ldb1(wb${c} + k);`));
  } else {
    // Columns past N are clamped (their outputs are never stored); a vector is all-in or all-out.
    init.push(v.vec ? `let nb = min(col, p.N - ${COLS}u);` : Array.from({ length: COLS }, (_, c) => `let nb${c} = min(col + ${c}u, p.N - 1u);`).join(' '));
    const pair = (e: string) =>
      v.vec ? `ldb${COLS}(${e} + nb)` : `vec${COLS}<f32>(${Array.from({ length: COLS }, (_, c) => `ldb1(${e} + nb${c})`).join(', ')})`;
    for (let kk = 0; kk < KB; kk++) block.push(`let b${kk} = ${pair(`bOff + (k0 + ${kk}u) * p.N`)};`);
    W = (c, kk) => `b${kk}[${c}]`;
    tail.push(`let bk = ${pair('bOff + k * p.N')};`, ...Array.from({ length: COLS }, (_, c) => `let w${c} = bk[${c}];`));
  }

  // A values of one step, X(r, kk), and of one remainder step.
  let X: (r: number, kk: number) => string;
  for (let r = 0; r < R; r++) init.push(`let m${r} = min(row0 + ${r}u, p.M - 1u);`);
  if (v.sg && !v.aTrans) {
    // Lane l of each group of 8 loads rows l (and l + 8) of the step: A(row, k0..k0+KB-1) in quads.
    for (let rb = 0; rb < RB; rb++) {
      init.push(`let xr${rb} = aOff + min(row0 + ${rb * 8}u + l8, p.M - 1u) * p.K;`);
      for (let q = 0; q < QB; q++) block.push(`let x${rb}_${q} = ${quad('lda', `xr${rb} + k0 + ${4 * q}u`, v.vec)};`);
    }
    X = (r, kk) => `subgroupShuffle(x${r >> 3}_${kk >> 2}[${kk % 4}], g8 + ${r % 8}u)`;
  } else if (v.sg) {
    // Transposed A: lane l loads A at k = k0 + l % KB, contiguous along m, for a share of the step's rows
    // (8 / KB lanes per k, so each loads R·KB/8 rows).
    const share = (R * KB) / 8;
    const mq = (q: number) =>
      v.vec ? `lda4(xk + min(row0 + part + ${4 * q}u, p.M - 4u))` : `vec4<f32>(${[0, 1, 2, 3].map((u) => `lda1(xk + min(row0 + part + ${4 * q + u}u, p.M - 1u))`).join(', ')})`;
    init.push(`let part = (l8 / ${KB}u) * ${share}u;`);
    block.push(`let xk = aOff + (k0 + l8 % ${KB}u) * p.M;`);
    for (let q = 0; q < share / 4; q++) block.push(`let xq${q} = ${mq(q)};`);
    X = (r, kk) => `subgroupShuffle(xq${(r % share) >> 2}[${r % 4}], g8 + ${kk + KB * Math.floor(r / share)}u)`;
  } else if (!v.aTrans) {
    for (let r = 0; r < R; r++) for (let q = 0; q < QB; q++) block.push(`let x${r}_${q} = ${quad('lda', `aOff + m${r} * p.K + k0 + ${4 * q}u`, v.vec)};`);
    X = (r, kk) => `x${r}_${kk >> 2}[${kk % 4}]`;
  } else {
    X = (r, kk) => `lda1(aOff + (k0 + ${kk}u) * p.M + m${r})`;
  }
  const aAt = (r: number) => (v.aTrans ? `lda1(aOff + k * p.M + m${r})` : `lda1(aOff + m${r} * p.K + k)`);

  for (let r = 0; r < R; r++) for (let c = 0; c < COLS; c++) init.push(`var acc${r}_${c} = 0.0;`);
  for (let kk = 0; kk < KB; kk++) {
    for (let r = 0; r < R; r++) {
      const terms = Array.from({ length: COLS }, (_, c) => `acc${r}_${c} += x * ${W(c, kk)};`);
      block.push(`{ let x = ${X(r, kk)}; ${terms.join(' ')} }`);
    }
  }
  for (let r = 0; r < R; r++) {
    tail.push(`{ let x = ${aAt(r)}; ${Array.from({ length: COLS }, (_, c) => `acc${r}_${c} += x * w${c};`).join(' ')} }`);
  }
  for (let r = 0; r < R; r++) for (let c = 0; c < COLS; c++) store.push(`res[${r * COLS + c}] = acc${r}_${c};`);

  const code = /* wgsl */ `${gemmPrelude(v, aWidth, bWidth, v.sg ? ['subgroups'] : [])}
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32${v.sg ? ', @builtin(subgroup_invocation_id) sl: u32' : ''}) {
  ${v.sg ? 'let g8 = sl & ~7u; // first lane of this lane\'s group of 8\n  let l8 = sl & 7u;' : ''}
  let row0 = wid.y * ${R}u;
  let col = wid.x * ${WG * COLS}u + li * ${COLS}u;
  let aOff = p.aOff + wid.z * p.aBatch;
  let bOff = p.bOff + wid.z * p.bBatch;
  let cb = p.cOff + wid.z * p.cBatch;
  ${init.join('\n  ')}
  let steps = p.steps;
  for (var i = 0u; i < steps; i++) {
    ${block.join('\n    ')}
  }
  for (var k = ${KB}u * steps; k < p.K; k++) {
    ${tail.join('\n    ')}
  }
  // The epilogue (bias, activation, store) runs in a loop with a runtime bound rather than unrolled per
  // output: unrolled, its activation code dominated lavapipe's compile time.
  var res: array<f32, ${R * COLS}>;
  ${store.join('\n  ')}
  let rows = min(${R}u, p.M - row0);
  for (var e = 0u; e < rows * ${COLS}u; e++) {
    emit(cb, row0 + e / ${COLS}u, col + e % ${COLS}u, res[e]);
  }
}`;
  const spec: KernelSpec = { name: kernelName(v), bindings: ['read', 'read', 'read', 'write'], code };
  specs.set(key, spec);
  return spec;
}

// ---- launch --------------------------------------------------------------------------------------

/** A tensor bound from the alignment boundary at or below its start; `off` is its first element there. */
interface Bound {
  range: BufferRange;
  off: number;
}

function bindRange(gpu: Gpu, t: Tensor): BufferRange {
  t.assertAlive();
  const start = t.byteOffset - (t.byteOffset % gpu.limits.minStorageBufferOffsetAlignment);
  const end = Math.min(Math.ceil((t.byteOffset + t.byteLength) / 4) * 4, t.buffer.size);
  return { buffer: t.buffer, offset: start, size: Math.max(4, end - start) };
}

function bind(gpu: Gpu, t: Tensor, what: string, cap: number): Bound {
  const range = bindRange(gpu, t);
  if (range.size > cap) throw new LimitError(`${what} ${t}`, 'maxStorageBufferBindingSize', range.size, cap);
  return { range, off: (t.byteOffset - range.offset) / (t.dtype === 'f32' ? 4 : 2) };
}

interface Problem {
  name: string;
  variant: Omit<GemmOperands, 'vec'>;
  a: Tensor;
  b: Tensor;
  bias: Tensor | null;
  c: Tensor;
  /** Batches; a/b batch strides are 0 when the operand is shared. */
  batch: number;
  aBatched: boolean;
  bBatched: boolean;
  M: number;
  N: number;
  K: number;
  act: Activation;
  /** C is stored transposed ([N, M] per batch): set when matmul swaps its operands. Never split by rows. */
  transC?: boolean;
}

// Grid limits: workgroups per dimension (rows of blocks in y, batches in z).
const MAX_GRID = 65535;
const MAX_ROWS = MAX_GRID * 8;

/**
 * Test and benchmark hooks: `kernel` forces a kernel ('auto': on GPUs the skinny kernel for few rows of a
 * linear-layout product and the tiled one otherwise, on CPU adapters the register kernel; 'skinny' applies
 * only to the linear layout, others fall back to 'auto'); `disableSubgroups` runs the register kernel
 * without shuffles.
 */
export const matmulTesting: { kernel: 'auto' | 'register' | 'skinny' | GemmTile['name']; disableSubgroups: boolean } = {
  kernel: 'auto',
  disableSubgroups: false,
};

type GemmChoice = { kind: 'register' } | { kind: 'skinny' } | { kind: 'tiled'; tile: GemmTile };

function gemmChoice(gpu: Gpu, v: Omit<GemmOperands, 'vec'>, M: number, N: number, batch: number): GemmChoice {
  const k = matmulTesting.kernel;
  const linearLayout = !v.aTrans && !v.bKN;
  if (k === 'register') return { kind: 'register' };
  if (k === 'big' || k === 'small') return { kind: 'tiled', tile: GEMM_TILES[k] };
  if (k === 'skinny' && linearLayout) return { kind: 'skinny' };
  if (gpu.tuning !== 'gpu') return { kind: 'register' };
  // The skinny grid has N/8 workgroups in x: very wide outputs take the tiled kernel.
  if (linearLayout && M <= SKINNY_MAX_ROWS && ceilDiv(N, SKINNY_COLS) <= MAX_GRID) return { kind: 'skinny' };
  return { kind: 'tiled', tile: pickGemmTile(M, N, batch) };
}

/** Subgroup shuffles need the feature and groups of at least 8 lanes (sizes are powers of two). */
function useSubgroups(gpu: Gpu): boolean {
  return !matmulTesting.disableSubgroups && gpu.subgroupMinSize >= 8;
}

/** Records one dispatch over views that fit one binding each. */
function dispatch(gpu: Gpu, pr: Problem, a: Tensor, c: Tensor, b: Tensor, batch: number, M: number, cap: number): void {
  const { N, K } = pr;
  const ab = bind(gpu, a, `${pr.name} input`, cap);
  const bb = bind(gpu, b, `${pr.name} ${pr.variant.kind === 'linear' ? 'weight' : 'input b'}`, cap);
  const cbnd = bind(gpu, c, `${pr.name} output`, cap);
  // Without a bias the weight is bound in its place (read-only bindings may alias); it is never read.
  const biasB = pr.bias ? bind(gpu, pr.bias, `${pr.name} bias`, cap) : bb;
  // Vector loads need every row (and batch) of each operand to start on a boundary of its load width.
  const al = (off: number, n: number) => off % n === 0;
  const { aTrans, bKN } = pr.variant;
  const vec =
    (aTrans ? M % 4 === 0 && al(ab.off, 4) : K % 4 === 0 && al(ab.off, 4)) &&
    (bKN ? N % KN_COLS === 0 && al(bb.off, KN_COLS) : K % 4 === 0 && al(bb.off, 4));
  const params = new Params().u32(
    M, N, K, Math.floor(K / KB),
    ab.off, bb.off, cbnd.off, biasB.off,
    pr.aBatched ? M * K : 0, pr.bBatched ? K * N : 0, M * N,
    ACTIVATION_CODE[pr.act], pr.bias ? 1 : 0, pr.transC ? 1 : 0,
  );
  const bindings = [ab.range, bb.range, biasB.range, cbnd.range];
  const choice = gemmChoice(gpu, pr.variant, M, N, batch);
  if (choice.kind === 'tiled') {
    gpu.run(tiledGemmSpec({ ...pr.variant, vec }, choice.tile), bindings, params, [ceilDiv(N, choice.tile.bn), ceilDiv(M, choice.tile.bm), batch]);
    return;
  }
  if (choice.kind === 'skinny') {
    gpu.run(skinnyGemmSpec({ ...pr.variant, vec }), bindings, params, [ceilDiv(N, SKINNY_COLS), ceilDiv(M, SKINNY_ROWS), batch]);
    return;
  }
  const sg = useSubgroups(gpu);
  const v: Variant = { ...pr.variant, vec, sg, rows: rowsFor(M, sg) };
  gpu.run(gemmSpec(v), bindings, params, [ceilDiv(N, WG * colsOf(v)), ceilDiv(M, v.rows), batch]);
}

/**
 * Runs a (batched) problem, splitting it so that no binding exceeds `cap` bytes: by batches when an
 * operand is batched, by rows of A/C within a batch when one batch alone is too large (A not transposed).
 * Row offsets need no alignment: views are bound from the alignment boundary below them (see `bind`).
 */
function run(gpu: Gpu, pr: Problem, cap: number): void {
  const { M, N, K, batch } = pr;
  if (M === 0 || N === 0 || batch === 0) return;
  const fits = (t: Tensor) => bindRange(gpu, t).size <= cap;
  if (fits(pr.a) && fits(pr.b) && fits(pr.c) && batch <= MAX_GRID && M <= MAX_ROWS) {
    dispatch(gpu, pr, pr.a, pr.c, pr.b, batch, M, cap);
    return;
  }
  const bName = `${pr.name} ${pr.variant.kind === 'linear' ? 'weight' : 'input b'}`;
  // Chunks are sized against cap less the alignment slack a view bound from below its start may carry.
  const room = cap - gpu.limits.minStorageBufferOffsetAlignment;
  const item = (t: Tensor) => (t.dtype === 'f32' ? 4 : 2);
  const a3 = pr.a.reshape([pr.aBatched ? batch : 1, pr.variant.aTrans ? K : M, pr.variant.aTrans ? M : K]);
  const b3 = pr.b.reshape([pr.bBatched ? batch : 1, pr.variant.bKN ? K : N, pr.variant.bKN ? N : K]);
  const c3 = pr.c.reshape([batch, M, N]);
  // Whole batches per dispatch: each batched operand's share must fit, shared operands whole.
  const perBatch = Math.max(pr.aBatched ? M * K * item(pr.a) : 0, pr.bBatched ? K * N * item(pr.b) : 0, M * N * item(pr.c));
  const sharedFit = (pr.aBatched || fits(pr.a)) && (pr.bBatched || fits(pr.b));
  const batchesPerDispatch = sharedFit && M <= MAX_ROWS ? Math.min(batch, MAX_GRID, Math.floor(room / perBatch)) : 0;
  if (batchesPerDispatch >= 1) {
    for (let b0 = 0; b0 < batch; b0 += batchesPerDispatch) {
      const nb = Math.min(batchesPerDispatch, batch - b0);
      const a = pr.aBatched ? a3.rows(b0, nb) : pr.a;
      const b = pr.bBatched ? b3.rows(b0, nb) : pr.b;
      dispatch(gpu, pr, a, c3.rows(b0, nb), b, nb, M, cap);
    }
    return;
  }
  // One batch is too large: split the rows of A and C (contiguous only when A is not transposed).
  if (pr.transC) throw new Error('matmul: internal error, a swapped problem cannot be split by rows');
  const bOne = b3.rows(0, 1);
  if (!fits(bOne)) throw new LimitError(`${bName} ${pr.b}`, 'maxStorageBufferBindingSize', bindRange(gpu, bOne).size, cap);
  if (pr.variant.aTrans) throw new LimitError(`${pr.name} transposed input a ${pr.a}`, 'maxStorageBufferBindingSize', M * K * 4, cap);
  const rowBytes = Math.max(K * item(pr.a), N * item(pr.c));
  let rows = Math.min(MAX_ROWS, Math.floor(room / rowBytes));
  if (rows > 8) rows -= rows % 8; // whole row blocks per dispatch
  if (rows < 1) throw new LimitError(`${pr.name} one row of ${pr.a} / ${pr.c}`, 'maxStorageBufferBindingSize', rowBytes, room);
  for (let bi = 0; bi < batch; bi++) {
    const a2 = a3.rows(pr.aBatched ? bi : 0, 1).reshape([M, K]);
    const c2 = c3.rows(bi, 1).reshape([M, N]);
    const b = b3.rows(pr.bBatched ? bi : 0, 1);
    for (let r0 = 0; r0 < M; r0 += rows) {
      const n = Math.min(rows, M - r0);
      dispatch(gpu, { ...pr, M: n }, a2.rows(r0, n), c2.rows(r0, n), b, 1, n, cap);
    }
  }
}

function describe(...ts: [string, Tensor | null][]): string {
  return ts.filter(([, t]) => t).map(([n, t]) => `${n} ${shapeStr(t!.shape)} ${t!.dtype}`).join(', ');
}

/**
 * y = act(x·wᵀ + bias): x [..., K] f32 (or f16), w [N, K] f32/f16/bf16 (PyTorch layout), bias [N] f32 or null
 * → [..., N] f32 (or f16 with `outDtype` when the device has shader-f16). Accumulates in f32.
 */
export function linear(gpu: Gpu, x: Tensor, w: Tensor, bias: Tensor | null, opts: LinearOptions = {}): Tensor {
  const name = 'linear';
  const shapes = describe(['x', x], ['w', w], ['bias', bias], ['out', opts.out ?? null]);
  if (x.rank < 1 || !(x.dtype === 'f32' || x.dtype === 'f16')) throw new ShapeError(name, `x must be f32 or f16 [..., K] (${shapes})`);
  if (w.rank !== 2 || !(w.dtype === 'f32' || w.dtype === 'f16' || w.dtype === 'bf16')) {
    throw new ShapeError(name, `w must be [N, K] f32/f16/bf16 (${shapes})`);
  }
  const K = x.shape[x.rank - 1];
  const [N, wK] = w.shape;
  if (K === 0) throw new ShapeError(name, `K must be positive (${shapes})`);
  if (wK !== K) throw new ShapeError(name, `x has K = ${K} features but w is [N, K] with K = ${wK} (${shapes})`);
  if (bias && (bias.dtype !== 'f32' || bias.numel !== N || bias.rank !== 1)) throw new ShapeError(name, `bias must be f32 [${N}] (${shapes})`);
  const outDtype = opts.outDtype ?? opts.out?.dtype ?? 'f32';
  if (outDtype !== 'f32' && outDtype !== 'f16') throw new ShapeError(name, `outDtype must be f32 or f16, got ${outDtype} (${shapes})`);
  if (outDtype === 'f16' && !gpu.hasF16) throw new ShapeError(name, `f16 output needs the shader-f16 feature, which this device lacks (${shapes})`);
  const outShape = [...x.shape.slice(0, -1), N];
  const out = opts.out ?? gpu.empty(outShape, outDtype, name);
  if (out.dtype !== outDtype || out.numel !== (x.numel / K) * N || out.shape[out.rank - 1] !== N) {
    throw new ShapeError(name, `out must be ${outDtype} ${shapeStr(outShape)} (${shapes})`);
  }
  const M = x.numel / K;
  const variant = { kind: 'linear' as const, aDtype: x.dtype as 'f32' | 'f16', aTrans: false, bDtype: w.dtype as 'f32' | 'f16' | 'bf16', bKN: false, outDtype };
  const cap = opts.maxBindingBytes ?? gpu.limits.maxStorageBufferBindingSize;
  run(gpu, { name, variant, a: x.reshape([M, K]), b: w, bias, c: out.reshape([M, N]), batch: 1, aBatched: false, bBatched: false, M, N, K, act: opts.activation ?? 'none' }, cap);
  return out;
}

/**
 * Batched f32 GEMM: a [Bt, M, K] or [M, K] (stored [.., K, M] with transA), b [Bt, K, N] or [K, N] (stored
 * [.., N, K] with transB); a 2-D operand is shared by every batch. → [Bt, M, N] (or [M, N] when both are 2-D).
 */
export function matmul(gpu: Gpu, a: Tensor, b: Tensor, opts: MatmulOptions = {}): Tensor {
  const name = 'matmul';
  const transA = opts.transA ?? false;
  const transB = opts.transB ?? false;
  const shapes = `${describe(['a', a], ['b', b], ['out', opts.out ?? null])}${transA ? ', transA' : ''}${transB ? ', transB' : ''}`;
  if (a.dtype !== 'f32' || b.dtype !== 'f32') throw new ShapeError(name, `a and b must be f32 (${shapes})`);
  if (a.rank < 2 || a.rank > 3 || b.rank < 2 || b.rank > 3) throw new ShapeError(name, `a and b must be 2-D or 3-D (${shapes})`);
  const [aR, aC] = a.shape.slice(-2);
  const [bR, bC] = b.shape.slice(-2);
  const [M, K] = transA ? [aC, aR] : [aR, aC];
  const [bK, N] = transB ? [bC, bR] : [bR, bC];
  if (bK !== K) throw new ShapeError(name, `inner dims differ: a gives K = ${K}, b gives K = ${bK} (${shapes})`);
  const aBatched = a.rank === 3;
  const bBatched = b.rank === 3;
  const batch = aBatched ? a.shape[0] : bBatched ? b.shape[0] : 1;
  if (aBatched && bBatched && a.shape[0] !== b.shape[0]) throw new ShapeError(name, `batch sizes differ (${shapes})`);
  if (K === 0) throw new ShapeError(name, `K must be positive (${shapes})`);
  const outShape = aBatched || bBatched ? [batch, M, N] : [M, N];
  const out = opts.out ?? gpu.empty(outShape, 'f32', name);
  if (out.dtype !== 'f32' || out.numel !== batch * M * N || out.shape[out.rank - 1] !== N) {
    throw new ShapeError(name, `out must be f32 ${shapeStr(outShape)} (${shapes})`);
  }
  const cap = opts.maxBindingBytes ?? gpu.limits.maxStorageBufferBindingSize;
  const common = { name, bias: null, act: 'none' as const };
  const f32 = { aDtype: 'f32' as const, bDtype: 'f32' as const, outDtype: 'f32' as const };
  // A shared B with an untransposed A is one tall GEMM: fold the batch into rows.
  const fold = aBatched && !bBatched && !transA;
  const a2 = fold ? a.reshape([batch * M, K]) : a;
  const out2 = fold ? out.reshape([batch * M, N]) : out;
  const rowsM = fold ? batch * M : M;
  const fits = (t: Tensor) => bindRange(gpu, t).size <= cap;
  if (!transA && !transB && fits(a) && fits(b) && fits(out) && N <= MAX_ROWS && batch <= MAX_GRID) {
    // A·B with B [K, N]: the kernel is fastest with B [N, K] (weight layout), so compute Cᵀ = Bᵀ·Aᵀ instead:
    // B becomes the transposed left operand, A the right one in [N, K] layout, and C is stored transposed.
    const variant = { kind: 'matmul' as const, ...f32, aTrans: true, bKN: false };
    const batches = fold ? { batch: 1, aBatched: false, bBatched: false } : { batch, aBatched: bBatched, bBatched: aBatched };
    run(gpu, { ...common, variant, a: b, b: a2, c: out2, ...batches, M: N, N: rowsM, K, transC: true }, cap);
  } else {
    const variant = { kind: 'matmul' as const, ...f32, aTrans: transA, bKN: !transB };
    const batches = fold ? { batch: 1, aBatched: false, bBatched: false } : { batch, aBatched, bBatched };
    run(gpu, { ...common, variant, a: a2, b, c: out2, ...batches, M: rowsM, N, K }, cap);
  }
  return out;
}

// ---- float64 references --------------------------------------------------------------------------

/** act(x·wᵀ + bias) in float64: x [M, K], w [N, K], bias [N] or null → [M, N]. */
export function linearRef(
  x: ArrayLike<number>,
  w: ArrayLike<number>,
  bias: ArrayLike<number> | null,
  M: number,
  N: number,
  K: number,
  activation: Activation = 'none',
): Float64Array {
  const y = new Float64Array(M * N);
  for (let m = 0; m < M; m++) {
    for (let n = 0; n < N; n++) {
      let s = bias ? bias[n] : 0;
      for (let k = 0; k < K; k++) s += x[m * K + k] * w[n * K + k];
      y[m * N + n] = s;
    }
  }
  return activation === 'none' ? y : unaryRef(activation, y);
}

/** Batched a·b in float64 with the same layouts and sharing rules as `matmul`. */
export function matmulRef(
  a: ArrayLike<number>,
  b: ArrayLike<number>,
  d: { batch: number; M: number; N: number; K: number; transA?: boolean; transB?: boolean; aBatched: boolean; bBatched: boolean },
): Float64Array {
  const { batch, M, N, K } = d;
  const y = new Float64Array(batch * M * N);
  for (let t = 0; t < batch; t++) {
    const ao = d.aBatched ? t * M * K : 0;
    const bo = d.bBatched ? t * K * N : 0;
    for (let m = 0; m < M; m++) {
      for (let n = 0; n < N; n++) {
        let s = 0;
        for (let k = 0; k < K; k++) {
          const av = a[ao + (d.transA ? k * M + m : m * K + k)];
          const bv = b[bo + (d.transB ? n * K + k : k * N + n)];
          s += av * bv;
        }
        y[(t * M + m) * N + n] = s;
      }
    }
  }
  return y;
}

/** Floating-point operations of a GEMM (multiply and add counted separately). */
export function gemmFlops(M: number, N: number, K: number, batch = 1): number {
  return 2 * batch * M * N * K;
}
