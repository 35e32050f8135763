// Normalisation family: LayerNorm (affine optional), RMSNorm, AdaLN modulation, gated residual, per-head L2
// normalisation, GroupNorm (+ fused swish) and row reductions. f32 activations and f32 weights; each launcher
// has a float64 CPU reference below. layerNorm, adaLayerNorm and l2NormalizeHeads also read and/or write f16
// activations (`enable f16`, so only when gpu.hasF16): the f16 path of a transformer keeps its residual stream
// in f32 and feeds the linears f16 norm outputs. Statistics are always f32; f16 is only the storage type.
//
// Numerics: variances come from per-thread Welford accumulators merged with Chan's formula (never
// E[x²] − E[x]², which loses every digit when |mean| ≫ std in f32). The data are also shifted by one of their
// own values (the segment's / block's first element) before accumulating: an f32 running mean near 1000
// rounds by 3e-5 per update, one near 0 by far less, and x − shift is exact for data of similar magnitude.
// Reductions are workgroup tree reductions in workgroup memory: portable (no `subgroups` feature needed), and
// these kernels are memory-bound, so the eight barriers of a 256-wide tree cost nothing measurable.
//
// Bindings: any f32 tensor (row views included) is bound from the alignment boundary at or below its first
// byte and addressed with an element offset from the params, so views at arbitrary rows work on every
// device. Tensors bigger than one binding (maxStorageBufferBindingSize, 128 MiB on lavapipe) are processed
// in several dispatches over whole rows / blocks; the only hard limit is that a single row (or, for
// GroupNorm, one 4096-element block) fits in a binding, and that a Tensor is one GPUBuffer (maxBufferSize).

import type { Gpu } from '../engine/device.js';
import { itemSize } from '../engine/dtype.js';
import { LimitError, ShapeError, shapeStr } from '../engine/errors.js';
import { Params } from '../engine/params.js';
import type { BufferRange, KernelSpec } from '../engine/pipelines.js';
import type { Tensor } from '../engine/tensor.js';
import { LINEAR_MAIN_ARGS, LINEAR_WORKGROUP, treeReduce } from './wgsl.js';

export type ReduceOp = 'sum' | 'max' | 'sumsq';

/** Test hook: when > 0, pretend a binding holds at most this many bytes (exercises the split paths cheaply). */
export const normsTesting = { bindingLimit: 0 };

// ---- shared host helpers ---------------------------------------------------------------------

/** Workgroup width for reductions over n elements: short rows (head dims, 1024-wide CLIP rows) waste
 *  fewer idle lanes at 64; long rows get 256 threads (8+ elements each at C = 2048). */
function reduceWidth(n: number): number {
  return n >= 2048 ? 256 : 64;
}

interface Bound {
  range: BufferRange;
  /** Element offset (in the tensor's own elements: f32 or f16) of its first value inside the bound range. */
  off: number;
}

/** Binds an f32 (or f16) tensor from the storage-offset alignment boundary at or below its start. (So two views packed
 *  into one buffer at unaligned offsets, one of them written, may overlap by those few slack bytes, which
 *  WebGPU rejects as aliasing; pooled tensors each have their own buffer.) */
function bind(gpu: Gpu, t: Tensor): Bound {
  t.assertAlive();
  const align = gpu.limits.minStorageBufferOffsetAlignment;
  const start = t.byteOffset - (t.byteOffset % align);
  // Whole 32-bit words (an f16 view may end mid-word; f32 ends are words already).
  const end = Math.min(Math.ceil((t.byteOffset + t.bindingSize) / 4) * 4, t.buffer.size);
  return { range: { buffer: t.buffer, offset: start, size: end - start }, off: (t.byteOffset - start) / itemSize(t.dtype) };
}

/** Elements of f32 that one binding may span, leaving room for the alignment slack of `bind` (f16 tensors
 *  use the same element count: half the bytes, so they fit too). */
function bindingElems(gpu: Gpu): number {
  const device = gpu.limits.maxStorageBufferBindingSize;
  const limit = normsTesting.bindingLimit > 0 ? Math.min(device, normsTesting.bindingLimit) : device;
  return Math.floor((limit - gpu.limits.minStorageBufferOffsetAlignment) / 4);
}

/**
 * Splits `blocks` consecutive work blocks (one workgroup each) into dispatches whose element range fits one
 * binding. Block k covers elements [start(k), end(k)), consecutive blocks are contiguous in memory and no
 * block is longer than `blockLen`, so any run of m blocks spans at most m·blockLen elements.
 */
function forChunks(
  gpu: Gpu,
  kernel: string,
  blocks: number,
  blockLen: number,
  start: (k: number) => number,
  end: (k: number) => number,
  fn: (k0: number, k1: number, e0: number, e1: number) => void,
): void {
  const fit = Math.floor(bindingElems(gpu) / blockLen);
  if (fit < 1) {
    throw new LimitError(`kernel "${kernel}": one block of ${blockLen} f32`, 'maxStorageBufferBindingSize', blockLen * 4 + gpu.limits.minStorageBufferOffsetAlignment, bindingElems(gpu) * 4);
  }
  for (let k0 = 0; k0 < blocks; k0 += fit) {
    const k1 = Math.min(blocks, k0 + fit);
    fn(k0, k1, start(k0), end(k1 - 1));
  }
}

/** A flat view of elements [e0, e1) of t. */
function span(t: Tensor, e0: number, e1: number): Tensor {
  return t.reshape([t.numel]).rows(e0, e1 - e0);
}

function checkF32(kernel: string, ...ts: (Tensor | null | undefined)[]): void {
  for (const t of ts) if (t && t.dtype !== 'f32') throw new ShapeError(kernel, `${t} must be f32`);
}

/** Activation storage types of the launchers that accept f16 (statistics stay f32 either way). */
export type NormDType = 'f32' | 'f16';

/** An activation tensor (x or out) of f32, or f16 when the device has shader-f16. */
function checkActivation(gpu: Gpu, kernel: string, what: string, t: Tensor): NormDType {
  if (t.dtype === 'f32') return 'f32';
  if (t.dtype !== 'f16') throw new ShapeError(kernel, `${what} ${t} must be f32 or f16`);
  if (!gpu.hasF16) throw new ShapeError(kernel, `${what} ${t} is f16, which needs the shader-f16 feature; this device lacks it`);
  return 'f16';
}

function lastDim(kernel: string, x: Tensor): number {
  if (x.rank < 1 || x.shape[x.rank - 1] < 1) throw new ShapeError(kernel, `x ${shapeStr(x.shape)} needs rank ≥ 1 and a non-empty last dim`);
  return x.shape[x.rank - 1];
}

function checkVector(kernel: string, what: string, t: Tensor | null | undefined, n: number, against: string): void {
  if (t && (t.rank !== 1 || t.shape[0] !== n)) throw new ShapeError(kernel, `${what} ${shapeStr(t.shape)} must be [${n}] to match ${against}`);
}

function checkEps(kernel: string, eps: number): void {
  if (!Number.isFinite(eps) || eps < 0) throw new ShapeError(kernel, `eps must be a finite number ≥ 0, got ${eps}`);
}

/** Per-group [G, C] table (or [C] meaning G = 1); returns G. */
function groupTable(kernel: string, what: string, t: Tensor, C: number, xShape: readonly number[]): number {
  if ((t.rank === 1 && t.shape[0] === C) || (t.rank === 2 && t.shape[1] === C && t.shape[0] >= 1)) return t.rank === 1 ? 1 : t.shape[0];
  throw new ShapeError(kernel, `${what} ${shapeStr(t.shape)} must be [G, ${C}] (or [${C}]) for x ${shapeStr(xShape)}`);
}

/** rowsPerGroup: given, or rows / G when that divides; every row must map to a group < G. */
function rowsPerGroupFor(kernel: string, rows: number, G: number, given: number | undefined, xShape: readonly number[]): number {
  let rpg = given;
  if (rpg === undefined) {
    if (rows % G !== 0) throw new ShapeError(kernel, `x ${shapeStr(xShape)} has ${rows} rows, not a multiple of G = ${G}: pass rowsPerGroup`);
    rpg = Math.max(1, rows / G);
  }
  if (!Number.isInteger(rpg) || rpg < 1) throw new ShapeError(kernel, `rowsPerGroup must be a positive integer, got ${rpg}`);
  if (rows > 0 && Math.floor((rows - 1) / rpg) >= G) {
    throw new ShapeError(kernel, `x ${shapeStr(xShape)}: ${rows} rows at ${rpg} rows per group need ${Math.floor((rows - 1) / rpg) + 1} groups, table has G = ${G}`);
  }
  return rpg;
}

/**
 * Output tensor: `out` (validated) or a new one of `dtype` (default f32). Returns whether out is x itself
 * (in-place variant). `dtypes` lists the output dtypes the launcher accepts.
 */
function outputFor(
  gpu: Gpu,
  kernel: string,
  x: Tensor,
  out: Tensor | undefined,
  dtype: NormDType = 'f32',
  dtypes: readonly NormDType[] = ['f32'],
): { out: Tensor; inPlace: boolean } {
  if (!out) return { out: gpu.empty(x.shape, dtype, kernel), inPlace: false };
  if (dtypes.length === 1) checkF32(kernel, out);
  else if (checkActivation(gpu, kernel, 'out', out) !== dtype) throw new ShapeError(kernel, `out ${out} must be ${dtype} (outDtype)`);
  if (out.numel !== x.numel) throw new ShapeError(kernel, `out ${shapeStr(out.shape)} vs x ${shapeStr(x.shape)}`);
  if (out.buffer === x.buffer) {
    if (out.byteOffset === x.byteOffset) {
      if (out.dtype !== x.dtype) throw new ShapeError(kernel, `in place needs one dtype: x ${x}, out ${out}`);
      return { out, inPlace: true };
    }
    const overlap = out.byteOffset < x.byteOffset + x.byteLength && x.byteOffset < out.byteOffset + out.byteLength;
    if (overlap) throw new ShapeError(kernel, `out ${out} partially overlaps x ${x}: pass x itself (in place) or a separate tensor`);
  }
  return { out, inPlace: false };
}

// ---- WGSL snippets -----------------------------------------------------------------------------

/** Welford accumulator (count, mean, M2) and Chan's merge of two of them. */
const WELFORD_WGSL = /* wgsl */ `
fn welford_add(a: vec3<f32>, v: f32) -> vec3<f32> {
  let n = a.x + 1.0;
  let d = v - a.y;
  let mean = a.y + d / n;
  return vec3<f32>(n, mean, a.z + d * (v - mean));
}
fn welford_merge(a: vec3<f32>, b: vec3<f32>) -> vec3<f32> {
  if (b.x == 0.0) { return a; }
  let n = a.x + b.x;
  let d = b.y - a.y;
  let f = b.x / n;
  return vec3<f32>(n, a.y + d * f, a.z + b.z + d * d * a.x * f);
}`;

/** Tree reduction of one value per thread over a workgroup of `wg` threads (`wg` a power of two). */

/** Storage declarations: binding 0 is x (read_write when the kernel works in place), then the rest; element
 *  type f32 unless a third entry says f16 (then the shader needs `enable f16`). */
function declare(names: [string, 'read' | 'write', NormDType?][]): { code: string; bindings: ('read' | 'write')[] } {
  const code = names
    .map(([n, a, t], i) => `@group(0) @binding(${i}) var<storage, ${a === 'read' ? 'read' : 'read_write'}> ${n}: array<${t ?? 'f32'}>;`)
    .join('\n');
  return { code: `${code}\n@group(0) @binding(${names.length}) var<uniform> p: P;`, bindings: names.map(([, a]) => a) };
}

// ---- segment norms: layerNorm, rmsNorm, adaLayerNorm, l2NormalizeHeads ---------------------------
// One workgroup per segment of n contiguous elements (a row, or one head of a row), statistics reduced in
// workgroup memory, then a second sweep writes the output (the row is still in cache).

type SegKind = 'layer' | 'rms' | 'ada' | 'l2';

interface SegVariant {
  kind: SegKind;
  /** layer: weight / rms: weight / ada: scale table / l2: per-head scale. */
  a: boolean;
  /** layer: bias / ada: shift table. */
  b: boolean;
  inPlace: boolean;
  wg: number;
  /** Storage types of x and y (y = x when in place); absent means f32. */
  x?: NormDType;
  y?: NormDType;
}

const segSpecs = new Map<string, KernelSpec>();
function segSpec(v: SegVariant): KernelSpec {
  const xt = v.x ?? 'f32';
  const yt = v.inPlace ? xt : (v.y ?? 'f32');
  const half = xt === 'f16' || yt === 'f16';
  const key = `${v.kind}_a${+v.a}_b${+v.b}_ip${+v.inPlace}_wg${v.wg}${half ? `_${xt}_${yt}` : ''}`;
  let spec = segSpecs.get(key);
  if (spec) return spec;
  const names: [string, 'read' | 'write', NormDType][] = [['x', v.inPlace ? 'write' : 'read', xt]];
  if (!v.inPlace) names.push(['y', 'write', yt]);
  if (v.a) names.push(['ta', 'read', 'f32']);
  if (v.b) names.push(['tb', 'read', 'f32']);
  const decl = declare(names);
  const y = v.inPlace ? 'x' : 'y';
  const yOff = v.inPlace ? 'p.x_off' : 'p.y_off';
  // Loads widen f16 to f32, the store rounds once; the f32 source is the same text as without f16 support.
  const ld = (e: string) => (xt === 'f16' ? `f32(x[${e}])` : `x[${e}]`);
  const st = (e: string) => (yt === 'f16' ? `f16(${e})` : e);
  const welford = v.kind === 'layer' || v.kind === 'ada';
  // Statistics → `mul` (1/σ, 1/rms or 1/‖x‖) and, for the LayerNorms, `shift` and `mean` (of x − shift).
  const stats = welford
    ? /* wgsl */ `
  let shift = ${ld('xb')};
  var acc = vec3<f32>(0.0);
  for (var c = li; c < p.n; c += ${v.wg}u) { acc = welford_add(acc, ${ld('xb + c')} - shift); }
  let st = reduce_wg(li, acc);
  let mean = st.y; // of x − shift
  let mul = inverseSqrt(st.z / f32(p.n) + p.eps);`
    : /* wgsl */ `
  var acc = 0.0;
  for (var c = li; c < p.n; c += ${v.wg}u) { let t = ${ld('xb + c')}; acc += t * t; }
  let ss = reduce_wg(li, acc);
  let mul = ${v.kind === 'rms' ? 'inverseSqrt(ss / f32(p.n) + p.eps)' : '1.0 / max(sqrt(ss), 1e-12)'};`;
  let out: string;
  switch (v.kind) {
    case 'layer':
      out = `((t - shift) - mean) * mul${v.a ? ' * ta[p.a_off + c]' : ''}${v.b ? ' + tb[p.b_off + c]' : ''}`;
      break;
    case 'rms':
      out = `t * mul${v.a ? ' * ta[p.a_off + c]' : ''}`;
      break;
    case 'ada':
      // g = floor(row / rowsPerGroup); the tables are [G, n].
      out = '((t - shift) - mean) * mul * (1.0 + ta[ga + c]) + tb[gb + c]';
      break;
    case 'l2':
      out = `t * hmul`;
      break;
  }
  const pre =
    v.kind === 'ada'
      ? `let g = (p.seg0 + s) / p.group;\n  let ga = p.a_off + g * p.n;\n  let gb = p.b_off + g * p.n;`
      : v.kind === 'l2'
        ? `let hmul = mul${v.a ? ' * ta[p.a_off + (p.seg0 + s) % p.group]' : ''};`
        : '';
  const code = /* wgsl */ `${half ? 'enable f16;' : ''}
struct P { segs: u32, n: u32, seg0: u32, group: u32, x_off: u32, y_off: u32, a_off: u32, b_off: u32, eps: f32 }
${decl.code}
${welford ? WELFORD_WGSL : ''}
${treeReduce(v.wg, welford ? 'vec3<f32>' : 'f32', welford ? (a, b) => `welford_merge(${a}, ${b})` : (a, b) => `${a} + ${b}`)}
${LINEAR_WORKGROUP}
@compute @workgroup_size(${v.wg})
fn main(${LINEAR_MAIN_ARGS}) {
  let s = linear_workgroup(wid, nwg);
  if (s >= p.segs) { return; } // uniform per workgroup: the barriers below stay in uniform control flow
  let xb = p.x_off + s * p.n;
  let yb = ${yOff} + s * p.n;
${stats}
  ${pre}
  for (var c = li; c < p.n; c += ${v.wg}u) {
    let t = ${ld('xb + c')};
    ${y}[yb + c] = ${st(out)};
  }
}`;
  spec = { name: `norm_${v.kind}${half ? `_${xt}_${yt}` : ''}`, bindings: decl.bindings, code };
  segSpecs.set(key, spec);
  return spec;
}

/** Runs a segment kernel over x viewed as [segs, n], split into dispatches that fit one binding. */
function runSegments(
  gpu: Gpu,
  v: SegVariant,
  x: Tensor,
  out: Tensor,
  n: number,
  extra: { a?: Tensor | null; b?: Tensor | null; group?: number; eps?: number },
): void {
  const spec = segSpec(v);
  const segs = x.numel / n;
  const ta = extra.a ? bind(gpu, extra.a) : null;
  const tb = extra.b ? bind(gpu, extra.b) : null;
  forChunks(gpu, spec.name, segs, n, (k) => k * n, (k) => (k + 1) * n, (k0, k1, e0, e1) => {
    const xs = bind(gpu, span(x, e0, e1));
    const ys = v.inPlace ? xs : bind(gpu, span(out, e0, e1));
    const bindings: BufferRange[] = [xs.range];
    if (!v.inPlace) bindings.push(ys.range);
    if (ta) bindings.push(ta.range);
    if (tb) bindings.push(tb.range);
    const params = new Params()
      .u32(k1 - k0, n, k0, extra.group ?? 1, xs.off, ys.off, ta?.off ?? 0, tb?.off ?? 0)
      .f32(extra.eps ?? 0);
    gpu.run(spec, bindings, params, k1 - k0);
  });
}

/** Output dtype of the f16-capable launchers: `outDtype`, else `out`'s, else x's. */
export interface NormOutputOptions {
  /** Output (same element count); may be x itself (in place). */
  out?: Tensor;
  /** f32 or f16 (f16 needs gpu.hasF16). Default: out's dtype, else x's. */
  outDtype?: NormDType;
}

/** Validates x (f32/f16) and the output of an f16-capable launcher. */
function activationIo(gpu: Gpu, kernel: string, x: Tensor, opts: NormOutputOptions): { out: Tensor; inPlace: boolean; xt: NormDType; yt: NormDType } {
  const xt = checkActivation(gpu, kernel, 'x', x);
  const yt = opts.outDtype ?? (opts.out?.dtype as NormDType | undefined) ?? xt;
  if (yt !== 'f32' && yt !== 'f16') throw new ShapeError(kernel, `outDtype must be f32 or f16, got ${String(yt)}`);
  if (yt === 'f16' && !gpu.hasF16) throw new ShapeError(kernel, `outDtype f16 needs the shader-f16 feature; this device lacks it`);
  return { ...outputFor(gpu, kernel, x, opts.out, yt, ['f32', 'f16']), xt, yt };
}

export interface LayerNormOptions extends NormOutputOptions {
  weight?: Tensor | null;
  bias?: Tensor | null;
  /** Default 1e-5 (torch.nn.LayerNorm); Infinity and STAR use 1e-6. */
  eps?: number;
}

/**
 * LayerNorm over the last dim: (x − mean)/sqrt(var + eps) · weight + bias (biased variance, like PyTorch).
 * x and out f32 or f16 (statistics in f32), weight and bias f32.
 */
export function layerNorm(gpu: Gpu, x: Tensor, opts: LayerNormOptions = {}): Tensor {
  const name = 'layer_norm';
  checkF32(name, opts.weight, opts.bias);
  const C = lastDim(name, x);
  checkVector(name, 'weight', opts.weight, C, `x ${shapeStr(x.shape)}`);
  checkVector(name, 'bias', opts.bias, C, `x ${shapeStr(x.shape)}`);
  const eps = opts.eps ?? 1e-5;
  checkEps(name, eps);
  const { out, inPlace, xt, yt } = activationIo(gpu, name, x, opts);
  const v: SegVariant = { kind: 'layer', a: !!opts.weight, b: !!opts.bias, inPlace, wg: reduceWidth(C), x: xt, y: yt };
  runSegments(gpu, v, x, out, C, { a: opts.weight, b: opts.bias, eps });
  return out;
}

export interface RmsNormOptions {
  weight?: Tensor | null;
  /** Default 1e-6 (T5LayerNorm, Infinity's text_norm). */
  eps?: number;
  out?: Tensor;
}

/** RMSNorm over the last dim: x / sqrt(mean(x²) + eps) · weight. */
export function rmsNorm(gpu: Gpu, x: Tensor, opts: RmsNormOptions = {}): Tensor {
  const name = 'rms_norm';
  checkF32(name, x, opts.weight);
  const C = lastDim(name, x);
  checkVector(name, 'weight', opts.weight, C, `x ${shapeStr(x.shape)}`);
  const eps = opts.eps ?? 1e-6;
  checkEps(name, eps);
  const { out, inPlace } = outputFor(gpu, name, x, opts.out);
  runSegments(gpu, { kind: 'rms', a: !!opts.weight, b: false, inPlace, wg: reduceWidth(C) }, x, out, C, { a: opts.weight, eps });
  return out;
}

export interface AdaLayerNormOptions extends NormOutputOptions {
  /** Default 1e-6 (Infinity's fused adaLN). */
  eps?: number;
  /** Rows per scale/shift group; default rows / G. */
  rowsPerGroup?: number;
}

/**
 * AdaLN modulation: x [R, C] (any rank, rows = all dims but the last); scale, shift [G, C] (or [C]).
 * Row r uses g = floor(r / rowsPerGroup): y = LN(x)·(1 + scale_g) + shift_g, LN non-affine.
 * x and out f32 or f16 (statistics in f32), scale and shift f32.
 */
export function adaLayerNorm(gpu: Gpu, x: Tensor, scale: Tensor, shift: Tensor, opts: AdaLayerNormOptions = {}): Tensor {
  const name = 'ada_layer_norm';
  checkF32(name, scale, shift);
  const C = lastDim(name, x);
  const G = groupTable(name, 'scale', scale, C, x.shape);
  if (groupTable(name, 'shift', shift, C, x.shape) !== G) {
    throw new ShapeError(name, `scale ${shapeStr(scale.shape)} and shift ${shapeStr(shift.shape)} differ`);
  }
  const rpg = rowsPerGroupFor(name, x.numel / C, G, opts.rowsPerGroup, x.shape);
  const eps = opts.eps ?? 1e-6;
  checkEps(name, eps);
  const { out, inPlace, xt, yt } = activationIo(gpu, name, x, opts);
  runSegments(gpu, { kind: 'ada', a: true, b: true, inPlace, wg: reduceWidth(C), x: xt, y: yt }, x, out, C, { a: scale, b: shift, group: rpg, eps });
  return out;
}

export interface L2NormalizeHeadsOptions extends NormOutputOptions {
  heads: number;
  /** Per-head multiplier [H] (e.g. exp(min(scale_mul, ln 100)) for q), or null for 1. */
  scale?: Tensor | null;
}

/**
 * x [R, H·D]: each head's D-vector divided by max(‖x‖₂, 1e-12) (F.normalize), times scale[h]. x and out
 * f32 or f16 (the sum of squares in f32), scale f32.
 */
export function l2NormalizeHeads(gpu: Gpu, x: Tensor, opts: L2NormalizeHeadsOptions): Tensor {
  const name = 'l2_normalize_heads';
  checkF32(name, opts.scale);
  const C = lastDim(name, x);
  const H = opts.heads;
  if (!Number.isInteger(H) || H < 1 || C % H !== 0) throw new ShapeError(name, `heads = ${H} must divide the last dim of x ${shapeStr(x.shape)}`);
  checkVector(name, 'scale', opts.scale, H, `heads = ${H}`);
  const D = C / H;
  const { out, inPlace, xt, yt } = activationIo(gpu, name, x, opts);
  runSegments(gpu, { kind: 'l2', a: !!opts.scale, b: false, inPlace, wg: reduceWidth(D), x: xt, y: yt }, x, out, D, { a: opts.scale, group: H });
  return out;
}

// ---- gated residual ----------------------------------------------------------------------------

const GATE_WG = 256;
const GATE_PER_THREAD = 4;
const GATE_BLOCK = GATE_WG * GATE_PER_THREAD;

const gateSpecs = new Map<boolean, KernelSpec>();
function gateSpec(gated: boolean): KernelSpec {
  let spec = gateSpecs.get(gated);
  if (spec) return spec;
  const decl = declare(gated ? [['x', 'write'], ['y', 'read'], ['gamma', 'read']] : [['x', 'write'], ['y', 'read']]);
  spec = {
    name: gated ? 'gated_residual' : 'residual_add',
    bindings: decl.bindings,
    code: /* wgsl */ `
struct P { n: u32, c: u32, e0: u32, rpg: u32, x_off: u32, y_off: u32, g_off: u32 }
${decl.code}
${LINEAR_WORKGROUP}
@compute @workgroup_size(${GATE_WG})
fn main(${LINEAR_MAIN_ARGS}) {
  // Elements [e0, e0 + n) of the flat x; this dispatch's bindings start at e0.
  let j0 = linear_workgroup(wid, nwg) * ${GATE_BLOCK}u + li;
  for (var t = 0u; t < ${GATE_PER_THREAD}u; t++) {
    let j = j0 + t * ${GATE_WG}u;
    if (j >= p.n) { return; }
    ${gated ? `let e = p.e0 + j;
    let row = e / p.c;
    let g = row / p.rpg;
    x[p.x_off + j] += gamma[p.g_off + g * p.c + (e - row * p.c)] * y[p.y_off + j];` : 'x[p.x_off + j] += y[p.y_off + j];'}
  }
}`,
  };
  gateSpecs.set(gated, spec);
  return spec;
}

export interface GatedResidualOptions {
  /** Rows per gamma group; default rows / G. */
  rowsPerGroup?: number;
}

/** In place: x += gamma_g ⊙ y with g = floor(row / rowsPerGroup); gamma [G, C] (or [C]) or null (plain add).
 *  Returns x. */
export function gatedResidual(gpu: Gpu, x: Tensor, y: Tensor, gamma: Tensor | null, opts: GatedResidualOptions = {}): Tensor {
  const name = gamma ? 'gated_residual' : 'residual_add';
  checkF32(name, x, y, gamma);
  const C = lastDim(name, x);
  if (y.numel !== x.numel || y.shape[y.rank - 1] !== C) throw new ShapeError(name, `y ${shapeStr(y.shape)} must match x ${shapeStr(x.shape)}`);
  if (y.buffer === x.buffer && y.byteOffset < x.byteOffset + x.byteLength && x.byteOffset < y.byteOffset + y.byteLength) {
    throw new ShapeError(name, `y ${y} overlaps x ${x} (x is written in place)`);
  }
  const rows = x.numel / C;
  const rpg = gamma ? rowsPerGroupFor(name, rows, groupTable(name, 'gamma', gamma, C, x.shape), opts.rowsPerGroup, x.shape) : 1;
  const spec = gateSpec(!!gamma);
  const g = gamma ? bind(gpu, gamma) : null;
  const n = x.numel;
  const blocks = Math.ceil(n / GATE_BLOCK);
  const start = (k: number) => k * GATE_BLOCK;
  forChunks(gpu, name, blocks, GATE_BLOCK, start, (k) => Math.min(n, start(k) + GATE_BLOCK), (k0, k1, e0, e1) => {
    const xs = bind(gpu, span(x, e0, e1));
    const ys = bind(gpu, span(y, e0, e1));
    const params = new Params().u32(e1 - e0, C, e0, rpg, xs.off, ys.off, g?.off ?? 0);
    gpu.run(spec, g ? [xs.range, ys.range, g.range] : [xs.range, ys.range], params, k1 - k0);
  });
  return x;
}

// ---- row reductions ----------------------------------------------------------------------------

const reduceSpecs = new Map<string, KernelSpec>();
function reduceSpec(op: ReduceOp, wg: number): KernelSpec {
  const key = `${op}_${wg}`;
  let spec = reduceSpecs.get(key);
  if (spec) return spec;
  const decl = declare([['x', 'read'], ['y', 'write']]);
  // max starts from an element every thread may read (c = min(li, n − 1)): WGSL has no -inf literal.
  const init = op === 'max' ? 'x[xb + min(li, p.n - 1u)]' : '0.0';
  const step = op === 'max' ? 'acc = max(acc, t);' : op === 'sum' ? 'acc += t;' : 'acc += t * t;';
  spec = {
    name: `row_reduce_${op}`,
    bindings: decl.bindings,
    code: /* wgsl */ `
struct P { segs: u32, n: u32, seg0: u32, x_off: u32, y_off: u32 }
${decl.code}
${treeReduce(wg, 'f32', op === 'max' ? (a, b) => `max(${a}, ${b})` : (a, b) => `${a} + ${b}`)}
${LINEAR_WORKGROUP}
@compute @workgroup_size(${wg})
fn main(${LINEAR_MAIN_ARGS}) {
  let s = linear_workgroup(wid, nwg);
  if (s >= p.segs) { return; }
  let xb = p.x_off + s * p.n;
  var acc = ${init};
  for (var c = li; c < p.n; c += ${wg}u) { let t = x[xb + c]; ${step} }
  let r = reduce_wg(li, acc);
  if (li == 0u) { y[p.y_off + p.seg0 + s] = r; }
}`,
  };
  reduceSpecs.set(key, spec);
  return spec;
}

/** Reduces x [R, C] (any rank; rows = all dims but the last) over the last dim → [R]. */
export function rowReduce(gpu: Gpu, x: Tensor, op: ReduceOp, opts: { out?: Tensor } = {}): Tensor {
  const name = `row_reduce_${op}`;
  if (op !== 'sum' && op !== 'max' && op !== 'sumsq') throw new ShapeError('row_reduce', `unknown op "${op as string}"`);
  checkF32(name, x);
  const C = lastDim(name, x);
  const rows = x.numel / C;
  const out = opts.out ?? gpu.empty([rows], 'f32', name);
  checkF32(name, out);
  if (out.numel !== rows) throw new ShapeError(name, `out ${shapeStr(out.shape)} needs ${rows} elements for x ${shapeStr(x.shape)}`);
  const spec = reduceSpec(op, reduceWidth(C));
  const ys = bind(gpu, out);
  forChunks(gpu, name, rows, C, (k) => k * C, (k) => (k + 1) * C, (k0, k1, e0, e1) => {
    const xs = bind(gpu, span(x, e0, e1));
    gpu.run(spec, [xs.range, ys.range], new Params().u32(k1 - k0, C, k0, xs.off, ys.off), k1 - k0);
  });
  return out;
}

// ---- GroupNorm ---------------------------------------------------------------------------------
// Three passes, so statistics over millions of elements per group stay parallel and numerically sound:
//  1. gn_partials: each workgroup reduces one block of ≤ 4096 elements of one group to (shift, mean, M2);
//  2. gn_finalize: one workgroup per (n, group) merges its blocks (Chan) → (shift, mean, rstd);
//  3. gn_apply: elementwise (x − mean)·rstd·w[c] + b[c] (+ swish), blocks of ≤ 1024 elements of one channel
//     plane, so channel and group are per-workgroup constants.
// Groups of (C/G)·H·W elements are contiguous in NCHW, and so are the blocks of passes 1 and 3, so both
// are split over whole blocks when x exceeds one binding: groups larger than a binding are fine.

const GN_WG = 256;
const GN_STATS_BLOCK = GN_WG * 16;
const GN_APPLY_BLOCK = GN_WG * 4;

const GN_PARTIALS: KernelSpec = (() => {
  const decl = declare([['x', 'read'], ['part', 'write']]);
  return {
    name: 'group_norm_partials',
    bindings: decl.bindings,
    code: /* wgsl */ `
struct P { blocks: u32, k0: u32, bpg: u32, m: u32, e0: u32, x_off: u32 }
${decl.code}
${WELFORD_WGSL}
${treeReduce(GN_WG, 'vec3<f32>', (a, b) => `welford_merge(${a}, ${b})`)}
${LINEAR_WORKGROUP}
@compute @workgroup_size(${GN_WG})
fn main(${LINEAR_MAIN_ARGS}) {
  let kl = linear_workgroup(wid, nwg);
  if (kl >= p.blocks) { return; }
  let k = p.k0 + kl;
  let j0 = (k % p.bpg) * ${GN_STATS_BLOCK}u;
  let len = min(${GN_STATS_BLOCK}u, p.m - j0);
  // Global element (k / bpg)·m + j0, relative to this dispatch's binding, which starts at element e0.
  let base = (k / p.bpg) * p.m + j0 - p.e0 + p.x_off;
  let shift = x[base];
  var acc = vec3<f32>(0.0);
  for (var c = li; c < len; c += ${GN_WG}u) { acc = welford_add(acc, x[base + c] - shift); }
  let st = reduce_wg(li, acc);
  // (shift, mean of x − shift, M2) per block.
  if (li == 0u) { part[3u * k] = shift; part[3u * k + 1u] = st.y; part[3u * k + 2u] = st.z; }
}`,
  };
})();

const GN_FINALIZE: KernelSpec = (() => {
  const decl = declare([['part', 'read'], ['stats', 'write']]);
  return {
    name: 'group_norm_finalize',
    bindings: decl.bindings,
    code: /* wgsl */ `
struct P { segs: u32, bpg: u32, m: u32, eps: f32 }
${decl.code}
${WELFORD_WGSL}
${treeReduce(GN_WG, 'vec3<f32>', (a, b) => `welford_merge(${a}, ${b})`)}
${LINEAR_WORKGROUP}
@compute @workgroup_size(${GN_WG})
fn main(${LINEAR_MAIN_ARGS}) {
  let s = linear_workgroup(wid, nwg);
  if (s >= p.segs) { return; }
  // Block means are re-expressed relative to the group's shift (its first block's), so the merge works on
  // small numbers; (block shift − group shift) is exact when they are of similar magnitude.
  let shift = part[3u * s * p.bpg];
  var acc = vec3<f32>(0.0);
  for (var b = li; b < p.bpg; b += ${GN_WG}u) {
    let k = s * p.bpg + b;
    // Block sizes are implied by the shape; counts as f32 are exact below 2^24 and merely rounded above.
    let cnt = f32(min(${GN_STATS_BLOCK}u, p.m - b * ${GN_STATS_BLOCK}u));
    acc = welford_merge(acc, vec3<f32>(cnt, (part[3u * k] - shift) + part[3u * k + 1u], part[3u * k + 2u]));
  }
  let st = reduce_wg(li, acc);
  // (shift, mean of x − shift, rstd) per group.
  if (li == 0u) { stats[3u * s] = shift; stats[3u * s + 1u] = st.y; stats[3u * s + 2u] = inverseSqrt(st.z / f32(p.m) + p.eps); }
}`,
  };
})();

interface GnApplyVariant {
  w: boolean;
  b: boolean;
  swish: boolean;
  inPlace: boolean;
}

const gnApplySpecs = new Map<string, KernelSpec>();
function gnApplySpec(v: GnApplyVariant): KernelSpec {
  const key = `w${+v.w}_b${+v.b}_s${+v.swish}_ip${+v.inPlace}`;
  let spec = gnApplySpecs.get(key);
  if (spec) return spec;
  const names: [string, 'read' | 'write'][] = [['x', v.inPlace ? 'write' : 'read']];
  if (!v.inPlace) names.push(['y', 'write']);
  names.push(['stats', 'read']);
  if (v.w) names.push(['w', 'read']);
  if (v.b) names.push(['bias', 'read']);
  const decl = declare(names);
  spec = {
    name: v.swish ? 'group_norm_swish' : 'group_norm',
    bindings: decl.bindings,
    code: /* wgsl */ `
struct P { blocks: u32, k0: u32, bpp: u32, hw: u32, c: u32, cpg: u32, e0: u32, x_off: u32, y_off: u32, w_off: u32, b_off: u32 }
${decl.code}
${LINEAR_WORKGROUP}
@compute @workgroup_size(${GN_WG})
fn main(${LINEAR_MAIN_ARGS}) {
  let kl = linear_workgroup(wid, nwg);
  if (kl >= p.blocks) { return; }
  let k = p.k0 + kl;
  let plane = k / p.bpp;             // n·C + c
  let j0 = (k % p.bpp) * ${GN_APPLY_BLOCK}u;
  let ch = plane % p.c;
  let seg = plane / p.cpg;           // n·G + c / cpg
  let shift = stats[3u * seg];
  let mean = stats[3u * seg + 1u];
  let mul = stats[3u * seg + 2u]${v.w ? ' * w[p.w_off + ch]' : ''};
  let beta = ${v.b ? 'bias[p.b_off + ch]' : '0.0'};
  let base = plane * p.hw - p.e0;    // relative to this dispatch's binding
  for (var t = 0u; t < ${GN_APPLY_BLOCK / GN_WG}u; t++) {
    let j = j0 + t * ${GN_WG}u + li;
    if (j >= p.hw) { return; }
    let o = ((x[p.x_off + base + j] - shift) - mean) * mul + beta;
    ${v.inPlace ? 'x[p.x_off' : 'y[p.y_off'} + base + j] = ${v.swish ? 'o / (1.0 + exp(-o))' : 'o'};
  }
}`,
  };
  gnApplySpecs.set(key, spec);
  return spec;
}

export interface GroupNormOptions {
  /** Default 32 (the VAE decoders). */
  groups?: number;
  weight?: Tensor | null;
  bias?: Tensor | null;
  /** Default 1e-5 (torch.nn.GroupNorm); the VAEs use 1e-6. */
  eps?: number;
  /** Fused swish x·sigmoid(x) after the affine. */
  swish?: boolean;
  /** Output; may be x itself (in place, which halves the memory of a 1024² decoder map). */
  out?: Tensor;
}

/** GroupNorm over x [N, C, ...spatial] (usually [N, C, H, W]): statistics per (n, group of C/G channels). */
export function groupNorm(gpu: Gpu, x: Tensor, opts: GroupNormOptions = {}): Tensor {
  const name = opts.swish ? 'group_norm_swish' : 'group_norm';
  checkF32(name, x, opts.weight, opts.bias);
  if (x.rank < 2) throw new ShapeError(name, `x ${shapeStr(x.shape)} must be [N, C, ...]`);
  const [N, C] = x.shape;
  const G = opts.groups ?? 32;
  if (!Number.isInteger(G) || G < 1 || C % G !== 0) throw new ShapeError(name, `groups = ${G} must divide C = ${C} of x ${shapeStr(x.shape)}`);
  checkVector(name, 'weight', opts.weight, C, `C of x ${shapeStr(x.shape)}`);
  checkVector(name, 'bias', opts.bias, C, `C of x ${shapeStr(x.shape)}`);
  const eps = opts.eps ?? 1e-5;
  checkEps(name, eps);
  const { out, inPlace } = outputFor(gpu, name, x, opts.out);
  const hw = x.numel / Math.max(1, N * C);
  if (x.numel === 0 || hw === 0) return out;
  const cpg = C / G;
  const m = cpg * hw;
  const segs = N * G;

  // Pass 1: partial (shift, mean, M2) per block of ≤ GN_STATS_BLOCK elements of one group.
  const bpg = Math.ceil(m / GN_STATS_BLOCK);
  const part = gpu.empty([segs * bpg, 3], 'f32', 'group_norm_partials');
  const pb = bind(gpu, part);
  const blockStart = (k: number) => Math.floor(k / bpg) * m + (k % bpg) * GN_STATS_BLOCK;
  const blockEnd = (k: number) => Math.min(blockStart(k) + GN_STATS_BLOCK, (Math.floor(k / bpg) + 1) * m);
  forChunks(gpu, GN_PARTIALS.name, segs * bpg, GN_STATS_BLOCK, blockStart, blockEnd, (k0, k1, e0, e1) => {
    const xs = bind(gpu, span(x, e0, e1));
    gpu.run(GN_PARTIALS, [xs.range, pb.range], new Params().u32(k1 - k0, k0, bpg, m, e0, xs.off), k1 - k0);
  });

  // Pass 2: (shift, mean, rstd) per (n, group).
  const stats = gpu.empty([segs, 3], 'f32', 'group_norm_stats');
  gpu.run(GN_FINALIZE, [pb.range, bind(gpu, stats).range], new Params().u32(segs, bpg, m).f32(eps), segs);
  part.dispose(); // recorded work keeps the buffer alive until it runs; the pool hands it out again only for later dispatches

  // Pass 3: normalise, affine, swish.
  const v: GnApplyVariant = { w: !!opts.weight, b: !!opts.bias, swish: !!opts.swish, inPlace };
  const spec = gnApplySpec(v);
  const sb = bind(gpu, stats);
  const wb = opts.weight ? bind(gpu, opts.weight) : null;
  const bb = opts.bias ? bind(gpu, opts.bias) : null;
  const bpp = Math.ceil(hw / GN_APPLY_BLOCK);
  const aStart = (k: number) => Math.floor(k / bpp) * hw + (k % bpp) * GN_APPLY_BLOCK;
  const aEnd = (k: number) => Math.min(aStart(k) + GN_APPLY_BLOCK, (Math.floor(k / bpp) + 1) * hw);
  forChunks(gpu, spec.name, N * C * bpp, GN_APPLY_BLOCK, aStart, aEnd, (k0, k1, e0, e1) => {
    const xs = bind(gpu, span(x, e0, e1));
    const ys = inPlace ? xs : bind(gpu, span(out, e0, e1));
    const bindings: BufferRange[] = inPlace ? [xs.range, sb.range] : [xs.range, ys.range, sb.range];
    if (wb) bindings.push(wb.range);
    if (bb) bindings.push(bb.range);
    const params = new Params().u32(k1 - k0, k0, bpp, hw, C, cpg, e0, xs.off, ys.off, wb?.off ?? 0, bb?.off ?? 0);
    gpu.run(spec, bindings, params, k1 - k0);
  });
  stats.dispose();
  return out;
}

// ---- float64 references ----------------------------------------------------------------------

/** Mean and biased variance of v[o, o + n), two-pass in float64. */
function moments(v: ArrayLike<number>, o: number, n: number): [number, number] {
  let s = 0;
  for (let i = 0; i < n; i++) s += v[o + i];
  const mean = s / n;
  let q = 0;
  for (let i = 0; i < n; i++) q += (v[o + i] - mean) ** 2;
  return [mean, q / n];
}

export function layerNormRef(
  x: ArrayLike<number>,
  C: number,
  weight: ArrayLike<number> | null = null,
  bias: ArrayLike<number> | null = null,
  eps = 1e-5,
): Float64Array {
  const y = new Float64Array(x.length);
  for (let o = 0; o < x.length; o += C) {
    const [mean, variance] = moments(x, o, C);
    const r = 1 / Math.sqrt(variance + eps);
    for (let c = 0; c < C; c++) y[o + c] = (x[o + c] - mean) * r * (weight ? weight[c] : 1) + (bias ? bias[c] : 0);
  }
  return y;
}

export function rmsNormRef(x: ArrayLike<number>, C: number, weight: ArrayLike<number> | null = null, eps = 1e-6): Float64Array {
  const y = new Float64Array(x.length);
  for (let o = 0; o < x.length; o += C) {
    let ss = 0;
    for (let c = 0; c < C; c++) ss += x[o + c] ** 2;
    const r = 1 / Math.sqrt(ss / C + eps);
    for (let c = 0; c < C; c++) y[o + c] = x[o + c] * r * (weight ? weight[c] : 1);
  }
  return y;
}

/** scale, shift: [G·C] flattened. */
export function adaLayerNormRef(
  x: ArrayLike<number>,
  C: number,
  scale: ArrayLike<number>,
  shift: ArrayLike<number>,
  rowsPerGroup: number,
  eps = 1e-6,
): Float64Array {
  const y = layerNormRef(x, C, null, null, eps);
  for (let o = 0, r = 0; o < x.length; o += C, r++) {
    const g = Math.floor(r / rowsPerGroup) * C;
    for (let c = 0; c < C; c++) y[o + c] = y[o + c] * (1 + scale[g + c]) + shift[g + c];
  }
  return y;
}

export function gatedResidualRef(
  x: ArrayLike<number>,
  y: ArrayLike<number>,
  C: number,
  gamma: ArrayLike<number> | null,
  rowsPerGroup = 1,
): Float64Array {
  const out = new Float64Array(x.length);
  for (let i = 0; i < x.length; i++) {
    const r = Math.floor(i / C);
    const gv = gamma ? gamma[Math.floor(r / rowsPerGroup) * C + (i % C)] : 1;
    out[i] = x[i] + gv * y[i];
  }
  return out;
}

export function l2NormalizeHeadsRef(x: ArrayLike<number>, C: number, heads: number, scale: ArrayLike<number> | null = null): Float64Array {
  const D = C / heads;
  const y = new Float64Array(x.length);
  for (let o = 0, s = 0; o < x.length; o += D, s++) {
    let ss = 0;
    for (let d = 0; d < D; d++) ss += x[o + d] ** 2;
    const m = (scale ? scale[s % heads] : 1) / Math.max(Math.sqrt(ss), 1e-12);
    for (let d = 0; d < D; d++) y[o + d] = x[o + d] * m;
  }
  return y;
}

export function groupNormRef(
  x: ArrayLike<number>,
  shape: readonly number[],
  groups: number,
  weight: ArrayLike<number> | null = null,
  bias: ArrayLike<number> | null = null,
  eps = 1e-5,
  swish = false,
): Float64Array {
  const [N, C] = shape;
  const hw = x.length / (N * C);
  const m = (C / groups) * hw;
  const y = new Float64Array(x.length);
  const cpg = C / groups;
  for (let s = 0; s < N * groups; s++) {
    const [mean, variance] = moments(x, s * m, m);
    const r = 1 / Math.sqrt(variance + eps);
    for (let k = 0; k < cpg; k++) {
      const c = (s % groups) * cpg + k;
      const mul = r * (weight ? weight[c] : 1);
      const add = bias ? bias[c] : 0;
      for (let i = s * m + k * hw; i < s * m + (k + 1) * hw; i++) {
        const o = (x[i] - mean) * mul + add;
        y[i] = swish ? o / (1 + Math.exp(-o)) : o;
      }
    }
  }
  return y;
}

export function rowReduceRef(x: ArrayLike<number>, C: number, op: ReduceOp): Float64Array {
  const y = new Float64Array(x.length / C);
  for (let r = 0; r < y.length; r++) {
    let acc = op === 'max' ? -Infinity : 0;
    for (let c = 0; c < C; c++) {
      const v = x[r * C + c];
      acc = op === 'max' ? Math.max(acc, v) : op === 'sum' ? acc + v : acc + v * v;
    }
    y[r] = acc;
  }
  return y;
}
