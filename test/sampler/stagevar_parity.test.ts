import { afterAll, describe, expect, it } from 'vitest';
import { detectFixtureKind, registerParityRunner, registerPrecisionRunner, runParity } from '../../model/parity/fixtures.js';
import { F16_TOL, type ParityEntry } from '../../model/parity/measure.js';
import { runStageVarParity } from '../../sampler/stagevar_parity.js';
import { fixture, releaseTestGpu, testGpu } from '../helpers.js';

afterAll(releaseTestGpu);

// The one long test (~20–50 s on lavapipe): 13-scale 1M schedule of the tiny model, teacher-forced, with the
// fixture's recorded I and Q injected at scale 10. Through `runParity`, as `stagevar parity DIR` runs it,
// with the runner registered the way the CLI registers it.
describe('stagevar-tiny parity (official StageVAR code, f32)', () => {
  it('matches every recorded key within 1e-3', async () => {
    const gpu = await testGpu();
    const t0 = performance.now();
    const dir = fixture('stagevar-tiny');
    expect(detectFixtureKind(dir)).toBe('stagevar');
    registerParityRunner('stagevar', runStageVarParity);
    const streamed: string[] = [];
    const { kind, entries } = await runParity(gpu, dir, (e: ParityEntry) => streamed.push(e.key));
    expect(kind).toBe('stagevar');
    expect(streamed).toEqual(entries.map((e) => e.key));
    const lines = entries.map((e) => `  ${e.key.padEnd(14)} ${e.error.toExponential(2)}`);
    console.log(`stagevar-tiny (${((performance.now() - t0) / 1000).toFixed(1)} s): max|err|/max|ref| per key\n${lines.join('\n')}`);
    const keys = entries.map((e) => e.key);
    expect(keys).toEqual([
      ...Array.from({ length: 11 }, (_, s) => `logits.${s}`),
      'chunk_in.0', 'chunk_in.1', 'rp.0.out', 'rp.1.out', 'chunk_prev.0', 'chunk_prev.1', 'chunk_out.0', 'chunk_out.1', 'latent',
    ]);
    for (const e of entries) expect(e.error, e.key).toBeLessThan(e.tol);
  });
});

// The f16 paths through the same replay (`stagevar parity DIR --precision f16 --kv-cache f16`): every key within
// F16_TOL (measured worst: logits 4.8e-4), and the f16 run really differs from the f32 one.
describe('stagevar-tiny parity on the f16 paths', () => {
  it('f16 activations + f16 KV cache: every key within 1e-2, not the f32 result', async () => {
    const gpu = await testGpu();
    registerPrecisionRunner('stagevar', (g, dir, precision) => runStageVarParity(g, dir, undefined, undefined, precision));
    const { entries } = await runParity(gpu, fixture('stagevar-tiny'), undefined, { activations: 'f16', cacheDtype: 'f16' });
    expect(entries).toHaveLength(20);
    for (const e of entries) {
      expect(e.tol, e.key).toBe(F16_TOL);
      expect(e.error, e.key).toBeLessThan(F16_TOL);
    }
    expect(Math.max(...entries.filter((e) => e.key.startsWith('logits.')).map((e) => e.error))).toBeGreaterThan(1e-5);
  });
});
