import { afterAll, describe, expect, it } from 'vitest';
import { Gpu } from '../../engine/device.js';
import { f32ToBf16Array, f32ToF16Array } from '../../engine/dtype.js';
import { GpuError, LimitError, ShapeError } from '../../engine/errors.js';
import { Params } from '../../engine/params.js';
import { sizeClass } from '../../engine/pool.js';
import { unary } from '../../kernels/elementwise.js';
import { LINEAR_WORKGROUP } from '../../kernels/wgsl.js';
import { randomArray, releaseTestGpu, rng, runSeed, testGpu } from '../helpers.js';

afterAll(releaseTestGpu);

describe(`engine (seed ${runSeed})`, () => {
  it('creates a device with the adapter limits and reports features', async () => {
    const gpu = await testGpu();
    expect(gpu.limits.maxStorageBufferBindingSize).toBeGreaterThanOrEqual(128 * 2 ** 20);
    expect(gpu.limits.maxComputeWorkgroupStorageSize).toBeGreaterThanOrEqual(16384);
    expect(typeof gpu.adapter.description).toBe('string');
  });

  it('round-trips every dtype, and row views read and write their own range', async () => {
    const gpu = await testGpu();
    const rand = rng();
    const f = randomArray(37 * 5, rand);
    const t = gpu.upload(f, [37, 5], 'f32');
    expect(await t.read()).toEqual(f);
    const v = t.rows(16, 4); // 16·5·4 = 320 bytes: a multiple of lavapipe's 16-byte alignment
    expect(await v.read()).toEqual(f.subarray(80, 100));
    const h = f32ToF16Array(f);
    const th = gpu.upload(h, [37, 5], 'f16');
    expect(await th.readRaw()).toEqual(h);
    const b = f32ToBf16Array(f);
    expect(await gpu.upload(b, [185], 'bf16').readRaw()).toEqual(b);
    const i = Int32Array.from({ length: 11 }, (_, k) => k * 7 - 30);
    expect(await gpu.upload(i, [11], 'i32').read()).toEqual(i);
    // An odd-length half write in the middle of a buffer leaves its neighbours alone.
    const mid = th.rows(3, 1);
    mid.write(new Uint16Array([1, 2, 3, 4, 5]));
    const all = (await th.readRaw()) as Uint16Array;
    expect([...all.subarray(15, 20)]).toEqual([1, 2, 3, 4, 5]);
    expect(all[14]).toBe(h[14]);
    expect(all[20]).toBe(h[20]);
  });

  it('rejects uploads of the wrong size or type, and use after dispose', async () => {
    const gpu = await testGpu();
    expect(() => gpu.upload(new Float32Array(5), [2, 3], 'f32')).toThrow(ShapeError);
    expect(() => gpu.upload(new Float32Array(6), [2, 3], 'f16')).toThrow(/f16 but data is a Float32Array/);
    const t = gpu.upload(new Float32Array(6).fill(1), [6], 'f32');
    t.dispose();
    expect(() => unary(gpu, 'silu', t)).toThrow(/after dispose/);
  });

  it('reshape is a view that frees nothing; as() moves ownership under the new shape', async () => {
    const gpu = await testGpu();
    const base = gpu.stats().liveBytes;
    const t = gpu.empty([6, 10], 'f32', 'moved');
    expect(gpu.stats().liveBytes).toBeGreaterThan(base);
    t.reshape([60]).dispose();
    expect(gpu.stats().liveBytes).toBeGreaterThan(base); // the view freed nothing
    const m = t.as([3, 20]);
    expect(m.shape).toEqual([3, 20]);
    expect(t.isDisposed).toBe(true);
    expect(() => t.as([60])).toThrow(/used after dispose/);
    expect(() => m.as([7, 9])).toThrow(/cannot reshape \[3, 20\] to \[7, 9\]/);
    m.dispose();
    expect(gpu.stats().liveBytes).toBe(base);
  });

  it('folds grids beyond 65535 workgroups and every workgroup runs once', async () => {
    const gpu = await testGpu();
    const n = 70000 * 4 + 3; // > 65535 workgroups of 4 threads
    const spec = {
      name: 'test_iota',
      bindings: ['write'] as const,
      code: `struct P { n: u32 }
@group(0) @binding(0) var<storage, read_write> y: array<u32>;
@group(0) @binding(1) var<uniform> p: P;
${LINEAR_WORKGROUP}
@compute @workgroup_size(4) fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) li: u32) {
  let i = linear_workgroup(wid, nwg) * 4u + li;
  if (i < p.n) { y[i] = y[i] + i + 1u; }
}`,
    };
    const y = gpu.upload(new Uint32Array(n), [n], 'u32');
    gpu.run(spec, [y], new Params().u32(n), Math.ceil(n / 4));
    const got = (await y.read()) as Uint32Array;
    for (let i = 0; i < n; i++) if (got[i] !== i + 1) expect.fail(`element ${i} = ${got[i]}`);
  });

  it('pipelines are cached per source, bind groups per buffers; pool reuses size classes', async () => {
    const gpu = await testGpu();
    const x = gpu.upload(randomArray(1000, rng()), [1000], 'f32');
    const before = gpu.stats();
    for (let i = 0; i < 5; i++) unary(gpu, 'silu', x).dispose();
    const after = gpu.stats();
    expect(after.pipelines - before.pipelines).toBeLessThanOrEqual(1);
    expect(after.buffers - before.buffers).toBeLessThanOrEqual(1);
    expect(sizeClass(1000)).toBe(1024);
    expect(sizeClass(100_000)).toBeGreaterThanOrEqual(100_000);
    expect(sizeClass(100_000)).toBeLessThanOrEqual(125_000);
    expect(after.peakBytes).toBeGreaterThan(0);
  });

  it('a WGSL error becomes a GpuError naming the kernel', async () => {
    const gpu = await Gpu.create({ validate: true });
    try {
      const bad = { name: 'broken_kernel', bindings: ['write'] as const, code: '@compute @workgroup_size(1) fn main() { let x: u32 = 1.5; }' };
      const y = gpu.empty([4], 'f32');
      expect(() => gpu.run(bad, [y], null, 1)).not.toThrow(); // errors are asynchronous …
      await expect(gpu.sync()).rejects.toThrow(/broken_kernel/); // … and surface at the next sync point
      await expect(gpu.sync()).rejects.toBeInstanceOf(GpuError);
    } finally {
      gpu.destroy();
    }
  });

  it('bindings beyond the device limit say which limit and by how much', async () => {
    const gpu = await testGpu();
    const max = gpu.limits.maxStorageBufferBindingSize;
    const big = gpu.empty([max / 4 + 64], 'f32', 'too-big'); // a buffer may be larger than one binding
    const spec = {
      name: 'test_touch',
      bindings: ['write'] as const,
      code: `@group(0) @binding(0) var<storage, read_write> y: array<f32>;
@compute @workgroup_size(1) fn main() { y[0] = 1.0; }`,
    };
    try {
      expect(() => gpu.run(spec, [big], null, 1)).toThrow(LimitError);
      expect(() => gpu.run(spec, [big], null, 1)).toThrow(/test_touch.*maxStorageBufferBindingSize.*over by 256/);
    } finally {
      big.dispose();
      gpu.trimPool();
    }
  });

  it('launchers split elementwise work over the binding limit instead of failing', async () => {
    const gpu = await testGpu();
    const max = gpu.limits.maxStorageBufferBindingSize;
    const n = max / 4 + 1000;
    const x = gpu.empty([n], 'f32', 'big-x');
    x.write(new Float32Array(n).fill(-2));
    const y = unary(gpu, 'scale', x, { alpha: -0.5 });
    try {
      const got = (await y.read()) as Float32Array;
      expect(got[0]).toBe(1);
      expect(got[n - 1]).toBe(1);
      expect(got[max / 4 - 1]).toBe(1);
      expect(got[max / 4]).toBe(1);
    } finally {
      x.dispose();
      y.dispose();
      gpu.trimPool();
    }
  });

  it('per-kernel timing through timestamp queries', async () => {
    const gpu = await Gpu.create({ profile: true });
    try {
      if (!gpu.hasTimestamps) return expect(gpu.profiling).toBe(false);
      const x = gpu.upload(randomArray(4096, rng()), [4096], 'f32');
      for (let i = 0; i < 3; i++) unary(gpu, 'gelu_tanh', x).dispose();
      const rows = await gpu.timings();
      const row = rows.find((r) => r.kernel === 'unary_gelu_tanh');
      expect(row?.calls).toBe(3);
      expect(row!.totalMs).toBeGreaterThanOrEqual(0);
    } finally {
      gpu.destroy();
    }
  });
});
