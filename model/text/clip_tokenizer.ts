// CLIP byte-level BPE, as transformers' slow CLIPTokenizer runs it with ftfy installed — the tokenizer
// STAR feeds its SD-2 text encoder. SD-2's tokenizer/ folder has only vocab.json and merges.txt, and the
// fast tokenizers (tokenizer.json) skip ftfy, so this is written out here.
//
// Pipeline per prompt: cut out the special-token literals (every "!" is one: SD-2's pad token), then
// per remaining piece ftfy → collapse whitespace → lower-case → CLIP regex → UTF-8 bytes mapped to
// printable characters → BPE with "</w>" on the last symbol. Ids: [BOS] + first 75 + [EOS], padded to 77.
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { fixText } from './ftfy.js';
import type { Encoded } from './tokenizer.js';

/** CLIP's context: 77 positions, BOS and EOS included. */
export const CLIP_CONTEXT_LENGTH = 77;

export interface ClipTokenizerOptions {
  /** Length that ids are cut and padded to, BOS and EOS included (STAR: 77). */
  contextLength?: number;
  /** Pad ids with the pad id and the mask with 0 up to contextLength, as STAR does (default true). */
  pad?: boolean;
  /** Where truncation warnings go (default: stderr). */
  onWarning?: (message: string) => void;
}

/** The contents of a CLIP tokenizer folder. */
export interface ClipTokenizerFiles {
  vocab: Record<string, number>;
  /** merges.txt as text, "#version" header line included */
  merges: string;
  specialTokensMap?: Record<string, unknown>;
  tokenizerConfig?: Record<string, unknown>;
}

// Python's regex-module \s (Unicode White_Space): the reference collapses runs of these to one space.
const SPACE = '\\t\\n\\x0b\\x0c\\r \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000';
const SPACE_RUN = new RegExp(`[${SPACE}]+`, 'g');
// str.strip() also strips U+001C–U+001F (ftfy has removed them already; kept for exactness).
const EDGE_SPACE = new RegExp(`^[${SPACE}\\x1c-\\x1f]+|[${SPACE}\\x1c-\\x1f]+$`, 'g');

// The CLIP word regex. Upstream compiles it case-insensitive; on lower-cased text that only changes
// two things, written out here instead: "'ſ" counts as "'s", and U+0345 (which folds to a letter)
// matches nothing and is dropped.
const WORD = new RegExp(
  `<\\|startoftext\\|>|<\\|endoftext\\|>|'[sſ]|'t|'re|'ve|'m|'ll|'d|\\p{L}+|\\p{N}|[^${SPACE}\\p{L}\\p{N}\\u0345]+`,
  'gu',
);

// GPT-2's reversible byte → character map: printable Latin-1 bytes map to themselves, the other 68
// bytes (controls, space, ...) to U+0100 onwards, so no BPE symbol is whitespace.
const BYTE_TO_CHAR: string[] = (() => {
  const printable = (b: number) => (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
  let next = 0x100;
  return Array.from({ length: 256 }, (_, b) => String.fromCharCode(printable(b) ? b : next++));
})();

// transformers reads at most this many merges (49152 vocab − 256 bytes − 2 specials), after line 0.
const MAX_MERGES = 49152 - 256 - 2;
const BPE_CACHE_LIMIT = 50_000;
const SPECIAL_CACHE = ['<|startoftext|>', '<|endoftext|>'];
const utf8 = new TextEncoder();

export class ClipTokenizer {
  readonly kind = 'clip' as const;
  readonly contextLength: number;
  readonly bosId: number;
  readonly eosId: number;
  readonly padId: number;
  private readonly unkId: number | undefined;
  private readonly pad: boolean;
  private readonly warn: (message: string) => void;
  private readonly vocab: Map<string, number>;
  private readonly ranks = new Map<string, number>();
  /** special-token literal → id; these are cut out of the raw text before anything else */
  private readonly specialIds = new Map<string, number>();
  private readonly specialSplit: RegExp | undefined;
  private readonly cache = new Map<string, string[]>();

  static async fromDirectory(dir: string, options: ClipTokenizerOptions = {}): Promise<ClipTokenizer> {
    const vocab = await readJson(path.join(dir, 'vocab.json'), true);
    const merges = await readText(path.join(dir, 'merges.txt'));
    const specialTokensMap = await readJson(path.join(dir, 'special_tokens_map.json'), false);
    const tokenizerConfig = await readJson(path.join(dir, 'tokenizer_config.json'), false);
    return new ClipTokenizer({ vocab: vocab as Record<string, number>, merges, specialTokensMap, tokenizerConfig }, options);
  }

  constructor(files: ClipTokenizerFiles, options: ClipTokenizerOptions = {}) {
    this.contextLength = options.contextLength ?? CLIP_CONTEXT_LENGTH;
    if (this.contextLength < 2) throw new Error('CLIP tokenizer: contextLength must leave room for BOS and EOS');
    this.pad = options.pad ?? true;
    this.warn = options.onWarning ?? ((message) => process.stderr.write(`warning: ${message}\n`));
    this.vocab = new Map(Object.entries(files.vocab));

    // Like transformers: drop line 0 (the "#version" header), keep at most MAX_MERGES; a repeated
    // merge keeps its last rank.
    const lines = files.merges.trim().split('\n').slice(1, MAX_MERGES + 1);
    lines.forEach((line, rank) => {
      const parts = line.trim().split(/\s+/);
      if (parts.length === 2) this.ranks.set(`${parts[0]} ${parts[1]}`, rank);
    });
    for (const token of SPECIAL_CACHE) this.cache.set(token, [token]);

    const special = readSpecialTokens(files.specialTokensMap ?? {}, files.tokenizerConfig ?? {});
    const idOf = (role: string, token: string): number => {
      const id = this.vocab.get(token);
      if (id === undefined) throw new Error(`CLIP tokenizer: ${role} token ${JSON.stringify(token)} is not in vocab.json`);
      return id;
    };
    this.bosId = idOf('bos', special.bos);
    this.eosId = idOf('eos', special.eos);
    this.padId = idOf('pad', special.pad);
    this.unkId = this.vocab.get(special.unk);
    for (const token of [special.bos, special.eos, special.unk, special.pad, ...special.extra]) {
      const id = this.vocab.get(token);
      if (token && id !== undefined) this.specialIds.set(token, id);
    }
    for (const [token, id] of special.withIds) this.specialIds.set(token, id);
    this.specialSplit = splitter([...this.specialIds.keys()]);
  }

  /** The BPE tokens of a prompt, without BOS/EOS and without truncation (transformers' `tokenize`). */
  tokenize(text: string): string[] {
    const tokens: string[] = [];
    for (const piece of this.splitSpecial(text)) {
      if (this.specialIds.has(piece)) tokens.push(piece);
      else tokens.push(...this.tokenizePlain(piece));
    }
    return tokens;
  }

  /** The ids STAR feeds its text encoder: [BOS] + BPE ids (cut to contextLength − 2) + [EOS], then pads. */
  encode(text: string): Encoded {
    const body = this.tokenize(text).map((token) => this.tokenToId(token));
    const room = this.contextLength - 2;
    const truncated = body.length > room;
    if (truncated) {
      this.warn(`CLIP tokenizer: the prompt has ${body.length} tokens; only the first ${room} are kept (context ${this.contextLength} with BOS/EOS)`);
    }
    const ids = [this.bosId, ...body.slice(0, room), this.eosId];
    const length = ids.length;
    const attentionMask = ids.map(() => 1);
    if (this.pad) {
      while (ids.length < this.contextLength) {
        ids.push(this.padId);
        attentionMask.push(0);
      }
    }
    return { ids, attentionMask, truncated, length };
  }

  private tokenToId(token: string): number {
    const id = this.specialIds.get(token) ?? this.vocab.get(token) ?? this.unkId;
    if (id === undefined) throw new Error(`CLIP tokenizer: token ${JSON.stringify(token)} is not in vocab.json and there is no unk token`);
    return id;
  }

  // Leftmost special-token literals split the text; the pieces between them are tokenized on their own
  // (each gets its own ftfy pass). Whitespace next to a literal disappears in the clean-up anyway.
  private splitSpecial(text: string): string[] {
    if (!this.specialSplit) return [text];
    return text.split(this.specialSplit).filter((piece) => piece.length > 0);
  }

  private tokenizePlain(text: string): string[] {
    const clean = fixText(text).replace(SPACE_RUN, ' ').replace(EDGE_SPACE, '').toLowerCase();
    const tokens: string[] = [];
    for (const word of clean.match(WORD) ?? []) {
      let mapped = '';
      for (const byte of utf8.encode(word)) mapped += BYTE_TO_CHAR[byte];
      tokens.push(...this.bpe(mapped));
    }
    return tokens;
  }

  // Merge the adjacent pair of lowest rank, everywhere in the word, until no pair has a rank.
  private bpe(word: string): string[] {
    const cached = this.cache.get(word);
    if (cached) return cached;
    const chars = [...word];
    let symbols = [...chars.slice(0, -1), `${chars[chars.length - 1]}</w>`];
    while (symbols.length > 1) {
      let best = Infinity;
      let first = '';
      let second = '';
      for (let i = 0; i + 1 < symbols.length; i++) {
        const rank = this.ranks.get(`${symbols[i]} ${symbols[i + 1]}`);
        if (rank !== undefined && rank < best) [best, first, second] = [rank, symbols[i]!, symbols[i + 1]!];
      }
      if (best === Infinity) break;
      symbols = mergePair(symbols, first, second);
    }
    if (this.cache.size >= BPE_CACHE_LIMIT) {
      this.cache.clear();
      for (const token of SPECIAL_CACHE) this.cache.set(token, [token]);
    }
    this.cache.set(word, symbols);
    return symbols;
  }
}

/** Replaces every non-overlapping occurrence of (first, second), left to right, by its concatenation. */
function mergePair(symbols: string[], first: string, second: string): string[] {
  const merged: string[] = [];
  for (let i = 0; i < symbols.length; i++) {
    if (symbols[i] === first && symbols[i + 1] === second) {
      merged.push(first + second);
      i++;
    } else {
      merged.push(symbols[i]!);
    }
  }
  return merged;
}

interface SpecialTokens {
  bos: string;
  eos: string;
  unk: string;
  pad: string;
  extra: string[];
  withIds: Array<[string, number]>;
}

// transformers' precedence: special_tokens_map.json over tokenizer_config.json over CLIPTokenizer's
// defaults. A token may be a string or an AddedToken object ({ "content": ... }).
function readSpecialTokens(map: Record<string, unknown>, config: Record<string, unknown>): SpecialTokens {
  const pick = (key: string, fallback: string): string => tokenContent(map[key]) ?? tokenContent(config[key]) ?? fallback;
  const extra = [map['additional_special_tokens'], config['additional_special_tokens']]
    .flatMap((list) => (Array.isArray(list) ? list : []))
    .map(tokenContent)
    .filter((token): token is string => token !== undefined);
  const withIds: Array<[string, number]> = [];
  const decoder = config['added_tokens_decoder'];
  if (decoder && typeof decoder === 'object') {
    for (const [id, token] of Object.entries(decoder)) {
      const content = tokenContent(token);
      if (content !== undefined && Number.isInteger(Number(id))) withIds.push([content, Number(id)]);
    }
  }
  return {
    bos: pick('bos_token', '<|startoftext|>'),
    eos: pick('eos_token', '<|endoftext|>'),
    unk: pick('unk_token', '<|endoftext|>'),
    pad: pick('pad_token', '<|endoftext|>'),
    extra,
    withIds,
  };
}

function tokenContent(value: unknown): string | undefined {
  if (typeof value === 'string') return value;
  if (value && typeof value === 'object' && typeof (value as { content?: unknown }).content === 'string') {
    return (value as { content: string }).content;
  }
  return undefined;
}

/** A regex that splits text around the literals, keeping them (longest first at the same position). */
function splitter(literals: string[]): RegExp | undefined {
  const sorted = literals.filter((t) => t.length > 0).sort((a, b) => b.length - a.length);
  if (sorted.length === 0) return undefined;
  return new RegExp(`(${sorted.map((t) => t.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')).join('|')})`);
}

async function readText(file: string): Promise<string> {
  try {
    return await readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new Error(`CLIP tokenizer: missing file ${file}`);
    throw err;
  }
}

async function readJson(file: string, required: true): Promise<Record<string, unknown>>;
async function readJson(file: string, required: false): Promise<Record<string, unknown> | undefined>;
async function readJson(file: string, required: boolean): Promise<Record<string, unknown> | undefined> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    if (!required) return undefined;
    throw new Error(`CLIP tokenizer: missing file ${file}`);
  }
  try {
    return JSON.parse(text) as Record<string, unknown>;
  } catch (err) {
    throw new Error(`CLIP tokenizer: ${file} is not valid JSON (${(err as Error).message})`);
  }
}
