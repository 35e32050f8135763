// Entry point of the `stagevar` command. Each command lives in cli/commands/<name>.ts and exports
// `register(program)`; this file only assembles them, so commands stay thin and independent.
import { Command } from 'commander';
import { registry } from './commands/index.js';

export async function main(argv: string[]): Promise<void> {
  const program = new Command();
  program
    .name('stagevar')
    .description('WebGPU (Dawn) inference for Infinity and STAR next-scale text-to-image models, with StageVAR acceleration')
    .version('0.1.0')
    .showHelpAfterError()
    .exitOverride();
  for (const register of registry) register(program);
  try {
    await program.parseAsync(argv);
  } catch (err) {
    // commander throws CommanderError for --help/--version (exit code 0) and for usage errors.
    const code = (err as { exitCode?: number }).exitCode;
    if (typeof code === 'number' && (err as { code?: string }).code?.startsWith('commander.')) {
      process.exitCode = code;
      return;
    }
    throw err;
  }
}
