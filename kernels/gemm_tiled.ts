// The GPU GEMM of the matmul family: the classic workgroup-memory tiling (as in CUTLASS's SIMT kernels and
// every WebGPU matmul tutorial), for adapters that are real GPUs (`gpu.tuning === 'gpu'`). CPU adapters run
// the register-blocked subgroup kernel in matmul.ts instead: on lavapipe, workgroup memory and barriers are
// slow (each shared load compiles per lane; a barrier switches coroutines), so that kernel is 5–10× faster
// there, while on a GPU its uncoalesced, unshared loads waste the memory system.
//
// A workgroup of 16×16 threads computes a BM×BN tile of C. Per step of BK along k it stages A's BM×BK and
// B's BK×BN tiles in workgroup memory as f32 (halves widened once, on load), k-major, as scalars (see `As` below), so that a thread
// reads its rows and columns as vec4s; each thread then accumulates TM×TN outputs in registers. A thread's
// rows are 4-row groups 64 apart (rows 64g + 4ty + u), and its columns likewise, so that the 16 threads of
// a row read 16 consecutive vec4s (no bank conflicts) and each loaded value is reused TN (or TM) times.
// Tile loads are one vec4 per thread and operand (coalesced along the stored contiguous dimension), or four
// scalars when rows do not start on 4-element boundaries; positions past K load zero, rows past M or N are
// clamped (their outputs are never stored).
//
// Two tiles: 128×128 with 8×8 per thread for large problems, 64×64 with 4×4 when the big tile would
// leave the GPU short of workgroups (the early scales' few rows). Not yet measured on a GPU: the tile shapes
// and the switch-over are the textbook starting points, to be tuned with `npm run bench -- --only matmul`.

import type { KernelSpec } from '../engine/pipelines.js';
import { type GemmOperands, gemmKernelName, gemmPrelude, operandFlags } from './gemm_wgsl.js';

export interface GemmTile {
  name: 'big' | 'small';
  /** Rows (of A and C) and columns (of B and C) per workgroup, and k per step. */
  bm: number;
  bn: number;
  bk: number;
  /** Outputs per thread: tm rows × tn columns (multiples of 4). */
  tm: number;
  tn: number;
}

const THREADS_X = 16;
const THREADS_Y = 16;
const THREADS = THREADS_X * THREADS_Y;
/** Spacing of a thread's 4-row (4-column) groups: 16 threads × 4. */
const GROUP_STRIDE = 64;

export const GEMM_TILES: Record<GemmTile['name'], GemmTile> = {
  big: { name: 'big', bm: 128, bn: 128, bk: 8, tm: 8, tn: 8 },
  small: { name: 'small', bm: 64, bn: 64, bk: 16, tm: 4, tn: 4 },
};

/** Big tiles only when they still give this many workgroups (about two per SM on a large GPU). */
const BIG_TILE_MIN_WORKGROUPS = 256;

export function pickGemmTile(M: number, N: number, batch: number): GemmTile {
  const big = GEMM_TILES.big;
  return Math.ceil(M / big.bm) * Math.ceil(N / big.bn) * batch >= BIG_TILE_MIN_WORKGROUPS ? big : GEMM_TILES.small;
}

const specs = new Map<string, KernelSpec>();

/** Four consecutive elements of a scalar workgroup array, from index expression `i` (a multiple of 4). */
const quad = (arr: string, i: string) => `vec4<f32>(${[0, 1, 2, 3].map((u) => `${arr}[${i} + ${u}u]`).join(', ')})`;

/**
 * WGSL that stages one operand's tile for the step at k0 into `sh` (array<f32>, k-major: element (k, r) at
 * sh[k·T + r]). `alongK`: the operand is stored [E, K] (rows contiguous along k);
 * otherwise [K, E] (contiguous along E). E is M or N, T the tile's extent along it, `base` its first row.
 */
function stageTile(o: { sh: string; ld: string; off: string; E: string; base: string; T: number; bk: number; alongK: boolean; vec: boolean }): string {
  const { sh, ld, off, E, base, T, bk, alongK, vec } = o;
  const quads = (T * bk) / 4;
  if (quads % THREADS !== 0) throw new Error(`gemm_tiled: tile ${T}×${bk} does not split into ${THREADS} vec4 loads`);
  const lines: string[] = [];
  for (let i = 0; i < quads / THREADS; i++) {
    const q = `(li + ${i * THREADS}u)`;
    lines.push('{');
    if (alongK) {
      // Quad kq of row r: elements k0 + 4kq .. +3 of row base + r.
      lines.push(`  let r = ${q} / ${bk / 4}u; let kq = ${q} % ${bk / 4}u; let k = k0 + 4u * kq;`);
      lines.push(`  let rowStart = ${off} + min(${base} + r, ${E} - 1u) * p.K;`);
      lines.push('  var x = vec4<f32>(0.0);');
      if (vec) lines.push(`  if (k < p.K) { x = ${ld}4(rowStart + k); }`);
      else for (let u = 0; u < 4; u++) lines.push(`  x[${u}] = select(0.0, ${ld}1(rowStart + min(k + ${u}u, p.K - 1u)), k + ${u}u < p.K);`);
      for (let u = 0; u < 4; u++) lines.push(`  ${sh}[(4u * kq + ${u}u) * ${T}u + r] = x[${u}];`);
    } else {
      // Quad rq of k row kr: elements base + 4rq .. +3 of row k0 + kr.
      lines.push(`  let kr = ${q} / ${T / 4}u; let rq = ${q} % ${T / 4}u; let k = k0 + kr;`);
      lines.push('  var x = vec4<f32>(0.0);');
      if (vec) lines.push(`  if (k < p.K) { x = ${ld}4(${off} + k * ${E} + min(${base} + 4u * rq, ${E} - 4u)); }`);
      else {
        lines.push(`  let kRow = ${off} + min(k, p.K - 1u) * ${E};`);
        for (let u = 0; u < 4; u++) lines.push(`  x[${u}] = select(0.0, ${ld}1(kRow + min(${base} + 4u * rq + ${u}u, ${E} - 1u)), k < p.K);`);
      }
      for (let u = 0; u < 4; u++) lines.push(`  ${sh}[kr * ${T}u + 4u * rq + ${u}u] = x[${u}];`);
    }
    lines.push('}');
  }
  return lines.join('\n    ');
}

/** The tiled GEMM for one operand variant and tile. Same params and bindings as the register kernel. */
export function tiledGemmSpec(v: GemmOperands, t: GemmTile): KernelSpec {
  const key = `${operandFlags(v)}_${t.name}`;
  const hit = specs.get(key);
  if (hit) return hit;
  const { bm, bn, bk, tm, tn } = t;
  if (bm !== THREADS_Y * tm || bn !== THREADS_X * tn || tm % 4 || tn % 4) throw new Error(`gemm_tiled: inconsistent tile ${JSON.stringify(t)}`);
  const GM = tm / 4; // 4-row groups per thread
  const GN = tn / 4; // 4-column groups per thread
  const width = v.vec ? 4 : 1;

  const acc = (g: number, u: number, h: number) => `c${g}_${u}_${h}`;
  const decl: string[] = [];
  const inner: string[] = [];
  const save: string[] = [];
  for (let g = 0; g < GM; g++) for (let u = 0; u < 4; u++) for (let h = 0; h < GN; h++) decl.push(`var ${acc(g, u, h)} = vec4<f32>(0.0);`);
  // The k loop of a step has a constant trip count, which GPU compilers unroll themselves; unrolled here it
  // took lavapipe 5–9 s to compile per big-tile variant.
  const loads = [
    ...Array.from({ length: GM }, (_, g) => `let a${g} = ${quad('As', `kk * ${bm}u + ${GROUP_STRIDE * g}u + 4u * ty`)};`),
    ...Array.from({ length: GN }, (_, h) => `let b${h} = ${quad('Bs', `kk * ${bn}u + ${GROUP_STRIDE * h}u + 4u * tx`)};`),
  ];
  const fmas: string[] = [];
  for (let g = 0; g < GM; g++) for (let u = 0; u < 4; u++) for (let h = 0; h < GN; h++) {
    fmas.push(`${acc(g, u, h)} = fma(vec4<f32>(a${g}[${u}]), b${h}, ${acc(g, u, h)});`);
  }
  inner.push(`for (var kk = 0u; kk < ${bk}u; kk++) {
      ${loads.join(' ')}
      ${fmas.join('\n      ')}
    }`);
  // res[(4g + u)·GN + h] = outputs of row 64g + 4ty + u, columns 64h + 4tx .. +3.
  for (let g = 0; g < GM; g++) for (let u = 0; u < 4; u++) for (let h = 0; h < GN; h++) save.push(`res[${(4 * g + u) * GN + h}] = ${acc(g, u, h)};`);

  const stage = (which: 'A' | 'B') =>
    which === 'A'
      ? stageTile({ sh: 'As', ld: 'lda', off: 'aOff', E: 'p.M', base: 'row0', T: bm, bk, alongK: !v.aTrans, vec: v.vec })
      : stageTile({ sh: 'Bs', ld: 'ldb', off: 'bOff', E: 'p.N', base: 'col0', T: bn, bk, alongK: !v.bKN, vec: v.vec });

  const code = /* wgsl */ `${gemmPrelude(v, width, width)}
// tiled GEMM: ${bm}×${bn} per workgroup, k step ${bk}, ${tm}×${tn} per thread
// Scalar arrays: a thread stores single elements of the tiles, and a store into one component of a shared
// vec4 is compiled by Tint's HLSL back end (D3D12) as a read-modify-write of the whole vec4, which would
// race with the neighbours storing the other components. Reads gather four consecutive, 16-byte aligned
// words, which GPU compilers turn into one vector load.
var<workgroup> As: array<f32, ${bk * bm}>;
var<workgroup> Bs: array<f32, ${bk * bn}>;
@compute @workgroup_size(${THREADS})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let tx = li % ${THREADS_X}u;
  let ty = li / ${THREADS_X}u;
  let row0 = wid.y * ${bm}u;
  let col0 = wid.x * ${bn}u;
  let aOff = p.aOff + wid.z * p.aBatch;
  let bOff = p.bOff + wid.z * p.bBatch;
  let cb = p.cOff + wid.z * p.cBatch;
  ${decl.join('\n  ')}
  let tiles = (p.K + ${bk - 1}u) / ${bk}u;
  for (var t = 0u; t < tiles; t++) {
    let k0 = t * ${bk}u;
    ${stage('A')}
    ${stage('B')}
    workgroupBarrier();
    ${inner.join('\n    ')}
    workgroupBarrier();
  }
  var res: array<vec4<f32>, ${GM * 4 * GN}>;
  ${save.join('\n  ')}
  for (var e = 0u; e < ${GM * 4 * GN}u; e++) {
    let i = e / ${GN}u;
    let row = row0 + ${GROUP_STRIDE}u * (i / 4u) + 4u * ty + i % 4u;
    if (row < p.M) {
      let col = col0 + ${GROUP_STRIDE}u * (e % ${GN}u) + 4u * tx;
      let r = res[e];
      for (var j = 0u; j < 4u; j++) { emit(cb, row, col + j, r[j]); }
    }
  }
}`;
  const spec: KernelSpec = { name: `${gemmKernelName(v)}_tiled${bm}`, bindings: ['read', 'read', 'read', 'write'], code };
  specs.set(key, spec);
  return spec;
}
