// `stagevar tokenize DIR "text" [--json]`, run through commander in-process.
import { Command } from 'commander';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { register } from '../../cli/commands/tokenize.js';
import { clipCases, fixtureDir, t5Cases } from './fixtures.js';

async function run(args: string[]): Promise<{ stdout: string; stderr: string }> {
  let stdout = '';
  let stderr = '';
  vi.spyOn(process.stdout, 'write').mockImplementation((chunk: string | Uint8Array) => {
    stdout += String(chunk);
    return true;
  });
  vi.spyOn(process.stderr, 'write').mockImplementation((chunk: string | Uint8Array) => {
    stderr += String(chunk);
    return true;
  });
  const program = new Command().exitOverride();
  register(program);
  await program.parseAsync(['node', 'stagevar', 'tokenize', ...args]);
  return { stdout, stderr };
}

describe('stagevar tokenize', () => {
  afterEach(() => {
    vi.restoreAllMocks();
  });

  it('--json on a CLIP folder prints exactly the 77 padded ids', async () => {
    const fox = clipCases().find((c) => c.name === 'fox')!;
    const { stdout, stderr } = await run([fixtureDir('clip-tokenizer'), fox.text, '--json']);
    expect(JSON.parse(stdout)).toEqual(fox.input_ids);
    expect(stderr).toBe('');
  });

  it('--json on a T5 folder prints the ids with EOS', async () => {
    const hello = t5Cases().find((c) => c.name === 'hello')!;
    const { stdout } = await run([fixtureDir('t5-tokenizer'), hello.text, '--json']);
    expect(JSON.parse(stdout)).toEqual(hello.ids);
  });

  it('--json keeps stdout one JSON array and sends the truncation warning to stderr', async () => {
    const long = clipCases().find((c) => c.name === 'long')!;
    const { stdout, stderr } = await run([fixtureDir('clip-tokenizer'), long.text, '--json']);
    expect(JSON.parse(stdout)).toEqual(long.input_ids);
    expect(stderr).toMatch(/warning: CLIP tokenizer: .*79 tokens/);
  });

  it('without --json prints the kind, the count and the ids', async () => {
    const { stdout } = await run([fixtureDir('t5-tokenizer'), 'a cat']);
    expect(stdout).toBe('t5: 4 tokens\n3 9 1712 1\n');
  });

  it('fails with the name of the missing file', async () => {
    await expect(run(['/nonexistent/tokenizer', 'x'])).rejects.toThrow('/nonexistent/tokenizer');
  });
});
