// `stagevar parity DIR`: runs a reference fixture through the engine and compares every recorded tensor.
import type { Command } from 'commander';
import { Gpu } from '../../engine/device.js';
import { registerParityRunner, runParity } from '../../model/parity/fixtures.js';
import { runStageVarParity } from '../../sampler/stagevar_parity.js';
import type { ParityEntry } from '../../model/parity/measure.js';

// StageVAR's replay lives in sampler/ (it drives the policy table), above model/: registered from here.
registerParityRunner('stagevar', (gpu, dir, onEntry) => runStageVarParity(gpu, dir, onEntry));

export function register(program: Command): void {
  program
    .command('parity')
    .argument('<dir>', 'fixture folder (infinity, infinity 8B, stagevar, star, t5 or clip kind)')
    .description('compare the engine with a reference fixture: one line per tensor, max|error| / max|reference|; exit 0 only if all pass')
    .option('--json', 'print the results as JSON')
    .action(async (dir: string, opts: { json?: boolean }) => {
      const gpu = await Gpu.create();
      try {
        const print = (e: ParityEntry) => {
          if (!opts.json) process.stdout.write(`${e.error <= e.tol ? 'ok  ' : 'FAIL'} ${e.key.padEnd(28)} ${e.error.toExponential(3)}  (tol ${e.tol})\n`);
        };
        const seen = new Set<string>();
        const { kind, entries } = await runParity(gpu, dir, (e) => {
          seen.add(e.key);
          print(e);
        });
        for (const e of entries) if (!seen.has(e.key)) print(e);
        const failed = entries.filter((e) => !(e.error <= e.tol));
        if (opts.json) process.stdout.write(JSON.stringify({ kind, entries, passed: failed.length === 0 }, null, 2) + '\n');
        else process.stdout.write(`${kind}: ${entries.length - failed.length}/${entries.length} tensors within tolerance\n`);
        if (entries.length === 0 || failed.length > 0) process.exitCode = 1;
      } finally {
        gpu.destroy();
      }
    });
}
