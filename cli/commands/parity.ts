// `stagevar parity DIR`: runs a reference fixture through the engine and compares every recorded tensor.
import type { Command } from 'commander';
import { Gpu } from '../../engine/device.js';
import { registerParityRunner, registerPrecisionRunner, runParity, type ParityPrecision } from '../../model/parity/fixtures.js';
import { runStageVarParity } from '../../sampler/stagevar_parity.js';
import type { ParityEntry } from '../../model/parity/measure.js';

// StageVAR's replay lives in sampler/ (it drives the policy table), above model/: registered from here.
registerParityRunner('stagevar', (gpu, dir, onEntry) => runStageVarParity(gpu, dir, onEntry));
registerPrecisionRunner('stagevar', (gpu, dir, precision) => runStageVarParity(gpu, dir, undefined, undefined, precision));

function dtypeOption(flag: string, value: string | undefined): 'f32' | 'f16' | undefined {
  if (value === undefined || value === 'f32' || value === 'f16') return value;
  throw new Error(`${flag} must be f32 or f16, got "${value}"`);
}

export function register(program: Command): void {
  program
    .command('parity')
    .argument('<dir>', 'fixture folder (infinity, infinity 8B, stagevar, star, t5 or clip kind)')
    .description('compare the engine with a reference fixture: one line per tensor, max|error| / max|reference|; exit 0 only if all pass')
    .option('--json', 'print the results as JSON')
    .option('--precision <dtype>', 'infinity, stagevar and star fixtures: activation dtype f32 (reference) or f16 (needs shader-f16); judged against 1e-2 instead of 1e-3')
    .option('--kv-cache <dtype>', 'infinity, stagevar and star fixtures: KV cache dtype f32 or f16 (f16: judged against 1e-2)')
    .action(async (dir: string, opts: { json?: boolean; precision?: string; kvCache?: string }) => {
      const precision: ParityPrecision = { activations: dtypeOption('--precision', opts.precision), cacheDtype: dtypeOption('--kv-cache', opts.kvCache) };
      const gpu = await Gpu.create();
      try {
        const print = (e: ParityEntry) => {
          if (!opts.json) process.stdout.write(`${e.error <= e.tol ? 'ok  ' : 'FAIL'} ${e.key.padEnd(28)} ${e.error.toExponential(3)}  (tol ${e.tol})\n`);
        };
        const seen = new Set<string>();
        const { kind, entries } = await runParity(
          gpu,
          dir,
          (e) => {
            seen.add(e.key);
            print(e);
          },
          precision,
        );
        for (const e of entries) if (!seen.has(e.key)) print(e);
        const failed = entries.filter((e) => !(e.error <= e.tol));
        if (opts.json) process.stdout.write(JSON.stringify({ kind, entries, passed: failed.length === 0 }, null, 2) + '\n');
        else {
          const worst = entries.reduce((w, e) => (e.error > w.error || Number.isNaN(e.error) ? e : w), entries[0] ?? { key: '-', error: 0, tol: 0 });
          const label = precision.activations === 'f16' || precision.cacheDtype === 'f16' ? ` (activations ${precision.activations ?? 'f32'}, KV cache ${precision.cacheDtype ?? 'f32'})` : '';
          process.stdout.write(`${kind}${label}: ${entries.length - failed.length}/${entries.length} tensors within tolerance; worst ${worst.key} ${worst.error.toExponential(3)}\n`);
        }
        if (entries.length === 0 || failed.length > 0) process.exitCode = 1;
      } finally {
        gpu.destroy();
      }
    });
}
