// `stagevar convert IN OUT.safetensors`: PyTorch checkpoint (or safetensors) → safetensors, streamed
// with bounded memory and written atomically; progress goes to stderr so stdout stays clean.
import type { Command } from 'commander';
import { convertCheckpoint, type ConvertProgress } from '../../model/weights/convert.js';
import { parseFloatDtype } from '../../model/weights/dtype_convert.js';

interface ConvertFlags {
  key?: string;
  dtype?: string;
  only?: string[];
  quiet?: boolean;
}

export function register(program: Command): void {
  program
    .command('convert')
    .description('convert a .pth / .safetensors checkpoint to .safetensors (streamed, atomic)')
    .argument('<input>', '.pth zip checkpoint, .safetensors file, index json or folder')
    .argument('<output>', 'the .safetensors file to write')
    .option('--key <path>', 'take this sub-dictionary, e.g. vae or trainer.var_wo_ddp; names lose the prefix')
    .option('--dtype <dtype>', 'store float tensors as f32, f16 or bf16 (default: keep each dtype)')
    .option('--only <prefix...>', 'keep only tensors whose name (after --key) starts with one of these prefixes')
    .option('--quiet', 'no progress output')
    .action(async (input: string, output: string, flags: ConvertFlags) => {
      const progress = flags.quiet ? undefined : progressPrinter();
      const result = await convertCheckpoint(input, output, {
        ...(flags.key !== undefined ? { key: flags.key } : {}),
        ...(flags.only !== undefined ? { only: flags.only } : {}),
        ...(flags.dtype !== undefined ? { dtype: parseFloatDtype(flags.dtype) } : {}),
        ...(progress ? { onProgress: progress.update } : {}),
      });
      progress?.done();
      const dtypes = Object.entries(result.dtypes).map(([d, n]) => `${n} ${d}`).join(', ');
      process.stderr.write(`wrote ${output}: ${result.tensors} tensors (${dtypes}), ${formatBytes(result.bytesWritten)}\n`);
    });
}

function formatBytes(bytes: number): string {
  if (bytes >= 1e9) return `${(bytes / 1e9).toFixed(2)} GB`;
  if (bytes >= 1e6) return `${(bytes / 1e6).toFixed(1)} MB`;
  return `${bytes} B`;
}

/** One status line, rewritten in place on a terminal and printed every few seconds otherwise. */
function progressPrinter(): { update: (p: ConvertProgress) => void; done: () => void } {
  const tty = process.stderr.isTTY === true;
  const interval = tty ? 200 : 5000;
  let last = 0;
  let printed = false;
  return {
    update: (p) => {
      const now = Date.now();
      if (now - last < interval) return;
      last = now;
      const percent = p.totalBytes > 0 ? ((100 * p.bytesWritten) / p.totalBytes).toFixed(1) : '100.0';
      const line = `convert: ${percent}%  ${formatBytes(p.bytesWritten)} / ${formatBytes(p.totalBytes)}  tensor ${p.index + 1}/${p.count} ${p.tensor}`;
      process.stderr.write(tty ? `\r\x1b[K${line}` : `${line}\n`);
      printed = true;
    },
    done: () => {
      if (tty && printed) process.stderr.write('\r\x1b[K');
    },
  };
}
