// `stagevar tokenize DIR "text" [--json]`: the token ids a model's text encoder gets for a prompt.
// The tokenizer kind comes from the folder (see model/text/tokenizer.ts). Warnings go to stderr, so
// with --json stdout holds exactly one JSON array.
import type { Command } from 'commander';
import { loadTokenizer } from '../../model/text/tokenizer.js';

export function register(program: Command): void {
  program
    .command('tokenize')
    .description('print the token ids of a prompt (T5: tokenizer.json; CLIP: vocab.json + merges.txt, padded to 77)')
    .argument('<dir>', 'tokenizer folder, or a model folder with a tokenizer/ subfolder')
    .argument('<text>', 'the prompt')
    .option('--json', 'print only a JSON array of ids on stdout')
    .action(async (dir: string, text: string, options: { json?: boolean }) => {
      const tokenizer = await loadTokenizer(dir);
      const encoded = tokenizer.encode(text);
      if (options.json) {
        process.stdout.write(`${JSON.stringify(encoded.ids)}\n`);
        return;
      }
      const padding = encoded.ids.length > encoded.length ? `, padded to ${encoded.ids.length}` : '';
      process.stdout.write(`${tokenizer.kind}: ${encoded.length} tokens${padding}${encoded.truncated ? ' (truncated)' : ''}\n`);
      process.stdout.write(`${encoded.ids.join(' ')}\n`);
    });
}
