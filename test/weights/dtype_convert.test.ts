// f32 ↔ f16 ↔ bf16 conversions against an independent oracle: the nearest representable value
// found by search over all 65536 encodings (ties to the even encoding), not by bit tricks.
import { describe, expect, it } from 'vitest';
import {
  bf16BitsToF32,
  bitsToF32,
  bytesToF32,
  convertFloatBytes,
  f16ArrayToF32,
  f16BitsToF32,
  f32ArrayToBf16,
  f32ArrayToF16,
  f32BitsToBf16Bits,
  f32BitsToF16Bits,
  f32ToBf16Bits,
  f32ToBits,
  f32ToF16Bits,
  parseFloatDtype,
} from '../../model/weights/dtype_convert.js';
import { WeightsError } from '../../model/weights/errors.js';

/** Deterministic 32-bit generator (mulberry32). */
function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  };
}

/** Oracle: positive finite values of a 16-bit format, ascending, with their encodings. */
function positiveValues(decode: (bits: number) => number, signBit: number): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  for (let b = 0; b < signBit; b++) {
    const v = decode(b);
    if (Number.isFinite(v)) out.push([v, b]);
  }
  return out.sort((x, y) => x[0] - y[0]);
}

function oracleRound(x: number, table: Array<[number, number]>, infBits: number): number {
  const sign = x < 0 || Object.is(x, -0) ? 0x8000 : 0;
  const a = Math.abs(x);
  const [maxValue, maxBits] = table[table.length - 1]!;
  // Above the largest finite value by at least half an ulp of it: Inf (IEEE overflow rule).
  const [prevValue] = table[table.length - 2]!;
  if (a >= maxValue + (maxValue - prevValue) / 2) return sign | infBits;
  if (a >= maxValue) return sign | maxBits;
  let lo = 0;
  let hi = table.length - 1;
  while (hi - lo > 1) {
    const mid = (lo + hi) >> 1;
    if (table[mid]![0] <= a) lo = mid;
    else hi = mid;
  }
  const [lv, lb] = table[lo]!;
  const [hv, hb] = table[hi]!;
  if (a - lv < hv - a) return sign | lb;
  if (a - lv > hv - a) return sign | hb;
  return sign | ((lb & 1) === 0 ? lb : hb);
}

describe('f16', () => {
  const table = positiveValues(f16BitsToF32, 0x8000);

  it('widens every encoding exactly and narrows it back to itself', () => {
    const wrong: number[] = [];
    for (let h = 0; h < 0x10000; h++) {
      const v = f16BitsToF32(h);
      const isNaN = (h & 0x7c00) === 0x7c00 && (h & 0x3ff) !== 0;
      const ok = isNaN ? Number.isNaN(v) && Number.isNaN(f16BitsToF32(f32ToF16Bits(v))) : f32ToF16Bits(v) === h;
      if (!ok) wrong.push(h);
    }
    expect(wrong).toEqual([]);
  });

  it('rounds random f32 values to the nearest f16, ties to even', () => {
    const next = mulberry32(1);
    const wrong: number[] = [];
    for (let i = 0; i < 100_000; i++) {
      // Exponents across the whole f16 range and beyond (subnormals, overflow).
      const bits = ((next() & 0x807fffff) | ((96 + (next() % 50)) << 23)) >>> 0;
      if (f32BitsToF16Bits(bits) !== oracleRound(bitsToF32(bits), table, 0x7c00)) wrong.push(bitsToF32(bits));
    }
    expect(wrong).toEqual([]);
  });

  it('handles exact ties, subnormals, overflow, zero signs and NaN', () => {
    expect(f32ToF16Bits(1 + 2 ** -11)).toBe(0x3c00); // tie → even (1.0)
    expect(f32ToF16Bits(1 + 3 * 2 ** -11)).toBe(0x3c02); // tie → even (upper)
    expect(f32ToF16Bits(2 ** -24)).toBe(0x0001); // smallest subnormal
    expect(f32ToF16Bits(2 ** -25)).toBe(0x0000); // half of it: tie → 0
    expect(f32ToF16Bits(2 ** -25 * 1.0001)).toBe(0x0001);
    expect(f32ToF16Bits(65504)).toBe(0x7bff);
    expect(f32ToF16Bits(65520)).toBe(0x7c00); // halfway to 2^16: rounds to Inf
    expect(f32ToF16Bits(65519.99)).toBe(0x7bff);
    expect(f32ToF16Bits(Infinity)).toBe(0x7c00);
    expect(f32ToF16Bits(-Infinity)).toBe(0xfc00);
    expect(f32ToF16Bits(-0)).toBe(0x8000);
    const nan = f32ToF16Bits(NaN);
    expect(nan & 0x7c00).toBe(0x7c00);
    expect(nan & 0x3ff).not.toBe(0);
    // A NaN whose payload lives only in the low bits must not become Inf.
    expect(f32BitsToF16Bits(0x7f800001) & 0x3ff).not.toBe(0);
  });

  it('converts arrays', () => {
    const src = new Float32Array([0, 1, -2.5, 65504, 1e-8, NaN]);
    const back = f16ArrayToF32(f32ArrayToF16(src));
    expect(Array.from(back.subarray(0, 4))).toEqual([0, 1, -2.5, 65504]);
    expect(back[4]).toBe(0);
    expect(Number.isNaN(back[5]!)).toBe(true);
  });
});

describe('bf16', () => {
  const table = positiveValues(bf16BitsToF32, 0x8000);

  it('widens every encoding exactly and narrows it back to itself', () => {
    const wrong: number[] = [];
    for (let b = 0; b < 0x10000; b++) {
      const v = bf16BitsToF32(b);
      const ok = Number.isNaN(v) ? Number.isNaN(bf16BitsToF32(f32ToBf16Bits(v))) : f32ToBf16Bits(v) === b;
      if (!ok) wrong.push(b);
    }
    expect(wrong).toEqual([]);
  });

  it('rounds random f32 values to the nearest bf16, ties to even', () => {
    const next = mulberry32(2);
    const wrong: number[] = [];
    for (let i = 0; i < 100_000; i++) {
      const bits = next();
      const x = bitsToF32(bits);
      if (!Number.isNaN(x) && f32BitsToBf16Bits(bits) !== oracleRound(x, table, 0x7f80)) wrong.push(x);
    }
    expect(wrong).toEqual([]);
  });

  it('handles ties, subnormals, overflow and NaN', () => {
    expect(f32ToBf16Bits(1 + 2 ** -8)).toBe(0x3f80); // tie → even
    expect(f32ToBf16Bits(1 + 3 * 2 ** -8)).toBe(0x3f82);
    expect(f32BitsToBf16Bits(0x00008000)).toBe(0x0000); // subnormal tie → even (0)
    expect(f32BitsToBf16Bits(0x00018000)).toBe(0x0002);
    expect(f32BitsToBf16Bits(0x7f7fffff)).toBe(0x7f80); // max f32 rounds up to Inf
    expect(f32ToBf16Bits(-Infinity)).toBe(0xff80);
    expect(f32BitsToBf16Bits(0x7f800001) & 0x7f).not.toBe(0); // NaN stays NaN
    expect(f32BitsToBf16Bits(0xffc00000)).toBe(0xffc0);
    const src = new Float32Array([1, -3.140625, 0.1]);
    const back = bytesToF32('BF16', new Uint8Array(f32ArrayToBf16(src).buffer));
    expect(Array.from(back)).toEqual([1, -3.140625, bf16BitsToF32(f32ToBf16Bits(0.1))]);
  });
});

describe('byte conversions', () => {
  it('re-types chunks between f32, f16 and bf16, unaligned input included', () => {
    const values = new Float32Array([1, -0.5, 3.75, 1024]);
    const f32Bytes = new Uint8Array(values.buffer);
    const f16 = convertFloatBytes('F32', 'F16', f32Bytes);
    expect(f16.byteLength).toBe(8);
    expect(Array.from(bytesToF32('F16', f16))).toEqual([1, -0.5, 3.75, 1024]);
    const bf16 = convertFloatBytes('F16', 'BF16', f16);
    expect(Array.from(bytesToF32('BF16', bf16))).toEqual([1, -0.5, 3.75, 1024]);
    const unaligned = new Uint8Array(f32Bytes.byteLength + 1).subarray(1);
    unaligned.set(f32Bytes);
    expect(Array.from(bytesToF32('F16', convertFloatBytes('F32', 'F16', unaligned)))).toEqual([1, -0.5, 3.75, 1024]);
    expect(convertFloatBytes('F32', 'F32', f32Bytes)).toBe(f32Bytes);
    expect(() => convertFloatBytes('I64', 'F16', new Uint8Array(8))).toThrow(WeightsError);
  });

  it('widens integer dtypes', () => {
    expect(Array.from(bytesToF32('I64', new Uint8Array(new BigInt64Array([-3n, 5n]).buffer)))).toEqual([-3, 5]);
    expect(Array.from(bytesToF32('I32', new Uint8Array(new Int32Array([-7, 9]).buffer)))).toEqual([-7, 9]);
    expect(Array.from(bytesToF32('BOOL', new Uint8Array([1, 0])))).toEqual([1, 0]);
    expect(Array.from(bytesToF32('I8', new Uint8Array([255, 1])))).toEqual([-1, 1]);
  });

  it('parses dtype names', () => {
    expect(parseFloatDtype('f16')).toBe('F16');
    expect(parseFloatDtype('BFloat16')).toBe('BF16');
    expect(parseFloatDtype('fp32')).toBe('F32');
    expect(() => parseFloatDtype('int8')).toThrow(/unknown target dtype "int8"/);
  });

  it('keeps f32 bit patterns', () => {
    expect(f32ToBits(-0)).toBe(0x80000000);
    expect(bitsToF32(0x3f800000)).toBe(1);
  });
});
