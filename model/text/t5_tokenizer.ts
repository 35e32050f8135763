// The T5 tokenizer of Infinity (flan-t5-xl's T5TokenizerFast), run from the model's own tokenizer.json by
// @huggingface/tokenizers: SentencePiece Unigram with the Precompiled normalizer, and a post-processor
// that appends </s>. Infinity tokenizes with max_length=512 and truncation; we return the real tokens
// only (no padding), since its encoder output is cut back to the real tokens anyway.
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { Tokenizer } from '@huggingface/tokenizers';
import type { Encoded } from './tokenizer.js';

/** Infinity's T5 max_length. */
export const T5_MAX_LENGTH = 512;

export interface T5TokenizerOptions {
  /** Token cap, EOS included (Infinity: 512). */
  maxLength?: number;
  /** Where truncation warnings go (default: stderr). */
  onWarning?: (message: string) => void;
}

// The part of @huggingface/tokenizers' Tokenizer used here. Its .d.ts files import each other without
// file extensions, which NodeNext resolution cannot follow, so the class reaches us typed as `any`.
interface HfTokenizer {
  encode(text: string, options?: { add_special_tokens?: boolean }): { ids: number[]; tokens: string[] };
}

export class T5Tokenizer {
  readonly kind = 't5' as const;
  readonly maxLength: number;
  private readonly tokenizer: HfTokenizer;
  private readonly warn: (message: string) => void;

  static async fromDirectory(dir: string, options: T5TokenizerOptions = {}): Promise<T5Tokenizer> {
    const tokenizerJson = await readJson(path.join(dir, 'tokenizer.json'), true);
    // tokenizer_config.json only refines decoding and added-token handling; a bare tokenizer.json works.
    const config = (await readJson(path.join(dir, 'tokenizer_config.json'), false)) ?? {};
    return new T5Tokenizer(tokenizerJson, config, options);
  }

  constructor(tokenizerJson: object, tokenizerConfig: object = {}, options: T5TokenizerOptions = {}) {
    this.tokenizer = new Tokenizer(tokenizerJson, tokenizerConfig) as HfTokenizer;
    this.maxLength = options.maxLength ?? T5_MAX_LENGTH;
    this.warn = options.onWarning ?? ((message) => process.stderr.write(`warning: ${message}\n`));
  }

  /** Token ids with the EOS the post-processor appends; cut like transformers' truncation=True. */
  encode(text: string): Encoded {
    const withSpecial = this.tokenizer.encode(text).ids;
    const body = this.tokenizer.encode(text, { add_special_tokens: false }).ids;
    // The post-processor only appends (T5: "$A </s>"); truncation keeps that suffix and cuts the text.
    const suffix = withSpecial.slice(body.length);
    if (!body.every((id, i) => withSpecial[i] === id)) {
      throw new Error('T5 tokenizer: the post-processor of tokenizer.json adds tokens in front; only appended tokens are supported');
    }
    const room = this.maxLength - suffix.length;
    if (room < 1) throw new Error(`T5 tokenizer: maxLength ${this.maxLength} leaves no room for text`);
    const truncated = body.length > room;
    if (truncated) {
      this.warn(`T5 tokenizer: the prompt has ${withSpecial.length} tokens; only the first ${this.maxLength} are kept (EOS included)`);
    }
    const ids = [...body.slice(0, room), ...suffix];
    return { ids, truncated, length: ids.length };
  }

  /** The token strings of a prompt (pieces such as "▁cat"), EOS included, without truncation. */
  tokenize(text: string): string[] {
    return this.tokenizer.encode(text).tokens;
  }
}

async function readJson(file: string, required: true): Promise<object>;
async function readJson(file: string, required: false): Promise<object | undefined>;
async function readJson(file: string, required: boolean): Promise<object | undefined> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    if (!required) return undefined;
    throw new Error(`T5 tokenizer: missing file ${file}`);
  }
  try {
    return JSON.parse(text) as object;
  } catch (err) {
    throw new Error(`T5 tokenizer: ${file} is not valid JSON (${(err as Error).message})`);
  }
}
