// Element types of weight files and CPU conversions between the float formats.
// f32 → f16 and f32 → bf16 round to nearest, ties to even (what PyTorch's `.half()` / `.bfloat16()`
// do), keep NaN a NaN (quiet), saturate to ±Inf on overflow and produce subnormals where the target
// has them. Widening conversions (f16 → f32, bf16 → f32) are exact.
// All data are little-endian, as in safetensors and PyTorch's zip checkpoints.

import { endianness } from 'node:os';
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

// ---------------------------------------------------------------- scalar bit conversions

const scratchF32 = new Float32Array(1);
const scratchU32 = new Uint32Array(scratchF32.buffer);

export function f32ToBits(value: number): number {
  scratchF32[0] = value;
  return scratchU32[0]!;
}

export function bitsToF32(bits: number): number {
  scratchU32[0] = bits >>> 0;
  return scratchF32[0]!;
}

/** f32 bit pattern (u32) → f16 bit pattern (u16), round to nearest even. */
export function f32BitsToF16Bits(bits: number): number {
  const x = bits >>> 0;
  const sign = (x >>> 16) & 0x8000;
  const exponent = (x >>> 23) & 0xff;
  let mantissa = x & 0x7fffff;
  if (exponent === 0xff) {
    // Inf stays Inf; NaN keeps its top payload bits and is forced quiet so it cannot become Inf.
    return mantissa === 0 ? sign | 0x7c00 : sign | 0x7e00 | (mantissa >>> 13);
  }
  const halfExponent = exponent - 127 + 15;
  if (halfExponent >= 0x1f) return sign | 0x7c00; // too large: overflow to Inf
  if (halfExponent <= 0) {
    // f16 subnormal range: shift the full significand down to units of 2^-24.
    if (halfExponent < -10) return sign; // below half the smallest subnormal: ±0
    mantissa |= 0x800000;
    const shift = 14 - halfExponent;
    const rounded = mantissa + (1 << (shift - 1)) - 1 + ((mantissa >>> shift) & 1);
    return sign | (rounded >>> shift); // a carry lands in the exponent field: the right encoding
  }
  const rounded = mantissa + 0xfff + ((mantissa >>> 13) & 1);
  // A mantissa carry increments the exponent; an exponent of 31 then reads as Inf, as it should.
  return sign | ((halfExponent << 10) + (rounded >>> 13));
}

/** f32 bit pattern → bf16 bit pattern (upper 16 bits), round to nearest even. */
export function f32BitsToBf16Bits(bits: number): number {
  const x = bits >>> 0;
  if ((x & 0x7f800000) === 0x7f800000 && (x & 0x7fffff) !== 0) {
    return (x >>> 16) | 0x40; // NaN: keep sign and payload top, force quiet
  }
  // x ≤ 0xff7fffff here, so the sum stays below 2^32 and `>>> 16` is exact.
  return (x + 0x7fff + ((x >>> 16) & 1)) >>> 16;
}

let f16Table: Float32Array | undefined;

/** All 65536 f16 values as f32, computed once (256 KiB): widening becomes one lookup. */
function f16ToF32Table(): Float32Array {
  if (f16Table) return f16Table;
  const table = new Float32Array(65536);
  const bits = new Uint32Array(table.buffer);
  for (let h = 0; h < 65536; h++) {
    const sign = (h & 0x8000) << 16;
    const exponent = (h >>> 10) & 0x1f;
    const mantissa = h & 0x3ff;
    if (exponent === 0x1f) {
      bits[h] = sign | 0x7f800000 | (mantissa << 13);
    } else if (exponent === 0) {
      table[h] = (sign ? -1 : 1) * mantissa * 2 ** -24; // zero or subnormal, exact in f32
    } else {
      bits[h] = sign | ((exponent - 15 + 127) << 23) | (mantissa << 13);
    }
  }
  f16Table = table;
  return table;
}

export function f16BitsToF32(bits: number): number {
  return f16ToF32Table()[bits & 0xffff]!;
}

export function bf16BitsToF32(bits: number): number {
  return bitsToF32((bits & 0xffff) << 16);
}

export function f32ToF16Bits(value: number): number {
  return f32BitsToF16Bits(f32ToBits(value));
}

export function f32ToBf16Bits(value: number): number {
  return f32BitsToBf16Bits(f32ToBits(value));
}

// ---------------------------------------------------------------- array conversions

export function f32ArrayToF16(src: Float32Array, dst: Uint16Array = new Uint16Array(src.length)): Uint16Array {
  const bits = new Uint32Array(src.buffer, src.byteOffset, src.length);
  for (let i = 0; i < bits.length; i++) dst[i] = f32BitsToF16Bits(bits[i]!);
  return dst;
}

export function f32ArrayToBf16(src: Float32Array, dst: Uint16Array = new Uint16Array(src.length)): Uint16Array {
  const bits = new Uint32Array(src.buffer, src.byteOffset, src.length);
  for (let i = 0; i < bits.length; i++) dst[i] = f32BitsToBf16Bits(bits[i]!);
  return dst;
}

export function f16ArrayToF32(src: Uint16Array, dst: Float32Array = new Float32Array(src.length)): Float32Array {
  const table = f16ToF32Table();
  for (let i = 0; i < src.length; i++) dst[i] = table[src[i]!]!;
  return dst;
}

export function bf16ArrayToF32(src: Uint16Array, dst: Float32Array = new Float32Array(src.length)): Float32Array {
  const out = new Uint32Array(dst.buffer, dst.byteOffset, src.length);
  for (let i = 0; i < src.length; i++) out[i] = src[i]! << 16;
  return dst;
}

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
