// Runs CLI commands in-process as bin/stagevar.js does: stderr captured, a thrown error printed as
// "stagevar: message" with exit code 1, commander's usage errors with their own code.
import { mkdtemp, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { Command } from 'commander';
import { expect, vi } from 'vitest';

export async function runCli(registers: ReadonlyArray<(program: Command) => void>, args: string[]): Promise<{ code: number; stderr: string }> {
  const program = new Command().name('stagevar').exitOverride();
  for (const register of registers) register(program);
  const err: string[] = [];
  const spy = vi.spyOn(process.stderr, 'write').mockImplementation((chunk: unknown) => {
    err.push(String(chunk));
    return true;
  });
  program.configureOutput({ writeErr: (s) => err.push(s), writeOut: () => undefined });
  let code = 0;
  try {
    await program.parseAsync(['node', 'stagevar', ...args]);
  } catch (e) {
    const ce = e as { code?: string; exitCode?: number; message?: string };
    code = ce.code?.startsWith('commander.') ? (ce.exitCode ?? 1) : 1;
    if (!ce.code?.startsWith('commander.')) err.push(`stagevar: ${ce.message}\n`);
  } finally {
    spy.mockRestore();
  }
  return { code, stderr: err.join('') };
}

/** A refused command: exit code 1, the message on stderr, and nothing written into a fresh output folder. */
export async function expectRefusal(cli: (args: string[]) => Promise<{ code: number; stderr: string }>, scratch: string, args: (out: string) => string[], message: RegExp): Promise<void> {
  const folder = await mkdtemp(join(scratch, 'bad-'));
  const r = await cli(args(join(folder, 'out.png')));
  expect(r.code).toBe(1);
  expect(r.stderr).toMatch(message);
  expect(await readdir(folder)).toEqual([]);
}
