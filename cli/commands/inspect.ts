// `stagevar inspect FILE|DIR`: tensor count, dtypes, bytes and the detected architecture. Opening
// validates every data range against the file size, exactly as loading does, so a truncated or
// corrupt file fails here too (non-zero exit).
import type { Command } from 'commander';
import { inspectWeights, type WeightSetReport } from '../../model/arch.js';

interface InspectFlags {
  json?: boolean;
  key?: string;
}

export function register(program: Command): void {
  program
    .command('inspect')
    .description('list tensor count, dtypes, bytes and the detected model architecture of weights')
    .argument('<path>', 'a .safetensors / .pth file, an index json, or a folder')
    .option('--json', 'print JSON (keys: kind, depth, width, heads, chunks, …)')
    .option('--key <path>', 'inspect only this sub-dictionary, e.g. vae or trainer.var_wo_ddp')
    .action(async (path: string, flags: InspectFlags) => {
      process.stdout.write(await inspectCommand(path, flags));
    });
}

/** The command's output; `--json` gives one object, or `{path, components}` for a multi-model folder. */
export async function inspectCommand(path: string, flags: InspectFlags = {}): Promise<string> {
  const reports = await inspectWeights(path, flags.key !== undefined ? { key: flags.key } : {});
  if (flags.json) {
    const objects = reports.map(reportJson);
    const value = objects.length === 1 ? objects[0] : { path, components: objects };
    return JSON.stringify(value, null, 2) + '\n';
  }
  return reports.map(reportText).join('\n');
}

function reportJson(report: WeightSetReport): Record<string, unknown> {
  const { architecture, ...rest } = report;
  return { ...architecture, ...rest };
}

function formatBytes(bytes: number): string {
  if (bytes >= 1e9) return `${(bytes / 1e9).toFixed(2)} GB`;
  if (bytes >= 1e6) return `${(bytes / 1e6).toFixed(2)} MB`;
  if (bytes >= 1e3) return `${(bytes / 1e3).toFixed(1)} kB`;
  return `${bytes} B`;
}

function reportText(report: WeightSetReport): string {
  const dtypes = Object.entries(report.dtypes)
    .map(([dtype, d]) => `${dtype} ${d.tensors} (${formatBytes(d.bytes)})`)
    .join(', ');
  const { kind, ...fields } = report.architecture;
  const lines = [
    `${report.path}`,
    `  format:  ${report.format}${report.files.length > 1 ? ` (${report.files.length} files)` : ''}`,
    `  tensors: ${report.tensors}, ${formatBytes(report.bytes)}: ${dtypes || 'none'}`,
    `  kind:    ${kind}`,
    ...Object.entries(fields).map(([k, v]) => `  ${`${k}:`.padEnd(18)} ${Array.isArray(v) ? v.join(', ') : String(v)}`),
  ];
  return lines.join('\n') + '\n';
}
