import { afterAll, describe, expect, it } from 'vitest';
import { ShapeError } from '../../engine/errors.js';
import type { Gpu } from '../../engine/device.js';
import {
  philox4x32,
  philox4x32Gpu,
  randomNormal,
  randomNormalCpu,
  randomU32,
  randomU32Cpu,
  randomUniform,
  randomUniformCpu,
} from '../../kernels/rng.js';
import { poisoned, releaseTestGpu, rng, runSeed, testGpu } from '../helpers.js';

afterAll(releaseTestGpu);

/** The test GPU as the launchers see it, but with a 1 KiB binding limit and 256-byte offset alignment, so
 *  chunking is exercised on small outputs. Every method still runs on the real device. */
function smallBindings(gpu: Gpu): Gpu {
  const limits = { maxStorageBufferBindingSize: 1024, minStorageBufferOffsetAlignment: 256 };
  return new Proxy(gpu, {
    get(target, prop) {
      if (prop === 'limits') return limits;
      const v = Reflect.get(target, prop, target);
      return typeof v === 'function' ? v.bind(target) : v;
    },
  });
}

type Block = [number, number, number, number];

// Random123's published known-answer vectors for philox4x32 with 10 rounds (kat_vectors).
const KAT: { counter: Block; key: [number, number]; want: Block }[] = [
  { counter: [0, 0, 0, 0], key: [0, 0], want: [0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8] },
  {
    counter: [0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff],
    key: [0xffffffff, 0xffffffff],
    want: [0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd],
  },
  {
    counter: [0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344],
    key: [0xa4093822, 0x299f31d0],
    want: [0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1],
  },
];

const hex = (a: ArrayLike<number>) => Array.from(a, (v) => `0x${v.toString(16).padStart(8, '0')}`);
const u32 = (rand: () => number) => Math.floor(rand() * 2 ** 32);

function expectBitsEqual(got: Uint32Array | Float32Array, want: Uint32Array | Float32Array, what: string): void {
  const g = new Uint32Array(got.buffer, got.byteOffset, got.length);
  const w = new Uint32Array(want.buffer, want.byteOffset, want.length);
  expect(g.length, `${what}: length`).toBe(w.length);
  for (let i = 0; i < w.length; i++) {
    if (g[i] !== w[i]) expect.fail(`${what}: element ${i} is 0x${g[i].toString(16)} (${got[i]}), expected 0x${w[i].toString(16)} (${want[i]}); seed ${runSeed}`);
  }
}

describe(`rng: Philox-4×32-10 (seed ${runSeed})`, () => {
  it('CPU philox4x32 matches the Random123 known-answer vectors', () => {
    for (const { counter, key, want } of KAT) expect(hex(philox4x32(counter, key))).toEqual(hex(want));
  });

  it('GPU philox matches the known-answer vectors and the CPU on random counters and keys', async () => {
    const gpu = await testGpu();
    for (const { counter, key, want } of KAT) {
      const got = await philox4x32Gpu(gpu, gpu.upload(Uint32Array.from(counter), [1, 4], 'u32'), key).read();
      expect(hex(got)).toEqual(hex(want));
    }
    const rand = rng(runSeed + 1);
    const m = 3001;
    const counters = Uint32Array.from({ length: 4 * m }, () => u32(rand));
    const key: [number, number] = [u32(rand), u32(rand)];
    const got = (await philox4x32Gpu(gpu, gpu.upload(counters, [m, 4], 'u32'), key).read()) as Uint32Array;
    const want = new Uint32Array(4 * m);
    for (let i = 0; i < m; i++) want.set(philox4x32([...counters.subarray(4 * i, 4 * i + 4)] as Block, key), 4 * i);
    expectBitsEqual(got, want, 'philox blocks');
  });

  // Offsets: from 0, odd ones (a partial first block), and past 2³⁴ so the block index's high word is
  // used; the last one starts 5 blocks below 2³² blocks so the 64-bit carry happens mid-dispatch.
  const cases: [number, number][] = [
    [1, 0],
    [3, 1],
    [4097, 6],
    [100_003, 4 * (2 ** 32 - 5) + 3],
    [20_001, 2 ** 40 + 2],
  ];
  it.each(cases)('randomU32 and randomUniform on %i elements from offset %i are bit-identical to the CPU', async (n, offset) => {
    const gpu = await testGpu();
    const rand = rng(runSeed + n);
    const opts = { key: u32(rand) + u32(rand) * 2 ** 20, offset, stream: u32(rand) };
    const bits = randomU32(gpu, n, { ...opts, out: poisoned(gpu, [n], 'u32') });
    const uni = randomUniform(gpu, n, { ...opts, out: poisoned(gpu, [n]) });
    expectBitsEqual((await bits.read()) as Uint32Array, randomU32Cpu(n, opts), 'u32');
    const u = await uni.readF32();
    expectBitsEqual(u, randomUniformCpu(n, opts), 'uniform');
    for (let i = 0; i < n; i++) if (!(u[i] >= 0 && u[i] < 1)) expect.fail(`uniform ${i} = ${u[i]}`);
  });

  // z = r·cos/sin: the GPU's f32 ln, sqrt, polynomial sin/cos and product each stay within a few ulp
  // (relative, also near z = 0 thanks to the exact argument reduction), the CPU twin is float64.
  it.each(cases)('randomNormal on %i elements from offset %i matches the CPU twin to 1e-6 relative', async (n, offset) => {
    const gpu = await testGpu();
    const rand = rng(runSeed + 7 * n);
    const opts = { key: [u32(rand), u32(rand)] as [number, number], offset, stream: u32(rand) };
    const z = await randomNormal(gpu, n, { ...opts, out: poisoned(gpu, [n]) }).readF32();
    const want = randomNormalCpu(n, opts);
    let worst = 0;
    for (let i = 0; i < n; i++) {
      const rel = Math.abs(z[i] - want[i]) / Math.max(Math.abs(want[i]), 1e-30);
      if (!(rel <= 1e-6)) expect.fail(`normal ${i}: GPU ${z[i]}, CPU ${want[i]} (relative ${rel}); seed ${runSeed}`);
      worst = Math.max(worst, rel);
    }
    // mean + std·z adds one f32 rounding of the result (≤ 2⁻²⁴ relative to |mean| + std·|z|).
    const mean = 0.75;
    const std = 2.5;
    const y = await randomNormal(gpu, n, { ...opts, mean, std, out: poisoned(gpu, [n]) }).readF32();
    const wantY = randomNormalCpu(n, { ...opts, mean, std });
    for (let i = 0; i < n; i++) {
      const tol = 1.2e-6 * (Math.abs(mean) + std * Math.abs(want[i]));
      if (!(Math.abs(y[i] - wantY[i]) <= tol)) expect.fail(`scaled normal ${i}: GPU ${y[i]}, CPU ${wantY[i]}; seed ${runSeed}`);
    }
  });

  it('normals and uniforms have the right moments (5σ bounds for n = 2²⁰)', async () => {
    const gpu = await testGpu();
    const n = 2 ** 20;
    const key = u32(rng(runSeed + 3));
    const z = await randomNormal(gpu, n, { key }).readF32();
    let s1 = 0;
    let s2 = 0;
    let s4 = 0;
    let inside = 0;
    for (const v of z) {
      s1 += v;
      s2 += v * v;
      s4 += v ** 4;
      if (Math.abs(v) < 1) inside++;
    }
    // For a standard normal: sd(mean) = 1/√n, sd(mean of z²) = √(2/n), sd(mean of z⁴) = √(96/n),
    // sd(fraction with |z| < 1) = √(p(1−p)/n), p = 0.682689.
    expect(Math.abs(s1 / n)).toBeLessThan(5 / Math.sqrt(n));
    expect(Math.abs(s2 / n - 1)).toBeLessThan(5 * Math.sqrt(2 / n));
    expect(Math.abs(s4 / n - 3)).toBeLessThan(5 * Math.sqrt(96 / n));
    const p = 0.6826894921370859;
    expect(Math.abs(inside / n - p)).toBeLessThan(5 * Math.sqrt((p * (1 - p)) / n));
    const u = await randomUniform(gpu, n, { key, stream: 1 }).readF32();
    let m1 = 0;
    let m2 = 0;
    for (const v of u) {
      m1 += v;
      m2 += (v - 0.5) ** 2;
    }
    // Uniform: variance 1/12, sd(mean) = √(1/12n); sd of the mean of (u−½)² is √(1/180n).
    expect(Math.abs(m1 / n - 0.5)).toBeLessThan(5 * Math.sqrt(1 / (12 * n)));
    expect(Math.abs(m2 / n - 1 / 12)).toBeLessThan(5 * Math.sqrt(1 / (180 * n)));
    const y = await randomNormal(gpu, n, { key, mean: 3, std: 0.5 }).readF32();
    let ym = 0;
    for (const v of y) ym += v;
    expect(Math.abs(ym / n - 3)).toBeLessThan(5 * (0.5 / Math.sqrt(n)));
  });

  it('different keys and streams give unrelated streams', async () => {
    const gpu = await testGpu();
    const rand = rng(runSeed + 5);
    const n = 4096;
    const k0 = u32(rand);
    const k1 = u32(rand);
    const variants = [
      { key: [k0, k1] as [number, number] },
      { key: [(k0 ^ 1) >>> 0, k1] as [number, number] },
      { key: [k0, (k1 ^ 0x80000000) >>> 0] as [number, number] },
      { key: [k0, k1] as [number, number], stream: 1 },
    ];
    const streams = await Promise.all(variants.map(async (o) => (await randomU32(gpu, n, o).read()) as Uint32Array));
    // A coincidence at one position has probability 2⁻³², so even one among 4096 is a ~1e-6 event.
    for (let a = 0; a < streams.length; a++) {
      for (let b = a + 1; b < streams.length; b++) {
        let same = 0;
        for (let i = 0; i < n; i++) if (streams[a][i] === streams[b][i]) same++;
        expect(same, `variants ${a} and ${b}`).toBeLessThanOrEqual(1);
      }
    }
  });

  it('offset k gives the stream shifted by k (GPU, bit for bit, normals included)', async () => {
    const gpu = await testGpu();
    const key = u32(rng(runSeed + 9));
    const n = 1003;
    const full = {
      u: await randomUniform(gpu, n + 1001, { key }).readF32(),
      z: await randomNormal(gpu, n + 1001, { key, mean: 1, std: 3 }).readF32(),
    };
    for (const k of [1, 2, 3, 4, 5, 1001]) {
      const u = await randomUniform(gpu, n, { key, offset: k, out: poisoned(gpu, [n]) }).readF32();
      expectBitsEqual(u, full.u.subarray(k, k + n), `uniform offset ${k}`);
      const z = await randomNormal(gpu, n, { key, offset: k, mean: 1, std: 3, out: poisoned(gpu, [n]) }).readF32();
      expectBitsEqual(z, full.z.subarray(k, k + n), `normal offset ${k}`);
    }
    // The CPU twins too.
    expectBitsEqual(randomUniformCpu(50, { key, offset: 7 }), randomUniformCpu(57, { key }).subarray(7), 'cpu uniform');
    expectBitsEqual(randomNormalCpu(50, { key, offset: 7 }), randomNormalCpu(57, { key }).subarray(7), 'cpu normal');
  });

  it('splits outputs larger than one binding into chunks that continue the stream', async () => {
    const gpu = await testGpu();
    const key = u32(rng(runSeed + 11));
    const n = 1001;
    const offset = 6;
    // Chunks of 188 elements (a 1 KiB binding limit), written through an unaligned view.
    const small = smallBindings(gpu);
    const out = poisoned(gpu, [n + 2]);
    randomUniform(small, n, { key, offset, out: out.rows(1, n) });
    expectBitsEqual((await out.readF32()).subarray(1, n + 1), randomUniformCpu(n, { key, offset }), 'chunked uniform');
    const z = await randomNormal(small, n, { key, offset }).readF32();
    expectBitsEqual(z, await randomNormal(gpu, n, { key, offset }).readF32(), 'chunked normal');
  });

  it('rejects bad keys, offsets, streams and outputs', async () => {
    const gpu = await testGpu();
    expect(() => randomUniform(gpu, 4, { key: -1 })).toThrow(ShapeError);
    expect(() => randomUniform(gpu, 4, { key: [1, 2 ** 32] })).toThrow(/key/);
    expect(() => randomUniform(gpu, 4, { key: 1, offset: 0.5 })).toThrow(/offset/);
    expect(() => randomNormal(gpu, 4, { key: 1, stream: -1 })).toThrow(/stream/);
    expect(() => randomU32(gpu, 4, { key: 1, out: gpu.empty([4], 'f32') })).toThrow(/random_u32.*u32/);
    expect(() => philox4x32Gpu(gpu, gpu.empty([3, 3], 'u32'), 0)).toThrow(/philox4x32.*\[m, 4\]/);
  });
});
