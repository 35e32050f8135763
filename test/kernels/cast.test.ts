import { afterAll, describe, expect, it } from 'vitest';
import { Gpu } from '../../engine/device.js';
import { type DType, bf16BitsToF32, f16BitsToF32, f32ToBf16Bits, f32ToF16Bits } from '../../engine/dtype.js';
import { ShapeError } from '../../engine/errors.js';
import type { Tensor } from '../../engine/tensor.js';
import { cast } from '../../kernels/elementwise.js';
import { windowElements } from '../../kernels/layout.js';
import { poisoned, releaseTestGpu, rng, runSeed, testGpu } from '../helpers.js';

afterAll(releaseTestGpu);

/** The test GPU as the launchers see it, but with a small binding limit and 256-byte offset alignment, so
 *  chunking is exercised on small tensors. Every method still runs on the real device. */
function smallBindings(gpu: Gpu, maxBinding: number): Gpu {
  const limits = { maxStorageBufferBindingSize: maxBinding, minStorageBufferOffsetAlignment: 256 };
  return new Proxy(gpu, {
    get(target, prop) {
      if (prop === 'limits') return limits;
      const v = Reflect.get(target, prop, target);
      return typeof v === 'function' ? v.bind(target) : v;
    },
  });
}

type Half = 'f16' | 'bf16';
const toHalf = { f16: f32ToF16Bits, bf16: f32ToBf16Bits };
const fromHalf = { f16: f16BitsToF32, bf16: bf16BitsToF32 };

const f32Bits = (a: Float32Array) => new Uint32Array(a.buffer, a.byteOffset, a.length);
const bitsF32 = (a: Uint32Array) => new Float32Array(a.buffer, a.byteOffset, a.length);
const isNaNHalf = (h: number, dtype: Half) => (dtype === 'f16' ? (h & 0x7c00) === 0x7c00 && (h & 0x3ff) !== 0 : (h & 0x7f80) === 0x7f80 && (h & 0x7f) !== 0);

/**
 * f32 bit patterns that stress the rounding: fully random words (NaN, Inf and f32 subnormals included),
 * values from below the smallest f16 subnormal up past f16 overflow, exact ties for both half formats
 * (normal and subnormal f16), and the edges.
 */
function stressValues(n: number, rand: () => number): Float32Array {
  const bits = new Uint32Array(n);
  const word = () => Math.floor(rand() * 2 ** 32) >>> 0;
  const sign = () => (rand() < 0.5 ? 0x80000000 : 0);
  const edges = [
    0, 0x80000000, 0x477fe000 /* 65504 */, 0x477fefff /* just below the f16 overflow tie */, 0x477ff000 /* 65520: tie → Inf */,
    0x7f7fffff, 0xff7fffff, 0x7f7f8000, 0x00000001, 0x007fffff, 0x33800000 /* 2^-24 */, 0x33000000 /* 2^-25: tie → 0 */,
    0x33000001, 0x33c00000 /* 1.5·2^-24: tie → 2^-23 */, 0x387fc000, 0x38800000 /* 2^-14 */, 0x7f800000, 0xff800000,
    0x7fc00000, 0xffc00001, 0x7f800001 /* signalling */, 0x7fbfffff, 0x3f800000, 0x3f801000 /* f16 tie, even */, 0x3f803000,
  ];
  for (let i = 0; i < n; i++) {
    const kind = i < edges.length ? -1 : Math.floor(rand() * 5);
    const mant = word() & 0x7fffff;
    switch (kind) {
      case -1:
        bits[i] = edges[i];
        break;
      case 0: // any bit pattern
        bits[i] = word();
        break;
      case 1: // exponents 2^-27 … 2^17: f16 zero, subnormals, normals and overflow
        bits[i] = (sign() | ((100 + Math.floor(rand() * 45)) << 23) | mant) >>> 0;
        break;
      case 2: // f16 ties in the normal range: the 13 dropped bits are exactly 1000…0
        bits[i] = (sign() | ((113 + Math.floor(rand() * 30)) << 23) | (mant & ~0x1fff) | 0x1000) >>> 0;
        break;
      case 3: // bf16 ties anywhere below Inf: the 16 dropped bits are exactly 1000…0
        bits[i] = (sign() | (Math.floor(rand() * 255) << 23) | (mant & ~0xffff) | 0x8000) >>> 0;
        break;
      default: {
        // f16 subnormal ties: (k + ½)·2^-24
        const k = Math.floor(rand() * 1024);
        const f = new Float32Array([(k + 0.5) * 2 ** -24 * (rand() < 0.5 ? -1 : 1)]);
        bits[i] = f32Bits(f)[0];
      }
    }
  }
  return bitsF32(bits);
}

/** Bit-for-bit equality; for 16-bit inputs given as `src`, NaN inputs only need a NaN out. */
function expectBitsEqual(got: ArrayLike<number>, want: ArrayLike<number>, what: string, srcDtype?: Half, src?: Uint16Array): void {
  expect(got.length, `${what}: length`).toBe(want.length);
  for (let i = 0; i < want.length; i++) {
    if (srcDtype && src && isNaNHalf(src[i], srcDtype)) continue;
    if (got[i] !== want[i]) expect.fail(`${what}: element ${i} is 0x${got[i].toString(16)}, expected 0x${want[i].toString(16)} (seed ${runSeed})`);
  }
}

async function castBits(gpu: Gpu, x: Tensor, to: DType): Promise<Uint16Array | Uint32Array> {
  const out = poisoned(gpu, [...x.shape], to);
  cast(gpu, x, to, { out });
  const raw = await out.readRaw();
  return raw instanceof Float32Array ? f32Bits(raw) : (raw as Uint16Array);
}

describe(`cast (seed ${runSeed})`, () => {
  const halves: Half[] = ['f16', 'bf16'];

  for (const dtype of halves) {
    it(`${dtype} → f32 is exact for every bit pattern (65537 elements)`, async () => {
      const gpu = await testGpu();
      // All 65536 patterns, shuffled, plus one more so the count is odd.
      const rand = rng(runSeed);
      const h = new Uint16Array(65537);
      for (let i = 0; i < 65537; i++) h[i] = i & 0xffff;
      for (let i = h.length - 1; i > 0; i--) {
        const j = Math.floor(rand() * (i + 1));
        [h[i], h[j]] = [h[j], h[i]];
      }
      const got = (await castBits(gpu, gpu.upload(h, [h.length], dtype), 'f32')) as Uint32Array;
      const want = f32Bits(Float32Array.from(h, (v) => fromHalf[dtype](v)));
      for (let i = 0; i < h.length; i++) {
        if (isNaNHalf(h[i], dtype)) {
          if (!Number.isNaN(bitsF32(got.subarray(i, i + 1))[0])) expect.fail(`${dtype} NaN 0x${h[i].toString(16)} → 0x${got[i].toString(16)}`);
        } else if (got[i] !== want[i]) {
          expect.fail(`${dtype} 0x${h[i].toString(16)} → 0x${got[i].toString(16)}, expected 0x${want[i].toString(16)}`);
        }
      }
    });

    it.each([1, 2, 3, 255, 4097, 200_001])(`f32 → ${dtype} matches engine/dtype.ts bit for bit on %i stress values`, async (n) => {
      const gpu = await testGpu();
      const x = stressValues(n, rng(runSeed + n));
      const got = await castBits(gpu, gpu.upload(x, [n], 'f32'), dtype);
      for (let i = 0; i < n; i++) {
        const want = toHalf[dtype](x[i]);
        if (got[i] !== want) {
          expect.fail(`${dtype}: f32 0x${f32Bits(x.subarray(i, i + 1))[0].toString(16)} → 0x${got[i].toString(16)}, expected 0x${want.toString(16)} (seed ${runSeed})`);
        }
      }
    });
  }

  it.each([
    ['f16', 'bf16'],
    ['bf16', 'f16'],
    ['f16', 'f16'],
    ['bf16', 'bf16'],
    ['f32', 'f32'],
  ] as [DType, DType][])('%s → %s equals widening then rounding (same dtype: a bit copy)', async (from, to) => {
    const gpu = await testGpu();
    const n = 9999;
    const rand = rng(runSeed + 17);
    const x = from === 'f32' ? f32Bits(stressValues(n, rand)) : Uint16Array.from({ length: n }, () => Math.floor(rand() * 65536));
    const got = await castBits(gpu, from === 'f32' ? gpu.upload(bitsF32(x as Uint32Array), [n], 'f32') : gpu.upload(x as Uint16Array, [n], from), to);
    for (let i = 0; i < n; i++) {
      if (from === to) {
        if (got[i] !== x[i]) expect.fail(`${from} copy: element ${i} 0x${got[i].toString(16)} ≠ 0x${x[i].toString(16)}`);
        continue;
      }
      if (isNaNHalf(x[i], from as Half)) {
        expect(isNaNHalf(got[i], to as Half), `NaN 0x${x[i].toString(16)}`).toBe(true);
        continue;
      }
      const want = toHalf[to as Half](fromHalf[from as Half](x[i]));
      if (got[i] !== want) expect.fail(`${from} 0x${x[i].toString(16)} → 0x${got[i].toString(16)}, expected 0x${want.toString(16)}`);
    }
  });

  it('reads and writes views that start mid-word, leaving the neighbouring halves alone', async () => {
    const gpu = await testGpu();
    const rand = rng(runSeed + 23);
    const n = 1001;
    const x = stressValues(n + 3, rand);
    const src = gpu.upload(x, [n + 3], 'f32');
    const h = Uint16Array.from(x, (v) => f32ToF16Bits(v));
    const srcH = gpu.upload(h, [n + 3], 'f16');
    for (const [from, view] of [
      ['f32', src.rows(1, n)],
      ['f16', srcH.rows(1, n)], // starts at byte 2: an odd half
    ] as [DType, Tensor][]) {
      for (const to of ['bf16', 'f16'] as Half[]) {
        const out = poisoned(gpu, [n + 4], to); // every half 0x7fc1
        cast(gpu, view, to, { out: out.rows(3, n) });
        const got = (await out.readRaw()) as Uint16Array;
        expect([got[0], got[1], got[2], got[n + 3]], `${from} → ${to} neighbours`).toEqual([0x7fc1, 0x7fc1, 0x7fc1, 0x7fc1]);
        for (let i = 0; i < n; i++) {
          const v = from === 'f32' ? x[i + 1] : f16BitsToF32(h[i + 1]);
          const want = toHalf[to](v);
          if (got[i + 3] !== want && !(isNaNHalf(want, to) && isNaNHalf(got[i + 3], to))) {
            expect.fail(`${from} → ${to} view element ${i}: 0x${got[i + 3].toString(16)} vs 0x${want.toString(16)}`);
          }
        }
      }
    }
  });

  it('converts in chunks when a tensor exceeds a binding, odd-half views across chunk edges included', async () => {
    const gpu = await testGpu();
    const n = 2001;
    const x = stressValues(n + 1, rng(runSeed + 37));
    const src = gpu.upload(x, [n + 1], 'f32');
    const h = Uint16Array.from(x, (v) => f32ToF16Bits(v));
    const srcH = gpu.upload(h, [n + 1], 'f16');
    for (const maxBinding of [1024, 1000]) {
      const small = smallBindings(gpu, maxBinding); // chunks of 188 or 182 elements: edges fall mid-word
      const out = poisoned(gpu, [n + 2], 'bf16');
      cast(small, src.rows(1, n), 'bf16', { out: out.rows(1, n) });
      const got = (await out.readRaw()) as Uint16Array;
      expect([got[0], got[n + 1]]).toEqual([0x7fc1, 0x7fc1]);
      expectBitsEqual(got.subarray(1, n + 1), Uint16Array.from(x.subarray(1), (v) => f32ToBf16Bits(v)), `f32 → bf16, limit ${maxBinding}`);
      const wide = (await castBits(small, srcH.rows(1, n), 'f32')) as Uint32Array;
      expectBitsEqual(wide, f32Bits(Float32Array.from(h.subarray(1), (v) => f16BitsToF32(v))), `f16 → f32, limit ${maxBinding}`, 'f16', h.subarray(1));
    }
  });

  it('converts tensors beyond one binding in chunks (bf16 → f32 past 128 MiB of output)', async () => {
    const gpu = await testGpu();
    const n = windowElements(gpu, 'f32') + 1001; // the f32 output needs two bindings
    const rand = rng(runSeed + 29);
    const h = new Uint16Array(n);
    for (let i = 0; i < n; i++) h[i] = (i * 40503 + 12345) & 0xffff; // every pattern, spread out
    h[0] = Math.floor(rand() * 65536);
    const x = gpu.upload(h, [n], 'bf16');
    const y = cast(gpu, x, 'f32');
    x.dispose();
    const chunk = windowElements(gpu, 'f32');
    // Reading all 128 MiB back is slow on lavapipe: check the ends and both sides of the chunk edge.
    for (const [start, count] of [[0, 300], [chunk - 300, 600], [n - 300, 300]]) {
      const got = f32Bits(await y.rows(start, count).readF32());
      for (let i = 0; i < count; i++) {
        const want = (h[start + i] << 16) >>> 0; // bf16 → f32 is the bits shifted up, NaN payloads included
        if (got[i] !== want) expect.fail(`element ${start + i}: 0x${got[i].toString(16)} vs 0x${want.toString(16)}`);
      }
    }
    y.dispose();
  });

  it('works on a device without shader-f16', async () => {
    const gpu = await Gpu.create({ validate: true, disableF16: true });
    try {
      expect(gpu.hasF16).toBe(false);
      const x = stressValues(777, rng(runSeed + 31));
      const got = (await castBits(gpu, gpu.upload(x, [777], 'f32'), 'f16')) as Uint16Array;
      expect(Array.from(got)).toEqual(Array.from(x, (v) => f32ToF16Bits(v)));
      const back = (await castBits(gpu, gpu.upload(got, [777], 'f16'), 'f32')) as Uint32Array;
      for (let i = 0; i < 777; i++) if (!isNaNHalf(got[i], 'f16')) expect(bitsF32(back)[i]).toBe(f16BitsToF32(got[i]));
    } finally {
      gpu.destroy();
    }
  });

  it('rejects non-float dtypes, wrong outputs and overlapping in/out', async () => {
    const gpu = await testGpu();
    const x = gpu.upload(new Float32Array([1, 2, 3]), [3], 'f32');
    expect(() => cast(gpu, gpu.upload(new Int32Array([1]), [1], 'i32'), 'f32')).toThrow(ShapeError);
    expect(() => cast(gpu, x, 'u32')).toThrow(/cast_f32_u32/);
    expect(() => cast(gpu, x, 'f16', { out: gpu.empty([4], 'f16') })).toThrow(/out/);
    expect(() => cast(gpu, x, 'f16', { out: gpu.empty([3], 'bf16') })).toThrow(/out/);
    expect(() => cast(gpu, x, 'f32', { out: x })).toThrow(/shares a buffer/);
  });
});
