export * from './dtype.js';
export * from './errors.js';
export * from './params.js';
export * from './pool.js';
export * from './tensor.js';
export * from './profiler.js';
export { Gpu, type GpuOptions, type AdapterSummary, type Bindable, type KernelTuning } from './device.js';
export type { Access, KernelSpec, Kernel, BufferRange } from './pipelines.js';
