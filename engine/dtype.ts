// Element types the engine stores on the GPU, and exact host-side conversions for the 16-bit ones.
// Node 20 has no Float16Array: halves live in Uint16Array and are converted here, rounding to nearest even.

export type DType = 'f32' | 'f16' | 'bf16' | 'i32' | 'u32';

export const DTYPES: readonly DType[] = ['f32', 'f16', 'bf16', 'i32', 'u32'];

export function itemSize(dtype: DType): number {
  return dtype === 'f16' || dtype === 'bf16' ? 2 : 4;
}

export function isFloat(dtype: DType): boolean {
  return dtype === 'f32' || dtype === 'f16' || dtype === 'bf16';
}

export function isHalf(dtype: DType): boolean {
  return dtype === 'f16' || dtype === 'bf16';
}

// ---- scalar bit conversions (round to nearest even; NaN stays NaN, overflow → ±Inf) ----

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

// ---- array conversions ----

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

/** Halves of any numeric array (a Float32Array is converted without copying). */
export function f32ToF16Array(src: ArrayLike<number>): Uint16Array {
  return f32ArrayToF16(src instanceof Float32Array ? src : Float32Array.from(src));
}

export function f32ToBf16Array(src: ArrayLike<number>): Uint16Array {
  return f32ArrayToBf16(src instanceof Float32Array ? src : Float32Array.from(src));
}

/** Rounds every value through the given float dtype (what storing then loading it would give). */
export function roundThrough(dtype: DType, src: ArrayLike<number>): Float32Array {
  if (dtype === 'f16') return f16ArrayToF32(f32ToF16Array(src));
  if (dtype === 'bf16') return bf16ArrayToF32(f32ToBf16Array(src));
  return Float32Array.from(src);
}
