import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { decode } from 'fast-png';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { benchE2E, scaleFlops } from '../../bench/e2e.js';
import { demoCommand } from '../../cli/commands/demo.js';
import { Gpu } from '../../engine/device.js';

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'stagevar-demo-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('stagevar demo', () => {
  it('writes a 256×256 PNG from the built-in random model in well under 30 s, the same bytes for the same seed', async () => {
    const out = join(dir, 'demo.png');
    const t0 = performance.now();
    const result = await demoCommand({ out, prompt: 'a lighthouse at dawn', seed: '0', size: '256', ratio: '1:1', cfg: '3', topP: '0.97', quiet: true });
    const seconds = (performance.now() - t0) / 1000;
    console.log(`demo: ${seconds.toFixed(1)} s total; scales ${result.stats.scales.map((s) => s.ms.toFixed(0)).join(' ')} ms; decode ${result.stats.decodeMs.toFixed(0)} ms`);
    expect(seconds).toBeLessThan(30);
    const png = decode(await readFile(out));
    expect([png.width, png.height, png.channels, png.depth]).toEqual([256, 256, 3, 8]);
    // A picture, not a flat field: the pixel values spread.
    const values = new Set(png.data);
    expect(values.size).toBeGreaterThan(50);

    const again = join(dir, 'again.png');
    await demoCommand({ out: again, prompt: 'a lighthouse at dawn', seed: '0', size: '256', ratio: '1:1', cfg: '3', topP: '0.97', quiet: true });
    expect(Buffer.compare(await readFile(out), await readFile(again))).toBe(0);
  });
});

describe('bench/e2e', () => {
  it('splits a generation into text, conditioning, every scale, decode and total, with the peak GPU memory', async () => {
    const gpu = await Gpu.create();
    try {
      const rows = await benchE2E(gpu, { warmup: 0, runs: 1 });
      expect(rows.map((r) => r.stage)).toEqual(['text', 'conditioning', ...[0, 1, 2, 3, 4, 5, 6].map((s) => `scale ${s}`), 'transformer', 'decode', 'total']);
      expect(rows.every((r) => r.kernel === 'e2e' && r.ms >= 0 && r.peakBytes > 1_000_000)).toBe(true);
      expect(rows.find((r) => r.stage === 'scale 6')!.gflops).toBeGreaterThan(0);
      expect(rows.find((r) => r.stage === 'scale 6')!.shape).toBe('demo 256 1:1 scale 6 16×16');
    } finally {
      gpu.destroy();
    }
  });

  it('counts transformer FLOPs as spec §9.2 does (2B, 1024², last scale: 26,724 GFLOP + the head)', () => {
    const gflops = scaleFlops({ width: 2048, depth: 32, bitsPerToken: 32, ffnHidden: 8192 }, 1, 4096, 10521, 32) / 1e9;
    const head = (2 * 4096 * 2048 * 64) / 1e9;
    expect(Math.abs(gflops - head - 26724.4) / 26724.4).toBeLessThan(1e-3);
  });
});
