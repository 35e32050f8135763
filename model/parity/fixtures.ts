// Tells fixture folders apart from their files, in the documented order, and runs the matching parity
// check. One entry point for every fixture kind (`stagevar parity DIR`).

import { closeSync, existsSync, openSync, readFileSync, readSync } from 'node:fs';
import { join } from 'node:path';
import type { Gpu } from '../../engine/device.js';
import { runInfinityParity } from '../infinity/parity.js';
import { runStarParity } from '../star/parity.js';
import { runClipParity, runT5Parity } from '../text/text_parity.js';
import type { ParityEntry } from './measure.js';

export type FixtureKind = 'clip' | 't5' | 'stagevar' | 'star' | 'infinity' | 'infinity-8b';

export const FIXTURE_KINDS: readonly string[] = [
  'clip (text_encoder/config.json with model_type clip_text_model)',
  't5 (config.json with model_type t5 + model.safetensors.index.json)',
  'stagevar (config.json with rp_scales)',
  'star (config.json with patch_nums)',
  'infinity (config.json with scale_schedule + block_chunks.* weights; apply_spatial_patchify → 8B form)',
];

function readJson(path: string): Record<string, unknown> | null {
  if (!existsSync(path)) return null;
  try {
    return JSON.parse(readFileSync(path, 'utf8')) as Record<string, unknown>;
  } catch (err) {
    throw new Error(`${path}: not valid JSON (${(err as Error).message})`);
  }
}

/** Does `model.safetensors` hold any `block_chunks.` tensor? Reads the header only. */
function hasBlockChunks(dir: string): boolean {
  const path = join(dir, 'model.safetensors');
  if (!existsSync(path)) return false;
  const fd = openSync(path, 'r');
  try {
    const len = Buffer.alloc(8);
    if (readSync(fd, len, 0, 8, 0) < 8) return false;
    const n = Math.min(Number(len.readBigUInt64LE(0)), 100_000_000);
    const header = Buffer.alloc(n);
    readSync(fd, header, 0, n, 8);
    return header.toString('utf8').includes('"block_chunks.');
  } finally {
    closeSync(fd);
  }
}

export function detectFixtureKind(dir: string): FixtureKind {
  if (!existsSync(dir)) throw new Error(`parity: folder not found: ${dir}`);
  const clip = readJson(join(dir, 'text_encoder', 'config.json'));
  if (clip?.model_type === 'clip_text_model') return 'clip';
  const config = readJson(join(dir, 'config.json'));
  if (config?.model_type === 't5' && existsSync(join(dir, 'model.safetensors.index.json'))) return 't5';
  if (config && 'rp_scales' in config) return 'stagevar';
  if (config && 'patch_nums' in config) return 'star';
  if (config && 'scale_schedule' in config && hasBlockChunks(dir)) return config.apply_spatial_patchify ? 'infinity-8b' : 'infinity';
  throw new Error(`parity: ${dir} is not a fixture folder of a known kind. Known kinds, checked in this order:\n  ${FIXTURE_KINDS.join('\n  ')}`);
}

export type ParityRunner = (gpu: Gpu, dir: string, onEntry?: (e: ParityEntry) => void) => Promise<ParityEntry[]>;

const runners = new Map<FixtureKind, ParityRunner>([
  ['clip', (gpu, dir) => runClipParity(gpu, dir)],
  ['t5', (gpu, dir) => runT5Parity(gpu, dir)],
  ['star', (gpu, dir, onEntry) => runStarParity(gpu, dir, { onEntry })],
  ['infinity', (gpu, dir) => runInfinityParity(gpu, dir)],
  ['infinity-8b', (gpu, dir) => runInfinityParity(gpu, dir)],
]);

/** Storage precision of a parity run (`stagevar parity --precision / --kv-cache`); absent means f32. */
export interface ParityPrecision {
  activations?: 'f32' | 'f16';
  cacheDtype?: 'f32' | 'f16';
}

/** Runners of the kinds that also run reduced precision (the Infinity and STAR transformers' f16 paths;
 *  the StageVAR replay, which lives in sampler/, registers its own). */
const precisionRunners = new Map<FixtureKind, (gpu: Gpu, dir: string, precision: ParityPrecision) => Promise<ParityEntry[]>>([
  ['infinity', (gpu, dir, precision) => runInfinityParity(gpu, dir, precision)],
  ['infinity-8b', (gpu, dir, precision) => runInfinityParity(gpu, dir, precision)],
  ['star', (gpu, dir, precision) => runStarParity(gpu, dir, precision)],
]);

/** Registers the runner of a fixture kind (model families add theirs). */
export function registerParityRunner(kind: FixtureKind, runner: ParityRunner): void {
  runners.set(kind, runner);
}

/** Registers the reduced-precision runner of a fixture kind (`--precision` / `--kv-cache`). */
export function registerPrecisionRunner(kind: FixtureKind, runner: (gpu: Gpu, dir: string, precision: ParityPrecision) => Promise<ParityEntry[]>): void {
  precisionRunners.set(kind, runner);
}

export async function runParity(
  gpu: Gpu,
  dir: string,
  onEntry?: (e: ParityEntry) => void,
  precision: ParityPrecision = {},
): Promise<{ kind: FixtureKind; entries: ParityEntry[] }> {
  const kind = detectFixtureKind(dir);
  const reduced = Object.entries(precision).filter(([, v]) => v !== undefined && v !== 'f32');
  if (reduced.length > 0) {
    const runner = precisionRunners.get(kind);
    if (!runner) {
      const what = reduced.map(([k, v]) => `${k} ${v}`).join(', ');
      throw new Error(`parity: ${what} is supported for ${[...precisionRunners.keys()].join(', ')} fixtures only; ${dir} is a ${kind} fixture (run it without)`);
    }
    return { kind, entries: await runner(gpu, dir, precision) };
  }
  const runner = runners.get(kind);
  if (!runner) throw new Error(`parity: fixture kind "${kind}" has no parity runner yet`);
  return { kind, entries: await runner(gpu, dir, onEntry) };
}
