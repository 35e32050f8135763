// Element types of weight files and CPU conversions between the float formats.
// f32 → f16 and f32 → bf16 round to nearest, ties to even (what PyTorch's `.half()` / `.bfloat16()`
// do), keep NaN a NaN (quiet), saturate to ±Inf on overflow and produce subnormals where the target
// has them. Widening conversions (f16 → f32, bf16 → f32) are exact.
// All data are little-endian, as in safetensors and PyTorch's zip checkpoints.

import { endianness } from 'node:os';
import { bf16ArrayToF32, f16ArrayToF32, f32ArrayToBf16, f32ArrayToF16 } from '../../engine/dtype.js';
import { WeightsError } from './errors.js';

/** safetensors dtype names (also used for PyTorch storages after mapping). */
export type Dtype =
  | 'F64'
  | 'F32'
  | 'F16'
  | 'BF16'
  | 'I64'
  | 'I32'
  | 'I16'
  | 'I8'
  | 'U64'
  | 'U32'
  | 'U16'
  | 'U8'
  | 'BOOL'
  | 'F8_E4M3'
  | 'F8_E5M2';

export const DTYPE_ITEM_SIZE: Readonly<Record<Dtype, number>> = {
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U64: 8,
  U32: 4,
  U16: 2,
  U8: 1,
  BOOL: 1,
  F8_E4M3: 1,
  F8_E5M2: 1,
};

export function isDtype(value: unknown): value is Dtype {
  return typeof value === 'string' && Object.prototype.hasOwnProperty.call(DTYPE_ITEM_SIZE, value);
}

export function dtypeItemSize(dtype: Dtype): number {
  return DTYPE_ITEM_SIZE[dtype];
}

/** The float dtypes `convert --dtype` re-types; integer and bool tensors keep their dtype. */
export type FloatDtype = 'F32' | 'F16' | 'BF16';

export function isConvertibleFloat(dtype: Dtype): dtype is FloatDtype | 'F64' {
  return dtype === 'F32' || dtype === 'F16' || dtype === 'BF16' || dtype === 'F64';
}

export function parseFloatDtype(text: string): FloatDtype {
  const upper = text.toUpperCase();
  if (upper === 'F32' || upper === 'FLOAT32' || upper === 'FP32') return 'F32';
  if (upper === 'F16' || upper === 'FLOAT16' || upper === 'FP16' || upper === 'HALF') return 'F16';
  if (upper === 'BF16' || upper === 'BFLOAT16') return 'BF16';
  throw new WeightsError(`unknown target dtype "${text}" (expected f32, f16 or bf16)`, { code: 'bad-argument' });
}

// Typed-array views below reinterpret bytes in host order; every supported host is little-endian,
// but fail loudly rather than silently byte-swap weights on an exotic one.
if (endianness() !== 'LE') {
  throw new Error('stagevar weight I/O requires a little-endian host');
}

// The bit-level conversions live in the engine (the GPU side uses them too); re-exported for weights I/O.
export {
  bf16ArrayToF32,
  bf16BitsToF32,
  bitsToF32,
  f16ArrayToF32,
  f16BitsToF32,
  f32ArrayToBf16,
  f32ArrayToF16,
  f32BitsToBf16Bits,
  f32BitsToF16Bits,
  f32ToBf16Bits,
  f32ToBits,
  f32ToF16Bits,
} from '../../engine/dtype.js';
/** A view of `bytes` as `T`, copying only when the bytes are not aligned for it. */
function alignedView<T>(bytes: Uint8Array, itemSize: number, make: (buffer: ArrayBufferLike, offset: number, length: number) => T): T {
  const length = Math.floor(bytes.byteLength / itemSize);
  if (bytes.byteOffset % itemSize === 0) return make(bytes.buffer, bytes.byteOffset, length);
  return make(bytes.slice(0, length * itemSize).buffer, 0, length);
}

/**
 * Any numeric dtype → Float32Array (for small tensors read on the CPU: norms, biases, tables).
 * 64-bit integers lose precision above 2^24, as any f32 would.
 */
export function bytesToF32(dtype: Dtype, bytes: Uint8Array): Float32Array {
  const count = bytes.byteLength / dtypeItemSize(dtype);
  switch (dtype) {
    case 'F32':
      return Float32Array.from(alignedView(bytes, 4, (b, o, n) => new Float32Array(b, o, n)));
    case 'F16':
      return f16ArrayToF32(alignedView(bytes, 2, (b, o, n) => new Uint16Array(b, o, n)));
    case 'BF16':
      return bf16ArrayToF32(alignedView(bytes, 2, (b, o, n) => new Uint16Array(b, o, n)));
    case 'F64':
      return Float32Array.from(alignedView(bytes, 8, (b, o, n) => new Float64Array(b, o, n)));
    case 'I64':
      return Float32Array.from(alignedView(bytes, 8, (b, o, n) => new BigInt64Array(b, o, n)), (v) => Number(v));
    case 'U64':
      return Float32Array.from(alignedView(bytes, 8, (b, o, n) => new BigUint64Array(b, o, n)), (v) => Number(v));
    case 'I32':
      return Float32Array.from(alignedView(bytes, 4, (b, o, n) => new Int32Array(b, o, n)));
    case 'U32':
      return Float32Array.from(alignedView(bytes, 4, (b, o, n) => new Uint32Array(b, o, n)));
    case 'I16':
      return Float32Array.from(alignedView(bytes, 2, (b, o, n) => new Int16Array(b, o, n)));
    case 'U16':
      return Float32Array.from(alignedView(bytes, 2, (b, o, n) => new Uint16Array(b, o, n)));
    case 'I8':
      return Float32Array.from(new Int8Array(bytes.buffer, bytes.byteOffset, count));
    case 'U8':
    case 'BOOL':
      return Float32Array.from(bytes);
    case 'F8_E4M3':
    case 'F8_E5M2':
      throw new WeightsError(`conversion of ${dtype} to f32 is not supported`, { code: 'unsupported' });
  }
}

/**
 * Re-types a chunk of float data. `bytes` must hold whole elements. Returns `bytes` itself when the
 * dtypes are equal (no copy). Narrowing rounds to nearest even.
 */
export function convertFloatBytes(from: Dtype, to: FloatDtype, bytes: Uint8Array): Uint8Array {
  if (from === to) return bytes;
  if (!isConvertibleFloat(from)) {
    throw new WeightsError(`cannot convert ${from} data to ${to}`, { code: 'unsupported' });
  }
  const asF32 =
    from === 'F32' ? alignedView(bytes, 4, (b, o, n) => new Float32Array(b, o, n)) : bytesToF32(from, bytes);
  if (to === 'F32') return new Uint8Array(asF32.buffer, asF32.byteOffset, asF32.byteLength);
  const narrowed = to === 'F16' ? f32ArrayToF16(asF32) : f32ArrayToBf16(asF32);
  return new Uint8Array(narrowed.buffer, narrowed.byteOffset, narrowed.byteLength);
}
