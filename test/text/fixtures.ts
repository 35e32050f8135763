// Locates the shared tokenizer fixtures (read in place, never copied) and fails loudly when absent.
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const repoRoot = fileURLToPath(new URL('../..', import.meta.url));
export const fixturesDir = path.resolve(repoRoot, '../shared/fixtures');

export function fixtureDir(name: string): string {
  const dir = path.join(fixturesDir, name);
  if (!existsSync(dir)) throw new Error(`fixture folder missing: ${dir} (the shared fixtures must sit beside the repo)`);
  return dir;
}

export function readFixtureJson<T>(name: string, file: string): T {
  return JSON.parse(readFileSync(path.join(fixtureDir(name), file), 'utf8')) as T;
}

export interface ClipCase {
  name: string;
  text: string;
  input_ids: number[];
  attention_mask: number[];
  length: number;
  hf_tokens: string[];
}

export interface T5Case {
  name: string;
  text: string;
  ids: number[];
  tokens: string[];
  ids_max512?: number[];
}

export const clipCases = (): ClipCase[] => readFixtureJson<{ prompts: ClipCase[] }>('clip-tokenizer', 'expected.json').prompts;
export const t5Cases = (): T5Case[] => readFixtureJson<{ cases: T5Case[] }>('t5-tokenizer', 'expected.json').cases;
