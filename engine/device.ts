// The GPU: Dawn instance, adapter and device with the adapter's real limits, plus the command recorder
// that every kernel launch goes through. Dispatches are recorded into one open compute pass and
// submitted in batches; the uniform params of a batch live in one ring buffer written just before submit.

import { create, globals } from 'webgpu';
import { type DType, itemSize } from './dtype.js';
import { GpuError, LimitError, ShapeError, shapeStr } from './errors.js';
import { MAX_PARAM_BYTES, Params } from './params.js';
import { BindGroupCache, type BufferRange, type Kernel, type KernelSpec, PipelineCache } from './pipelines.js';
import { BufferPool } from './pool.js';
import { Profiler } from './profiler.js';
import { type HostArray, Tensor, numelOf } from './tensor.js';

export interface GpuOptions {
  /** Dawn backend: vulkan, metal, d3d12, opengl… Default: env STAGEVAR_BACKEND, else Dawn's choice. */
  backend?: string;
  /** Substring of the adapter name to pick (e.g. "llvmpipe", "NVIDIA"). Default: env STAGEVAR_ADAPTER. */
  adapter?: string;
  powerPreference?: 'low-power' | 'high-performance';
  /** Validate every dispatch on its own (slow): errors name the exact kernel. Default: env STAGEVAR_DEBUG_GPU=1. */
  validate?: boolean;
  /** Per-kernel GPU timing through timestamp queries (when the adapter has them). */
  profile?: boolean;
  /** Dispatches per submit; lavapipe has died on one submit of ~6000. */
  maxDispatchesPerSubmit?: number;
  /** Skip requesting `shader-f16` even when present (forces the portable paths). */
  disableF16?: boolean;
  /** Which kernel variants to prefer: 'cpu' (software rasterisers such as lavapipe: per-lane loads are
   *  expensive, workgroup memory is slow) or 'gpu' (workgroup-memory tiles). Default: env STAGEVAR_KERNELS,
   *  else detected from the adapter (`software`). */
  tuning?: KernelTuning;
}

export type KernelTuning = 'cpu' | 'gpu';
const TUNINGS: readonly KernelTuning[] = ['cpu', 'gpu'];

export interface AdapterSummary {
  vendor: string;
  architecture: string;
  device: string;
  description: string;
  backend: string;
  /** A CPU implementation of the API (lavapipe/llvmpipe, SwiftShader, WARP, or any fallback adapter). */
  software: boolean;
}

export type Bindable = Tensor | BufferRange;

const OPTIONAL_FEATURES: GPUFeatureName[] = ['shader-f16', 'subgroups', 'timestamp-query'];
const UNIFORM_RING_BYTES = 1 << 20;
const MAX_WORKGROUPS_PER_DIM = 65535;

let globalsInstalled = false;
const liveInstances: unknown[] = [];

export class Gpu {
  readonly pool: BufferPool;
  private readonly pipelines: PipelineCache;
  private readonly bindGroups: BindGroupCache;
  private readonly uniformRing: GPUBuffer;
  private readonly uniformStaging = new Uint8Array(UNIFORM_RING_BYTES);
  private readonly uniformStride: number;
  private uniformUsed = 0;
  private encoder: GPUCommandEncoder | null = null;
  private pass: GPUComputePassEncoder | null = null;
  private batchKernels: string[] = [];
  private lastSubmitted: string[] = [];
  private checks: Promise<GpuError | null>[] = [];
  private latched: GpuError | null = null;
  private destroyed = false;
  private readonly profiler: Profiler | null;
  readonly maxDispatchesPerSubmit: number;
  readonly validate: boolean;
  /** Kernel variants this device prefers (see GpuOptions.tuning); kernels read it when picking a variant. */
  readonly tuning: KernelTuning;
  dispatchCount = 0;
  submitCount = 0;

  private constructor(
    readonly device: GPUDevice,
    readonly adapter: AdapterSummary,
    readonly limits: GPUSupportedLimits,
    readonly features: ReadonlySet<string>,
    options: GpuOptions,
  ) {
    this.validate = options.validate ?? process.env.STAGEVAR_DEBUG_GPU === '1';
    this.maxDispatchesPerSubmit = this.validate ? 1 : (options.maxDispatchesPerSubmit ?? 256);
    this.tuning = requestedTuning(options) ?? (adapter.software ? 'cpu' : 'gpu');
    const check = (what: string, fn: () => void) => this.scoped(what, fn);
    this.pipelines = new PipelineCache(device, check);
    this.bindGroups = new BindGroupCache(device, check);
    this.pool = new BufferPool(device, limits.maxBufferSize, (b) => this.bindGroups.forget(b));
    this.uniformStride = Math.max(MAX_PARAM_BYTES, limits.minUniformBufferOffsetAlignment);
    this.uniformRing = device.createBuffer({ size: UNIFORM_RING_BYTES + MAX_PARAM_BYTES, usage: 0x40 | 0x8, label: 'uniform-ring' });
    this.profiler =
      options.profile && features.has('timestamp-query') ? new Profiler(device, this.maxDispatchesPerSubmit) : null;
    device.addEventListener('uncapturederror', (ev) => {
      const err = (ev as GPUUncapturedErrorEvent).error;
      this.latch(new GpuError(`${err.message.trim()}\n(while running kernels: ${this.lastSubmitted.join(', ') || 'none'})`));
    });
    void device.lost.then((info) => {
      if (!this.destroyed) this.latch(new GpuError(`GPU device lost (${info.reason}): ${info.message}`));
    });
  }

  static async create(options: GpuOptions = {}): Promise<Gpu> {
    if (!globalsInstalled) {
      Object.assign(globalThis, globals);
      globalsInstalled = true;
    }
    requestedTuning(options); // a bad value fails before any device exists
    const flags: string[] = [];
    const backend = options.backend ?? process.env.STAGEVAR_BACKEND;
    const adapterName = options.adapter ?? process.env.STAGEVAR_ADAPTER;
    if (backend) flags.push(`backend=${backend}`);
    if (adapterName) flags.push(`adapter=${adapterName}`);
    const instance = create(flags);
    const adapter = await instance.requestAdapter({ powerPreference: options.powerPreference ?? 'high-performance' });
    if (!adapter) {
      throw new GpuError(
        `no WebGPU adapter found${backend ? ` for backend "${backend}"` : ''}${adapterName ? ` matching "${adapterName}"` : ''}. ` +
          'On a machine without a GPU install Mesa ≥ 24 (lavapipe): apt-get install -t bookworm-backports mesa-vulkan-drivers',
      );
    }
    const wanted = OPTIONAL_FEATURES.filter((f) => adapter.features.has(f) && !(f === 'shader-f16' && options.disableF16));
    const a = adapter.limits;
    const requiredLimits: Record<string, number> = {
      maxBufferSize: a.maxBufferSize,
      maxStorageBufferBindingSize: a.maxStorageBufferBindingSize,
      maxComputeWorkgroupStorageSize: a.maxComputeWorkgroupStorageSize,
      maxComputeInvocationsPerWorkgroup: a.maxComputeInvocationsPerWorkgroup,
      maxComputeWorkgroupSizeX: a.maxComputeWorkgroupSizeX,
      maxComputeWorkgroupSizeY: a.maxComputeWorkgroupSizeY,
      maxComputeWorkgroupSizeZ: a.maxComputeWorkgroupSizeZ,
      maxStorageBuffersPerShaderStage: a.maxStorageBuffersPerShaderStage,
      maxComputeWorkgroupsPerDimension: a.maxComputeWorkgroupsPerDimension,
      // For alignments the adapter's value is the better (smaller) one: row views bind at finer offsets.
      minStorageBufferOffsetAlignment: a.minStorageBufferOffsetAlignment,
      minUniformBufferOffsetAlignment: a.minUniformBufferOffsetAlignment,
    };
    const device = await adapter.requestDevice({ requiredFeatures: wanted, requiredLimits, label: 'stagevar' });
    const info = adapter.info;
    const summary: AdapterSummary = {
      vendor: info.vendor,
      architecture: info.architecture,
      device: info.device,
      description: info.description,
      backend: backendOf(info.description, backend),
      software:
        (info as GPUAdapterInfo & { isFallbackAdapter?: boolean }).isFallbackAdapter === true ||
        info.architecture === 'software' ||
        /llvmpipe|lavapipe|swiftshader|microsoft basic render driver/i.test(`${info.description} ${info.device}`),
    };
    const gpu = new Gpu(device, summary, device.limits, new Set([...device.features].map(String)), options);
    // The Dawn instance must outlive its device, even after destroy(): if it is garbage-collected while
    // Dawn still processes events, it dereferences freed memory (a segfault in InstanceBase::ProcessEvents).
    // Instances are small, so every one created stays referenced for the life of the process.
    liveInstances.push(instance);
    return gpu;
  }

  get hasF16(): boolean {
    return this.features.has('shader-f16');
  }

  get hasSubgroups(): boolean {
    return this.features.has('subgroups');
  }

  /** Fewest lanes a subgroup may have on this device (0 without the subgroups feature). */
  get subgroupMinSize(): number {
    if (!this.hasSubgroups) return 0;
    return (this.device as GPUDevice & { adapterInfo?: { subgroupMinSize?: number } }).adapterInfo?.subgroupMinSize ?? 0;
  }

  get hasTimestamps(): boolean {
    return this.features.has('timestamp-query');
  }

  /** Names of the kernels compiled on this device so far: which variants a workload picked. */
  get compiledKernels(): string[] {
    return this.pipelines.names;
  }

  get profiling(): boolean {
    return this.profiler !== null;
  }

  // ---- tensors -------------------------------------------------------------------------------

  /** An uninitialised pooled tensor (transient: activations). */
  empty(shape: readonly number[], dtype: DType, label = 'tensor'): Tensor {
    const bytes = tensorBytes(shape, dtype);
    return new Tensor(this, this.pool.acquire(bytes, label), 0, [...shape], dtype, 'pool', label);
  }

  /** An exactly-sized tensor outside the pool (weights, caches kept for a whole run). */
  persistent(shape: readonly number[], dtype: DType, label = 'persistent'): Tensor {
    const bytes = tensorBytes(shape, dtype);
    return new Tensor(this, this.pool.allocate(bytes, label), 0, [...shape], dtype, 'exact', label);
  }

  /** Uploads host data into a new tensor. Halves are given as their bit patterns (Uint16Array). */
  upload(data: HostArray, shape: readonly number[], dtype: DType, label = 'upload', persistent = false): Tensor {
    const n = numelOf(shape);
    if (data.length !== n) throw new ShapeError('upload', `"${label}" shape ${shapeStr(shape)} needs ${n} values, got ${data.length}`);
    const expect = dtype === 'f32' ? Float32Array : dtype === 'i32' ? Int32Array : dtype === 'u32' ? Uint32Array : Uint16Array;
    if (!(data instanceof expect)) throw new ShapeError('upload', `"${label}" is ${dtype} but data is a ${data.constructor.name}`);
    const t = persistent ? this.persistent(shape, dtype, label) : this.empty(shape, dtype, label);
    t.write(data);
    return t;
  }

  /** Writes bytes into a buffer. Recorded-but-unsubmitted work is submitted first, because a queue write
   *  lands before any command buffer submitted after it. Unaligned ranges (odd runs of halves) go through
   *  a staging buffer and a small kernel that writes exactly the requested 16-bit words. */
  writeBytes(buffer: GPUBuffer, offset: number, bytes: Uint8Array): void {
    this.assertAlive();
    if (bytes.byteLength === 0) return;
    if (offset % 4 === 0 && bytes.byteLength % 4 === 0) {
      if (this.dispatchesPending) this.flush();
      this.device.queue.writeBuffer(buffer, offset, bytes);
      return;
    }
    if (offset % 2 || bytes.byteLength % 2) throw new ShapeError('writeBytes', `byte range ${offset}+${bytes.byteLength} is not 16-bit aligned`);
    const padded = new Uint8Array(Math.ceil(bytes.byteLength / 4) * 4);
    padded.set(bytes);
    const staging = this.pool.acquire(padded.byteLength, 'write-staging');
    if (this.dispatchesPending) this.flush();
    this.device.queue.writeBuffer(staging, 0, padded);
    const start = offset - (offset % 4);
    const words = Math.ceil((offset + bytes.byteLength - start) / 4);
    const dst: BufferRange = { buffer, offset: start - (start % this.limits.minStorageBufferOffsetAlignment), size: 0 };
    const firstHalf = (offset - dst.offset) / 2;
    dst.size = (start - dst.offset) + words * 4;
    this.run(WRITE_HALVES, [{ buffer: staging, offset: 0, size: padded.byteLength }, dst], new Params().u32(firstHalf, bytes.byteLength / 2), Math.ceil((bytes.byteLength / 4 + 1) / 64));
    this.pool.release(staging);
  }

  /** Reads a buffer range back to the host (submits pending work first). */
  async readBytes(buffer: GPUBuffer, offset: number, length: number): Promise<Uint8Array> {
    const start = offset - (offset % 4);
    const size = Math.max(4, Math.ceil((offset + length - start) / 4) * 4);
    const staging = this.device.createBuffer({ size, usage: 0x1 | 0x8, label: 'readback' }); // MAP_READ | COPY_DST
    this.endPass();
    this.encoderNow().copyBufferToBuffer(buffer, start, staging, 0, size);
    this.flush();
    try {
      await staging.mapAsync(1);
      const copy = new Uint8Array(staging.getMappedRange().slice(0));
      staging.unmap();
      await this.throwIfFailed();
      return copy.subarray(offset - start, offset - start + length);
    } finally {
      staging.destroy();
    }
  }

  /** Copies src into dst (same byte length), recorded in order with the dispatches. */
  copy(src: Tensor, dst: Tensor): void {
    if (src.byteLength !== dst.byteLength) {
      throw new ShapeError('copy', `${src} (${src.byteLength} B) into ${dst} (${dst.byteLength} B)`);
    }
    if (src.byteOffset % 4 || dst.byteOffset % 4 || src.byteLength % 4) {
      throw new ShapeError('copy', `${src} → ${dst}: offsets and length must be multiples of 4 bytes`);
    }
    this.endPass();
    this.encoderNow().copyBufferToBuffer(src.buffer, src.byteOffset, dst.buffer, dst.byteOffset, src.byteLength);
  }

  /** Frees a buffer for good. Recorded work that may still use it is submitted first: destroying a
   *  buffer that an unsubmitted command references makes that submit fail. */
  destroyBuffer(buffer: GPUBuffer): void {
    if (this.dispatchesPending) this.flush();
    this.pool.destroy(buffer);
  }

  /** Destroys the pool's cached free buffers (after submitting work that may reference them). */
  trimPool(): void {
    if (this.dispatchesPending) this.flush();
    this.pool.trim();
  }

  // ---- kernels -------------------------------------------------------------------------------

  kernel(spec: KernelSpec): Kernel {
    this.assertAlive();
    return this.pipelines.get(spec);
  }

  /**
   * Records one dispatch. `workgroups` is either an explicit [x, y, z] grid or a linear workgroup count,
   * which is folded into x and y when it exceeds the per-dimension limit; kernels recover the linear id
   * as `wid.x + wid.y * nwg.x` (see `LINEAR_WORKGROUP` in kernels/wgsl.ts) and bound-check it.
   */
  run(kernel: Kernel | KernelSpec, bindings: readonly Bindable[], params: Params | null, workgroups: number | readonly number[]): void {
    this.assertAlive();
    const k = 'pipeline' in kernel ? kernel : this.kernel(kernel);
    if (bindings.length !== k.spec.bindings.length) {
      throw new ShapeError(k.name, `expects ${k.spec.bindings.length} bindings, got ${bindings.length}`);
    }
    const grid = this.grid(k.name, workgroups);
    if (grid[0] * grid[1] * grid[2] === 0) return;
    const ranges = bindings.map((b, i) => this.range(k.name, i, b));
    if (this.uniformUsed + this.uniformStride > UNIFORM_RING_BYTES) this.flush();
    const offset = this.uniformUsed;
    if (params) this.uniformStaging.set(params.bytes(), offset);
    this.uniformUsed += this.uniformStride;
    const group = this.bindGroups.get(k, ranges, this.uniformRing);
    const pass = this.passFor(k.name);
    pass.setPipeline(k.pipeline);
    pass.setBindGroup(0, group, [offset]);
    pass.dispatchWorkgroups(grid[0], grid[1], grid[2]);
    if (this.profiler) this.endPass();
    this.batchKernels.push(k.name);
    this.dispatchCount++;
    if (this.batchKernels.length >= this.maxDispatchesPerSubmit || this.profiler?.full) this.flush();
  }

  /** Submits everything recorded so far. */
  flush(): void {
    if (!this.encoder) return;
    this.endPass();
    const encoder = this.encoder;
    this.encoder = null;
    const collect = this.profiler?.resolve(encoder) ?? null;
    if (this.uniformUsed > 0) this.device.queue.writeBuffer(this.uniformRing, 0, this.uniformStaging, 0, this.uniformUsed);
    this.uniformUsed = 0;
    const names = this.batchKernels;
    this.batchKernels = [];
    this.lastSubmitted = names;
    const what = names.length === 1 ? `running kernel "${names[0]}"` : `running kernels ${summarize(names)}`;
    this.scoped(what, () => this.device.queue.submit([encoder.finish()]));
    this.submitCount++;
    collect?.();
  }

  /** Submits pending work, waits for the GPU, and throws the first GPU error seen. */
  async sync(): Promise<void> {
    this.flush();
    await this.device.queue.onSubmittedWorkDone();
    await this.throwIfFailed();
  }

  async timings() {
    if (!this.profiler) throw new Error('profiling is off: create the Gpu with { profile: true } on an adapter with timestamp-query');
    await this.sync();
    return this.profiler.results();
  }

  resetTimings(): void {
    this.profiler?.reset();
  }

  stats() {
    return {
      ...this.pool.stats(),
      pipelines: this.pipelines.size,
      bindGroups: this.bindGroups.size,
      dispatches: this.dispatchCount,
      submits: this.submitCount,
    };
  }

  destroy(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    this.encoder = null;
    this.pass = null;
    this.profiler?.destroy();
    this.pool.trim(); // nothing is pending here: destroy() drops the open encoder unsubmitted
    this.device.destroy();
  }

  // ---- internals -----------------------------------------------------------------------------

  private get dispatchesPending(): boolean {
    return this.encoder !== null;
  }

  private encoderNow(): GPUCommandEncoder {
    if (!this.encoder) this.encoder = this.device.createCommandEncoder({ label: 'stagevar' });
    return this.encoder;
  }

  private passFor(kernel: string): GPUComputePassEncoder {
    if (this.pass) return this.pass;
    const encoder = this.encoderNow();
    this.pass = encoder.beginComputePass(
      this.profiler ? { label: kernel, timestampWrites: this.profiler.passWrites(kernel) } : { label: 'kernels' },
    );
    return this.pass;
  }

  private endPass(): void {
    this.pass?.end();
    this.pass = null;
  }

  private grid(kernel: string, workgroups: number | readonly number[]): [number, number, number] {
    const max = Math.min(this.limits.maxComputeWorkgroupsPerDimension, MAX_WORKGROUPS_PER_DIM);
    if (typeof workgroups === 'number') {
      const n = Math.ceil(workgroups);
      if (n <= max) return [n, 1, 1];
      const y = Math.ceil(n / max);
      if (y > max) throw new LimitError(`kernel "${kernel}" grid of ${n} workgroups`, 'maxComputeWorkgroupsPerDimension²', n, max * max);
      return [Math.ceil(n / y), y, 1];
    }
    const g: [number, number, number] = [workgroups[0] ?? 1, workgroups[1] ?? 1, workgroups[2] ?? 1];
    g.forEach((d, i) => {
      if (d > max) throw new LimitError(`kernel "${kernel}" grid dim ${'xyz'[i]}`, 'maxComputeWorkgroupsPerDimension', d, max);
    });
    return g;
  }

  private range(kernel: string, index: number, b: Bindable): BufferRange {
    let r: BufferRange;
    if (b instanceof Tensor) {
      b.assertAlive();
      r = { buffer: b.buffer, offset: b.byteOffset, size: b.bindingSize };
      if (r.offset + r.size > b.buffer.size) r.size = b.buffer.size - r.offset; // odd-length halves at the very end
    } else r = b;
    const align = this.limits.minStorageBufferOffsetAlignment;
    if (r.offset % align) {
      throw new ShapeError(kernel, `binding ${index}${b instanceof Tensor ? ` (${b})` : ''} starts at byte ${r.offset}, not a multiple of the device's storage offset alignment ${align}`);
    }
    if (r.size > this.limits.maxStorageBufferBindingSize) {
      throw new LimitError(`kernel "${kernel}" binding ${index}${b instanceof Tensor ? ` (${b})` : ''}`, 'maxStorageBufferBindingSize', r.size, this.limits.maxStorageBufferBindingSize);
    }
    return r;
  }

  /** Runs `fn` inside validation + OOM error scopes; the outcome is awaited at the next sync point. */
  private scoped(what: string, fn: () => void): void {
    this.device.pushErrorScope('out-of-memory');
    this.device.pushErrorScope('validation');
    try {
      fn();
    } finally {
      const validation = this.device.popErrorScope();
      const oom = this.device.popErrorScope();
      this.checks.push(
        Promise.all([validation, oom]).then(([v, o]) => {
          const e = v ?? o;
          return e ? new GpuError(`GPU error while ${what}: ${e.message.trim()}`, what) : null;
        }),
      );
    }
  }

  private latch(err: GpuError): void {
    this.latched ??= err;
  }

  private async throwIfFailed(): Promise<void> {
    const checks = this.checks;
    this.checks = [];
    for (const e of await Promise.all(checks)) if (e) this.latch(e);
    if (this.latched) {
      const err = this.latched;
      throw err;
    }
  }

  private assertAlive(): void {
    if (this.destroyed) throw new GpuError('the GPU device was destroyed');
    if (this.latched) throw this.latched;
  }
}

/** Writes n 16-bit words from a packed source into dst starting at half index `first` (read-modify-write of
 *  the shared 32-bit words; one invocation per destination word, so neighbours are never torn). */
const WRITE_HALVES: KernelSpec = {
  name: 'write_halves',
  bindings: ['read', 'write'],
  code: /* wgsl */ `
struct P { first: u32, n: u32 }
@group(0) @binding(0) var<storage, read> src: array<u32>;
@group(0) @binding(1) var<storage, read_write> dst: array<u32>;
@group(0) @binding(2) var<uniform> p: P;
fn src_half(i: u32) -> u32 { return (src[i >> 1u] >> ((i & 1u) * 16u)) & 0xffffu; }
@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  // Destination word w covers halves 2w and 2w+1; it is touched if either falls in [first, first + n).
  let w = (p.first >> 1u) + (wid.x + wid.y * nwg.x) * 64u + li;
  let lo = 2u * w;
  if (lo >= p.first + p.n) { return; }
  var word = dst[w];
  if (lo >= p.first) { word = (word & 0xffff0000u) | src_half(lo - p.first); }
  if (lo + 1u >= p.first && lo + 1u < p.first + p.n) { word = (word & 0x0000ffffu) | (src_half(lo + 1u - p.first) << 16u); }
  dst[w] = word;
}`,
};

function tensorBytes(shape: readonly number[], dtype: DType): number {
  return Math.max(4, Math.ceil((numelOf(shape) * itemSize(dtype)) / 4) * 4);
}

function summarize(names: string[]): string {
  const counts = new Map<string, number>();
  for (const n of names) counts.set(n, (counts.get(n) ?? 0) + 1);
  return [...counts].map(([n, c]) => (c > 1 ? `${n}×${c}` : n)).join(', ');
}

/** The tuning asked for by option or env STAGEVAR_KERNELS, or undefined for auto-detection. */
function requestedTuning(options: GpuOptions): KernelTuning | undefined {
  const requested: string | undefined = options.tuning ?? process.env.STAGEVAR_KERNELS;
  if (requested === undefined || requested === '') return undefined;
  if (!(TUNINGS as readonly string[]).includes(requested)) {
    throw new GpuError(`kernel tuning "${requested}" (option tuning / env STAGEVAR_KERNELS) is not one of: ${TUNINGS.join(', ')}`);
  }
  return requested as KernelTuning;
}

function backendOf(description: string, requested?: string): string {
  if (requested) return requested;
  const d = description.toLowerCase();
  if (d.includes('vulkan') || d.includes('llvmpipe') || d.includes('mesa')) return 'vulkan';
  if (d.includes('metal')) return 'metal';
  if (d.includes('d3d12')) return 'd3d12';
  return 'unknown';
}
