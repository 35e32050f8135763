// WGSL snippets shared by kernels: linear workgroup ids over folded grids, and 16-bit float loads that
// work without the shader-f16 feature (halves packed two per u32).

import type { DType } from '../engine/dtype.js';

/** Linear workgroup index for grids folded into x and y by Gpu.run(…, linearCount). */
export const LINEAR_WORKGROUP = /* wgsl */ `
fn linear_workgroup(wid: vec3<u32>, nwg: vec3<u32>) -> u32 { return wid.x + wid.y * nwg.x; }
`;

/** Parameters of a `main` that calls linear_workgroup(wid, nwg) and uses the local index li. */
export const LINEAR_MAIN_ARGS = '@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32';

/**
 * WGSL storage type and scalar loader for an element type stored in memory.
 * f16 and bf16 are stored as packed u32 pairs and widened to f32 on load, so they need no feature.
 * Usage: `${elementType(dtype)}` for the array element, `${loadFn(name, dtype)}` defines `fn name(i: u32) -> f32`.
 */
export function storageElement(dtype: DType): string {
  switch (dtype) {
    case 'f32':
      return 'f32';
    case 'i32':
      return 'i32';
    default:
      return 'u32';
  }
}

/** Defines `fn <fnName>(i: u32) -> f32` reading element i of array `<arrayName>` stored as `dtype`. */
export function loadAsF32(fnName: string, arrayName: string, dtype: DType): string {
  switch (dtype) {
    case 'f32':
      return `fn ${fnName}(i: u32) -> f32 { return ${arrayName}[i]; }`;
    case 'f16':
      return `fn ${fnName}(i: u32) -> f32 { let w = ${arrayName}[i >> 1u]; return unpack2x16float(w)[i & 1u]; }`;
    case 'bf16':
      return `fn ${fnName}(i: u32) -> f32 { let w = ${arrayName}[i >> 1u]; return bitcast<f32>(select(w << 16u, w & 0xffff0000u, (i & 1u) == 1u)); }`;
    default:
      return `fn ${fnName}(i: u32) -> f32 { return f32(${arrayName}[i]); }`;
  }
}

/** Round up to a multiple. */
export function roundUp(n: number, m: number): number {
  return Math.ceil(n / m) * m;
}

export function ceilDiv(n: number, m: number): number {
  return Math.ceil(n / m);
}

export interface TreeReduceOptions {
  /** WGSL function name (default `reduce_wg`). */
  name?: string;
  /** Workgroup array it reduces through (default `red`), declared here unless `declared` (shared by reducers). */
  array?: string;
  declared?: boolean;
}

/**
 * A workgroup tree reduction over `wg` invocations (a power of two), as WGSL: `fn name(li, v) -> type`.
 * Every invocation gets the result. It starts with a barrier, so calls may follow one another (the previous
 * call's readers of array[0] finish before anyone writes), and the pairing order is fixed, so results are
 * reproducible run to run.
 */
export function treeReduce(wg: number, type: string, combine: (a: string, b: string) => string, o: TreeReduceOptions = {}): string {
  const name = o.name ?? 'reduce_wg';
  const red = o.array ?? 'red';
  return /* wgsl */ `
${o.declared ? '' : `var<workgroup> ${red}: array<${type}, ${wg}>;`}
fn ${name}(li: u32, v: ${type}) -> ${type} {
  workgroupBarrier();
  ${red}[li] = v;
  workgroupBarrier();
  for (var s = ${wg / 2}u; s > 0u; s = s >> 1u) {
    if (li < s) { ${red}[li] = ${combine(`${red}[li]`, `${red}[li + s]`)}; }
    workgroupBarrier();
  }
  return ${red}[0];
}`;
}

/**
 * Defines `fn load_<name>(i: u32) -> vec4<f32>` reading vec4 i of array `<name>`, stored as vec4<f32> (f32) or
 * as 4 packed halves in a vec2<u32> (f16, bf16; no feature needed). `vec4ArrayElement` is the array's element.
 */
export function vec4Loader(name: string, dtype: 'f32' | 'f16' | 'bf16'): string {
  switch (dtype) {
    case 'f32':
      return `fn load_${name}(i: u32) -> vec4<f32> { return ${name}[i]; }`;
    case 'f16':
      return `fn load_${name}(i: u32) -> vec4<f32> { let w = ${name}[i]; return vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y)); }`;
    case 'bf16':
      return (
        `fn load_${name}(i: u32) -> vec4<f32> { let w = ${name}[i]; ` +
        `return bitcast<vec4<f32>>(vec4<u32>(w.x << 16u, w.x & 0xffff0000u, w.y << 16u, w.y & 0xffff0000u)); }`
      );
  }
}

export function vec4ArrayElement(dtype: 'f32' | 'f16' | 'bf16'): string {
  return dtype === 'f32' ? 'vec4<f32>' : 'vec2<u32>';
}
