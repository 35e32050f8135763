// `stagevar info`: the adapter the engine would use, its limits and features, and which kernel set it runs.
import { afterEach, describe, expect, it, vi } from 'vitest';
import { register } from '../../cli/commands/info.js';
import { runCli } from './run_cli.js';

afterEach(() => {
  vi.restoreAllMocks();
});

async function info(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const out: string[] = [];
  vi.spyOn(process.stdout, 'write').mockImplementation((chunk: unknown) => (out.push(String(chunk)), true));
  const r = await runCli([register], ['info', ...args]);
  return { ...r, stdout: out.join('') };
}

describe('stagevar info', () => {
  it('reports lavapipe as a software adapter on the CPU-tuned kernels, with its limits', async () => {
    const r = await info(['--json']);
    expect(r.code, r.stderr).toBe(0);
    const report = JSON.parse(r.stdout);
    expect(report.adapter.software).toBe(true);
    expect(report.tuning).toBe(process.env.STAGEVAR_KERNELS || 'cpu');
    expect(report.subgroupMinSize).toBeGreaterThanOrEqual(1);
    expect(report.features).toContain('shader-f16');
    expect(report.limits.maxStorageBufferBindingSize).toBeGreaterThanOrEqual(128 * 2 ** 20);
    const text = await info([]);
    expect(text.stdout).toMatch(report.tuning === 'cpu' ? /kernels: +CPU-tuned.*software adapter/ : /kernels: +GPU-tuned/);
  });
});
