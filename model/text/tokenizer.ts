// loadTokenizer(dir): picks the tokenizer from what the folder holds.
//   tokenizer.json           → T5 (Infinity), run by @huggingface/tokenizers
//   vocab.json + merges.txt  → CLIP BPE (STAR / SD-2), our port of the slow CLIPTokenizer with ftfy
// A folder with all three is CLIP when its tokenizer_config.json names a CLIP tokenizer class (the
// reference for CLIP is the slow tokenizer, not tokenizer.json). A model folder whose tokenizer sits in
// a `tokenizer/` subfolder (STAR's CLIP/, diffusers layouts) is accepted too.
import { readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { ClipTokenizer, type ClipTokenizerOptions } from './clip_tokenizer.js';
import { T5Tokenizer, type T5TokenizerOptions } from './t5_tokenizer.js';

export { ClipTokenizer, CLIP_CONTEXT_LENGTH, type ClipTokenizerOptions } from './clip_tokenizer.js';
export { T5Tokenizer, T5_MAX_LENGTH, type T5TokenizerOptions } from './t5_tokenizer.js';

export type TokenizerKind = 'clip' | 't5';

/** One tokenized prompt. */
export interface Encoded {
  /** Token ids the text encoder takes: CLIP padded to its context (77), T5 real tokens only. */
  ids: number[];
  /** 1 on real tokens, 0 on padding (CLIP only; T5 output has no padding). */
  attentionMask?: number[];
  /** True when the prompt was longer than the cap and its end was dropped (a warning is also emitted). */
  truncated: boolean;
  /** Number of real tokens, special tokens included (CLIP: BOS..EOS; T5: ids.length). */
  length: number;
}

export type TextTokenizer = ClipTokenizer | T5Tokenizer;

export interface LoadTokenizerOptions {
  clip?: Omit<ClipTokenizerOptions, 'onWarning'>;
  t5?: Omit<T5TokenizerOptions, 'onWarning'>;
  /** Where truncation warnings go (default: stderr). */
  onWarning?: (message: string) => void;
}

export interface DetectedTokenizer {
  kind: TokenizerKind;
  /** the folder that holds the tokenizer files (dir itself or dir/tokenizer) */
  dir: string;
}

/** Loads the tokenizer of a model folder (see the file comment for how the kind is chosen). */
export async function loadTokenizer(dir: string, options: LoadTokenizerOptions = {}): Promise<TextTokenizer> {
  const found = await detectTokenizer(dir);
  const onWarning = options.onWarning;
  return found.kind === 'clip'
    ? ClipTokenizer.fromDirectory(found.dir, { ...options.clip, ...(onWarning && { onWarning }) })
    : T5Tokenizer.fromDirectory(found.dir, { ...options.t5, ...(onWarning && { onWarning }) });
}

export async function detectTokenizer(dir: string): Promise<DetectedTokenizer> {
  const kind = await detectIn(dir);
  if (kind) return { kind, dir };
  const nested = path.join(dir, 'tokenizer');
  const nestedKind = (await isDirectory(nested)) ? await detectIn(nested) : undefined;
  if (nestedKind) return { kind: nestedKind, dir: nested };
  throw new Error(`no tokenizer in ${dir}: expected tokenizer.json (T5) or vocab.json + merges.txt (CLIP)`);
}

async function detectIn(dir: string): Promise<TokenizerKind | undefined> {
  if (!(await isDirectory(dir))) throw new Error(`tokenizer folder not found: ${dir}`);
  const [json, vocab, merges] = await Promise.all(
    ['tokenizer.json', 'vocab.json', 'merges.txt'].map((name) => isFile(path.join(dir, name))),
  );
  if (vocab && merges && (!json || (await namesClipClass(dir)))) return 'clip';
  if (json) return 't5';
  // Half a CLIP tokenizer: name the file that is missing.
  if (vocab !== merges) {
    const missing = path.join(dir, vocab ? 'merges.txt' : 'vocab.json');
    throw new Error(`CLIP tokenizer: missing file ${missing}`);
  }
  return undefined;
}

async function namesClipClass(dir: string): Promise<boolean> {
  try {
    const config = JSON.parse(await readFile(path.join(dir, 'tokenizer_config.json'), 'utf8')) as { tokenizer_class?: unknown };
    return typeof config.tokenizer_class === 'string' && config.tokenizer_class.startsWith('CLIPTokenizer');
  } catch {
    return false;
  }
}

async function isDirectory(p: string): Promise<boolean> {
  return (await stat(p).catch(() => undefined))?.isDirectory() ?? false;
}

async function isFile(p: string): Promise<boolean> {
  return (await stat(p).catch(() => undefined))?.isFile() ?? false;
}
