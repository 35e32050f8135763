// Streams checkpoint tensors into persistent GPU tensors, chunk by chunk, without ever holding a whole
// tensor on the host. Float data keep their stored dtype or are converted on the way (round to nearest
// even); a missing tensor or one of another shape is an error that names the key and both shapes.

import type { Gpu } from '../../engine/device.js';
import type { DType } from '../../engine/dtype.js';
import type { Tensor } from '../../engine/tensor.js';
import { cast } from '../../kernels/elementwise.js';
import { convertFloatBytes, dtypeItemSize, isConvertibleFloat, type Dtype, type FloatDtype } from './dtype_convert.js';
import { WeightsError, formatShape } from './errors.js';
import type { ChunkOptions, SafetensorsFile, TensorChunk, TensorInfo } from './safetensors.js';

/** What the loader needs from a weight file: `Checkpoint` (checkpoint.ts) fits, whatever the file format. */
export interface TensorSource {
  has(name: string): boolean;
  info(name: string): TensorInfo;
  tensorChunks(name: string, options?: ChunkOptions): AsyncIterable<TensorChunk>;
}

/** GPU dtype of a loaded float tensor: as stored, or converted. */
export type GpuFloat = 'keep' | 'f32' | 'f16' | 'bf16';

export interface GpuLoadOptions {
  dtype?: GpuFloat;
  /** The shape the caller expects; compared with the stored one (and used as the GPU tensor's shape). */
  expectShape?: readonly number[];
  label?: string;
  chunkBytes?: number;
}

const TO_GPU: Partial<Record<Dtype, DType>> = { F32: 'f32', F16: 'f16', BF16: 'bf16', I32: 'i32', U32: 'u32' };
const TO_FILE: Record<'f32' | 'f16' | 'bf16', FloatDtype> = { f32: 'F32', f16: 'F16', bf16: 'BF16' };

/** Throws unless `name` exists with exactly `shape`. */
export function checkTensorShape(source: TensorSource, name: string, shape: readonly number[], file?: string): TensorInfo {
  if (!source.has(name)) {
    throw new WeightsError(`missing tensor: expected shape ${formatShape(shape)}, found none`, {
      code: 'missing-tensor',
      tensor: name,
      ...(file ? { file } : {}),
    });
  }
  const info = source.info(name);
  if (info.shape.length !== shape.length || info.shape.some((d, i) => d !== shape[i])) {
    throw new WeightsError(`shape mismatch: expected ${formatShape(shape)}, file has ${formatShape(info.shape)}`, {
      code: 'shape-mismatch',
      tensor: name,
      ...(file ? { file } : {}),
    });
  }
  return info;
}

/** Loads one tensor into a new persistent GPU tensor. */
export async function loadTensorToGpu(gpu: Gpu, source: TensorSource, name: string, options: GpuLoadOptions = {}): Promise<Tensor> {
  const info = options.expectShape ? checkTensorShape(source, name, options.expectShape) : source.info(name);
  const want = options.dtype ?? 'keep';
  let target: DType;
  if (want === 'keep') {
    const t = TO_GPU[info.dtype];
    if (!t) throw new WeightsError(`dtype ${info.dtype} has no GPU form (load it as f32, f16 or bf16)`, { code: 'unsupported', tensor: name });
    target = t;
  } else {
    if (!isConvertibleFloat(info.dtype)) {
      throw new WeightsError(`cannot convert ${info.dtype} data to ${want}`, { code: 'unsupported', tensor: name });
    }
    target = want;
  }
  const tensor = gpu.persistent(info.shape, target, options.label ?? name);
  const stored = TO_GPU[info.dtype];
  // Float conversions run on the GPU: each chunk is uploaded as stored and cast into its slice of the
  // destination (only F64, which has no GPU form, is narrowed on the host first).
  const gpuCast = target !== stored && stored !== undefined;
  const hostCast = target !== stored && stored === undefined;
  const itemSize = dtypeItemSize(info.dtype);
  let elements = 0;
  try {
    for await (const { bytes } of source.tensorChunks(name, { chunkBytes: options.chunkBytes })) {
      const n = bytes.byteLength / itemSize;
      const dst = tensor.reshape([tensor.numel]).rows(elements, n);
      if (gpuCast) {
        const staging = gpu.empty([n], stored, 'load-staging');
        gpu.writeBytes(staging.buffer, 0, bytes);
        cast(gpu, staging, target, { out: dst });
        staging.dispose();
      } else {
        const out = hostCast ? convertFloatBytes(info.dtype, TO_FILE[target as 'f32' | 'f16' | 'bf16'], bytes) : bytes;
        gpu.writeBytes(tensor.buffer, dst.byteOffset, out);
      }
      elements += n;
    }
  } catch (err) {
    tensor.dispose();
    throw err;
  }
  if (elements !== tensor.numel) {
    tensor.dispose();
    throw new WeightsError(`read ${elements} elements, expected ${tensor.numel}`, { code: 'truncated', tensor: name });
  }
  return tensor;
}

/** Reads a (small) tensor to the host as f32, checking its shape. */
export async function readTensorF32(source: TensorSource, name: string, expectShape?: readonly number[]): Promise<Float32Array> {
  const info = expectShape ? checkTensorShape(source, name, expectShape) : source.info(name);
  if (!isConvertibleFloat(info.dtype)) throw new WeightsError(`expected float data, found ${info.dtype}`, { code: 'unsupported', tensor: name });
  const out = new Float32Array(info.shape.reduce((a, b) => a * b, 1));
  const bytes = new Uint8Array(out.buffer);
  const itemSize = dtypeItemSize(info.dtype);
  for await (const chunk of source.tensorChunks(name)) {
    // Chunks hold whole elements, so element offset × 4 is where the widened chunk goes.
    bytes.set(convertFloatBytes(info.dtype, 'F32', chunk.bytes), (chunk.offset / itemSize) * 4);
  }
  return out;
}

/** A single open safetensors file as a TensorSource (Checkpoint offers the same over every format). */
export function safetensorsSource(file: SafetensorsFile): TensorSource & { names(): string[] } {
  return {
    has: (name) => file.has(name),
    info: (name) => file.entry(name),
    tensorChunks: (name, options) => file.tensorChunks(name, options),
    names: () => file.names(),
  };
}
