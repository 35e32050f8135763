import { describe, expect, it } from 'vitest';
import { bf16BitsToF32, f16BitsToF32, f32ToBf16Bits, f32ToF16Bits } from '../../engine/dtype.js';
import { rng, runSeed } from '../helpers.js';

// Reference rounding in float64: nearest representable value, ties to even significand.
function nearestF16(x: number): number {
  if (Number.isNaN(x)) return NaN;
  const a = Math.abs(x);
  if (a >= 65520) return Math.sign(x) * Infinity; // halfway between max half (65504) and 2^16 rounds up
  const e = a < 2 ** -14 ? -14 : Math.floor(Math.log2(a));
  const ulp = 2 ** (e - 10);
  const q = a / ulp;
  let r = Math.floor(q);
  const frac = q - r;
  if (frac > 0.5 || (frac === 0.5 && r % 2 === 1)) r += 1;
  return Math.sign(x) * r * ulp;
}

describe(`dtype conversions (seed ${runSeed})`, () => {
  it('f16 round trip is exact for every half bit pattern', () => {
    for (let h = 0; h < 0x10000; h++) {
      const v = f16BitsToF32(h);
      if (Number.isNaN(v)) {
        expect(Number.isNaN(f16BitsToF32(f32ToF16Bits(v)))).toBe(true);
        continue;
      }
      const back = f32ToF16Bits(v);
      // ±0 both map to themselves.
      expect(back, `half 0x${h.toString(16)}`).toBe(h);
    }
  });

  it('f32 → f16 rounds to nearest even, including subnormals, ties and overflow', () => {
    const rand = rng();
    const cases = [0.1, 1 / 3, 65504, 65519.99, 65520, 1e-8, 2 ** -24, 2 ** -25, 3 * 2 ** -25, 1 + 2 ** -11, 1 + 3 * 2 ** -11, -2.5e-5];
    for (let i = 0; i < 20000; i++) cases.push((rand() - 0.5) * 2 ** Math.floor(rand() * 40 - 28));
    for (const x of cases) {
      const f = Math.fround(x);
      expect(f16BitsToF32(f32ToF16Bits(f)), `x=${f}`).toBe(nearestF16(f));
    }
    expect(f16BitsToF32(f32ToF16Bits(Infinity))).toBe(Infinity);
    expect(Number.isNaN(f16BitsToF32(f32ToF16Bits(NaN)))).toBe(true);
  });

  it('bf16 rounds to nearest even and keeps NaN', () => {
    const rand = rng();
    for (let i = 0; i < 20000; i++) {
      const x = Math.fround((rand() - 0.5) * 2 ** Math.floor(rand() * 60 - 30));
      const got = bf16BitsToF32(f32ToBf16Bits(x));
      const a = Math.abs(x);
      const ulp = 2 ** (Math.floor(Math.log2(a)) - 7);
      expect(Math.abs(got - x)).toBeLessThanOrEqual(ulp / 2);
    }
    expect(bf16BitsToF32(f32ToBf16Bits(1 + 2 ** -8))).toBe(1); // tie → even
    expect(bf16BitsToF32(f32ToBf16Bits(1 + 3 * 2 ** -8))).toBe(1 + 2 ** -6);
    expect(Number.isNaN(bf16BitsToF32(f32ToBf16Bits(NaN)))).toBe(true);
  });
});
