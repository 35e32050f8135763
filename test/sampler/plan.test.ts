import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { decode } from 'fast-png';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SIZES, parseNumberList, resolutionForSize, resolveBatch, resolveShape, templateNote } from '../../sampler/options.js';
import { needsGuidance, perScale, validatePlans, vanillaPlan } from '../../sampler/plan.js';
import { encodePng, indexedPath, rgbFromPlanar, toByte, writeFilesAtomically } from '../../sampler/png.js';
import { H_DIV_W_TEMPLATES, RESOLUTIONS, scaleSchedule } from '../../sampler/schedule.js';

describe('sizes and aspect ratios → schedules', () => {
  it('maps --size to the upstream resolutions', () => {
    expect(SIZES).toEqual({ 256: '0.06M', 512: '0.25M', 768: '0.60M', 1024: '1M' });
    for (const bad of [0, 255, 300, 2048, -256, 1.5]) expect(() => resolutionForSize(bad)).toThrow(/size .* is not supported: use one of 256, 512, 768, 1024/);
  });

  it.each(H_DIV_W_TEMPLATES)('template %f: every size has its prefix of the 1M schedule and 16 px per token', (t) => {
    for (const [size, res] of Object.entries(SIZES)) {
      const shape = resolveShape(Number(size), t);
      expect(shape.template).toBe(t);
      expect(shape.schedule).toEqual(scaleSchedule(t, res));
      expect(shape.schedule).toHaveLength(RESOLUTIONS[res]);
      const [h, w] = shape.schedule.at(-1)!;
      expect(shape.pixels).toEqual([16 * h, 16 * w]);
      // The pixel count is near size² (upstream's grids are up to 25 % off), the aspect near the template.
      expect(Math.abs((16 * h * 16 * w) / Number(size) ** 2 - 1)).toBeLessThanOrEqual(0.25);
      expect(Math.abs(h / w / t - 1)).toBeLessThan(0.08);
      // A vanilla plan for it: one entry per scale, in order.
      const plans = vanillaPlan(shape.schedule, { cfg: 3, tau: 0.5 });
      expect(plans.map((p) => p.grid)).toEqual(shape.schedule);
    }
  });

  it('reads --ratio as height:width and snaps to the nearest template, with a note when far off', () => {
    expect(resolveShape(1024, '1:1').pixels).toEqual([1024, 1024]);
    expect(resolveShape(768, '1:1').pixels).toEqual([768, 768]);
    expect(resolveShape(512, '1:1').pixels).toEqual([512, 512]);
    expect(resolveShape(256, '1:1').pixels).toEqual([256, 256]);
    expect(resolveShape(1024, '16:9').template).toBe(1.75);
    expect(resolveShape(1024, '16:9').pixels).toEqual([1344, 768]);
    expect(resolveShape(1024, '9:16').pixels).toEqual([768, 1344]);
    expect(resolveShape(256, 0.5).pixels).toEqual([176, 352]);
    expect(templateNote(resolveShape(1024, '16:9'))).toBeNull();
    expect(templateNote(resolveShape(1024, '10:1'))).toMatch(/nearest, 3 \(1776×592 pixels\)/);
    for (const bad of ['0:1', '1:0', 'wide', '-1:2', '']) expect(() => resolveShape(1024, bad)).toThrow(/aspect ratio/);
  });
});

describe('per-scale plans', () => {
  const sched = scaleSchedule(1, '0.06M');

  it('expands one value or one per scale, and checks the ranges', () => {
    expect(perScale('cfg', 3, 3)).toEqual([3, 3, 3]);
    expect(perScale('cfg', [1, 2, 3], 3)).toEqual([1, 2, 3]);
    expect(() => perScale('cfg', [1, 2], 3)).toThrow(/2 values for 3 scales/);
    expect(parseNumberList('--cfg', '3')).toBe(3);
    expect(parseNumberList('--cfg', '1, 2.5,3')).toEqual([1, 2.5, 3]);
    expect(() => parseNumberList('--cfg', '1,,2')).toThrow(/not a number/);
    expect(() => vanillaPlan(sched, { cfg: -1, tau: 1 })).toThrow(/cfg -1 is out of range/);
    expect(() => vanillaPlan(sched, { cfg: 3, tau: 0 })).toThrow(/tau 0 is out of range/);
    expect(() => vanillaPlan(sched, { cfg: NaN, tau: 1 })).toThrow(/out of range/);
  });

  it('runs both branches on every scale when any cfg ≠ 1 (upstream), the conditional rows only otherwise', () => {
    const cfgs = [3, 3, 3, 3, 1, 1, 1];
    const plans = vanillaPlan(sched, { cfg: cfgs, tau: 0.5 });
    expect(plans.map((p) => p.branches)).toEqual(new Array(7).fill('both'));
    expect(plans.map((p) => p.cfg)).toEqual(cfgs);
    expect(plans.every((p) => p.run && p.tokens === 'all' && p.tau === 0.5)).toBe(true);
    expect(needsGuidance(plans)).toBe(true);
    const plain = vanillaPlan(sched, { cfg: 1, tau: 1 });
    expect(plain.map((p) => p.branches)).toEqual(new Array(7).fill('cond'));
    expect(needsGuidance(plain)).toBe(false);
    // A StageVAR-shaped plan: CFG 0 on the unconditional rows, the last scales skipped.
    const stagevar = plain.map((p) => (p.scale === 5 ? { ...p, branches: 'uncond' as const } : p.scale === 6 ? { ...p, run: false } : p));
    expect(needsGuidance(stagevar)).toBe(true);
    expect(() => validatePlans(stagevar, sched)).not.toThrow();
  });

  it('rejects plans the loop cannot run', () => {
    const plans = vanillaPlan(sched, { cfg: 3, tau: 1 });
    expect(() => validatePlans(plans.slice(1), sched)).toThrow(/6 scale plans for a schedule of 7/);
    expect(() => validatePlans([{ ...plans[0], run: false }, ...plans.slice(1)], sched)).toThrow(/scale 0 must run/);
    expect(() => validatePlans([plans[1], plans[0], ...plans.slice(2)], sched)).toThrow(/plan says scale 1/);
    expect(() => validatePlans(plans.map((p) => ({ ...p, branches: 'neither' as never })), sched)).toThrow(/unknown branches/);
  });

  it('gives each image its seed and checks batch sizes', () => {
    expect(resolveBatch(1, undefined, 5)).toEqual({ batch: 1, seeds: [5] });
    expect(resolveBatch(1, 3, 5)).toEqual({ batch: 3, seeds: [5, 6, 7] });
    expect(resolveBatch(2, undefined, 5)).toEqual({ batch: 2, seeds: [5, 6] });
    expect(resolveBatch(1, undefined, [9, 4])).toEqual({ batch: 2, seeds: [9, 4] });
    expect(resolveBatch(1, undefined, undefined).seeds[0]).toBeGreaterThanOrEqual(0);
    expect(() => resolveBatch(2, 3, 1)).toThrow(/2 prompts for a batch of 3/);
    expect(() => resolveBatch(1, 2, [1])).toThrow(/1 seeds for a batch of 2/);
    expect(() => resolveBatch(1, 0, 1)).toThrow(/batch 0/);
    expect(() => resolveBatch(1, 1, -1)).toThrow(/seed -1/);
    expect(() => resolveBatch(1, 1, 2 ** 53)).toThrow(/seed/);
  });
});

describe('pixels and PNG files', () => {
  let dir: string;
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'stagevar-png-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('converts like upstream: clamp, (y + 1)/2·255 in f32, truncated', () => {
    expect([-2, -1, 0, 1, 3].map(toByte)).toEqual([0, 0, 127, 255, 255]);
    expect(toByte(0.999)).toBe(254);
    expect(toByte(-0.99)).toBe(1);
    // [1, 3, 1, 2] planar → interleaved RGB.
    const img = rgbFromPlanar(new Float32Array([-1, 1, 0, 0, 1, -1]), [1, 3, 1, 2]);
    expect(img).toMatchObject({ width: 2, height: 1 });
    expect(Array.from(img.data)).toEqual([0, 127, 255, 255, 127, 0]);
  });

  it('encodes decodable RGB PNGs, the same bytes for the same pixels', () => {
    const img = { width: 3, height: 2, data: Uint8Array.from({ length: 18 }, (_, i) => i * 13) };
    const png = encodePng(img, { Software: 'stagevar' });
    expect(Buffer.compare(Buffer.from(png), Buffer.from(encodePng(img, { Software: 'stagevar' })))).toBe(0);
    const back = decode(png);
    expect([back.width, back.height, back.channels, back.depth]).toEqual([3, 2, 3, 8]);
    expect(Array.from(back.data)).toEqual(Array.from(img.data));
  });

  it('names batch files and writes all files or none', async () => {
    expect(indexedPath('/a/out.png', 0)).toBe('/a/out-0.png');
    expect(indexedPath('/a.b/out', 2)).toBe('/a.b/out-2.png');
    const a = join(dir, 'a.png');
    await writeFilesAtomically([{ path: a, data: new Uint8Array([1, 2, 3]) }]);
    expect(Array.from(await readFile(a))).toEqual([1, 2, 3]);
    // The second target's folder does not exist: neither file may appear, and no temporary file stays.
    const b = join(dir, 'b.png');
    await expect(writeFilesAtomically([{ path: b, data: new Uint8Array([4]) }, { path: join(dir, 'missing', 'c.png'), data: new Uint8Array([5]) }])).rejects.toThrow();
    expect((await readdir(dir)).sort()).toEqual(['a.png']);
  });
});
