// Compute pipelines and bind groups, each created once and cached. A pipeline is keyed by its WGSL
// source + override constants (never by shapes: shapes travel in the uniform params); a bind group by
// its layout and the exact buffer ranges it binds.

import { MAX_PARAM_BYTES } from './params.js';

export type Access = 'read' | 'write';

export interface KernelSpec {
  /** Name used in labels, errors and the profiler table, e.g. `matmul_f16w`. */
  name: string;
  /** WGSL source. Storage bindings are @group(0) @binding(0..n-1); the params uniform is @binding(n). */
  code: string;
  bindings: readonly Access[];
  /** Pipeline-overridable constants (part of the cache key). */
  constants?: Record<string, number>;
  entryPoint?: string;
}

export interface Kernel {
  readonly name: string;
  readonly spec: KernelSpec;
  readonly pipeline: GPUComputePipeline;
  readonly layout: GPUBindGroupLayout;
  readonly layoutKey: string;
}

/** Where a pipeline or bind group creation is validated: the caller awaits these at its next sync point. */
export type ErrorCheck = (what: string, create: () => void) => void;

let nextBufferId = 1;
const bufferIds = new WeakMap<GPUBuffer, number>();
export function bufferId(buffer: GPUBuffer): number {
  let id = bufferIds.get(buffer);
  if (id === undefined) bufferIds.set(buffer, (id = nextBufferId++));
  return id;
}

export class PipelineCache {
  private pipelines = new Map<string, Kernel>();
  private layouts = new Map<string, { group: GPUBindGroupLayout; pipeline: GPUPipelineLayout }>();

  constructor(
    private readonly device: GPUDevice,
    private readonly check: ErrorCheck,
  ) {}

  get size(): number {
    return this.pipelines.size;
  }

  /** Names of the compiled kernels, in compile order (diagnostics, tests). */
  get names(): string[] {
    return [...this.pipelines.values()].map((k) => k.name);
  }

  get(spec: KernelSpec): Kernel {
    const key = `${spec.name}\u0000${spec.entryPoint ?? 'main'}\u0000${JSON.stringify(spec.constants ?? {})}\u0000${spec.code}`;
    const hit = this.pipelines.get(key);
    if (hit) return hit;
    const layoutKey = spec.bindings.join(',');
    const layouts = this.layoutFor(layoutKey, spec.bindings);
    let pipeline!: GPUComputePipeline;
    this.check(`compiling kernel "${spec.name}"`, () => {
      const module = this.device.createShaderModule({ code: spec.code, label: spec.name });
      pipeline = this.device.createComputePipeline({
        label: spec.name,
        layout: layouts.pipeline,
        compute: { module, entryPoint: spec.entryPoint ?? 'main', constants: spec.constants },
      });
    });
    const kernel: Kernel = { name: spec.name, spec, pipeline, layout: layouts.group, layoutKey };
    this.pipelines.set(key, kernel);
    return kernel;
  }

  private layoutFor(key: string, bindings: readonly Access[]) {
    const hit = this.layouts.get(key);
    if (hit) return hit;
    const entries: GPUBindGroupLayoutEntry[] = bindings.map((access, binding) => ({
      binding,
      visibility: 4, // GPUShaderStage.COMPUTE
      buffer: { type: access === 'read' ? 'read-only-storage' : 'storage' },
    }));
    entries.push({
      binding: bindings.length,
      visibility: 4,
      buffer: { type: 'uniform', hasDynamicOffset: true, minBindingSize: 0 },
    });
    const group = this.device.createBindGroupLayout({ entries, label: `layout(${key})` });
    const pipeline = this.device.createPipelineLayout({ bindGroupLayouts: [group], label: `layout(${key})` });
    const made = { group, pipeline };
    this.layouts.set(key, made);
    return made;
  }
}

export interface BufferRange {
  buffer: GPUBuffer;
  offset: number;
  size: number;
}

/** Bind groups keyed by layout + buffer ranges; entries are dropped when one of their buffers is destroyed. */
export class BindGroupCache {
  private groups = new Map<string, GPUBindGroup>();
  private byBuffer = new Map<number, Set<string>>();
  hits = 0;
  misses = 0;

  constructor(
    private readonly device: GPUDevice,
    private readonly check: ErrorCheck,
  ) {}

  get(kernel: Kernel, ranges: readonly BufferRange[], uniform: GPUBuffer): GPUBindGroup {
    let key = `${kernel.layoutKey}|${bufferId(uniform)}`;
    for (const r of ranges) key += `|${bufferId(r.buffer)}:${r.offset}:${r.size}`;
    const hit = this.groups.get(key);
    if (hit) {
      this.hits++;
      return hit;
    }
    this.misses++;
    const entries: GPUBindGroupEntry[] = ranges.map((r, binding) => ({
      binding,
      resource: { buffer: r.buffer, offset: r.offset, size: r.size },
    }));
    entries.push({ binding: ranges.length, resource: { buffer: uniform, offset: 0, size: MAX_PARAM_BYTES } });
    let group!: GPUBindGroup;
    this.check(`binding buffers for kernel "${kernel.name}"`, () => {
      group = this.device.createBindGroup({ layout: kernel.layout, entries, label: kernel.name });
    });
    this.groups.set(key, group);
    for (const id of new Set([bufferId(uniform), ...ranges.map((r) => bufferId(r.buffer))])) {
      let keys = this.byBuffer.get(id);
      if (!keys) this.byBuffer.set(id, (keys = new Set()));
      keys.add(key);
    }
    return group;
  }

  forget(buffer: GPUBuffer): void {
    const id = bufferId(buffer);
    const keys = this.byBuffer.get(id);
    if (!keys) return;
    for (const k of keys) this.groups.delete(k);
    this.byBuffer.delete(id);
  }

  get size(): number {
    return this.groups.size;
  }
}
