// Acceleration policies as data: one table of per-scale rules that the sampler consults, per scale, for
// the three decisions an accelerator makes (spec stagevar.md §2.1, §3):
//   run     does the scale run at all (false: skipped — no forward, no draw, nothing added to the latent)
//   cfg     which CFG branches run: a number > 0 keeps both branches with that guidance; 0 keeps only the
//           unconditional branch from that scale on (StageVAR's "semantic irrelevance": KV caches, AdaLN
//           and text K/V cut to it)
//   tokens  which tokens go through which layers: 'all'; StageVAR's random projection + representative-token
//           restoration per block chunk ('rp'); FastVAR's cached token pruning ('fastvar')
// A scale without a rule keeps the vanilla plan's treatment. Policies come from a preset name or a JSON
// file (`parsePolicy`, errors name the field); `policy_plan.ts` turns one into the loop's ScalePlans.
//
// File format (scale keys are scale indices of the schedule, 0 = the 1×1 scale):
//   { "name": "mine", "scales": {
//       "10": { "cfg": 0, "tokens": { "kind": "rp", "alpha": "0.96", "rope": "first-rows" } },
//       "11": { "run": false }, "12": { "run": false } } }

import { readFile } from 'node:fs/promises';
import { LIMITS } from './plan.js';
import { alphaKeyAnyTable } from './rank_table.js';

/** RoPE phases of projected row k: raster cell k of the scale (official) or that of its slot I[k]. */
export type RpRope = 'first-rows' | 'sampled-slots';

/** StageVAR RP + RTR per block chunk. Ranks from the table row of `alpha` (default: --alpha), or given. */
export interface RpRule {
  kind: 'rp';
  alpha?: string;
  /** Rank per block chunk (a model with fewer chunks uses the first ones). */
  ranks?: number[];
  /** rank = floor(ratio · tokens) + 1 per block chunk. */
  ratios?: number[];
  rope?: RpRope;
}

/** FastVAR (csguoh/FastVAR): in layers [from, to), each sub-module runs on the tokens farthest from the
 *  token map's mean; the rest get that sub-module's output at `cacheScale`, area-resized. */
export interface FastVarRule {
  kind: 'fastvar';
  /** Fraction of tokens pruned, in [0, 1). */
  prune: number;
  /** Global layer range [from, to) that prunes (clamped to the model's depth). */
  layers: [number, number];
  /** Scale index whose sub-module outputs are cached for restoration. */
  cacheScale: number;
}

export type TokenRule = 'all' | RpRule | FastVarRule;

export interface ScaleRule {
  run?: boolean;
  cfg?: number;
  tokens?: TokenRule;
}

export interface Policy {
  name: string;
  description?: string;
  /** Rules by scale index. */
  scales: Readonly<Record<number, ScaleRule>>;
}

// ---- presets -----------------------------------------------------------------------------------
// Infinity's 1M schedule has three stages (paper §3; spec §2.11): semantics settle by scale index 6
// (side 16), structure by index 9 (side 32); indices 10–12 (sides 40, 48, 64) are fidelity refinement.
// Both accelerators leave the first two stages alone and treat the refinement stage.

export const PRESETS: Readonly<Record<string, Policy>> = {
  vanilla: { name: 'vanilla', description: 'every scale, every token, both CFG branches', scales: {} },
  stagevar: {
    name: 'stagevar',
    description: 'StageVAR official defaults: refinement scale 10 on the unconditional branch (CFG 0) with RP + RTR per block chunk (rank table row --alpha, default 0.96); scales 11 and 12 skipped',
    scales: {
      10: { cfg: 0, tokens: { kind: 'rp' } },
      11: { run: false },
      12: { run: false },
    },
  },
  fastvar: {
    name: 'fastvar',
    description: 'FastVAR published Infinity-2B settings: scale 9 prunes 40 % and scale 10 50 % of the tokens in layers 3–27 (restored from scale 8); scales 11 and 12 skipped',
    scales: {
      9: { tokens: { kind: 'fastvar', prune: 0.4, layers: [3, 28], cacheScale: 8 } },
      10: { tokens: { kind: 'fastvar', prune: 0.5, layers: [3, 28], cacheScale: 8 } },
      11: { run: false },
      12: { run: false },
    },
  },
};

export const PRESET_NAMES: readonly string[] = Object.keys(PRESETS);

/** Model families with their own presets (scale indices and units differ). */
export type PolicyFamily = 'infinity' | 'star';

/**
 * STAR's presets for a schedule of `scales` scales. `stagevar` is StageVAR's STAR port (sen-mao/FasterVAR
 * STAR-T2I/sample.py, var_drop.py; spec stagevar.md §2.8): the last two scales on the unconditional branch
 * only (`cfg[-2:] = 0`), random projection + restoration per layer at the last scale with the RoPE phases
 * of the sampled slots (`freqs_cis[I]`), ranks from STAR's table; no scale skipped. FastVAR has no STAR
 * settings.
 */
export function starPresets(scales: number): Readonly<Record<string, Policy>> {
  // The preset needs a scale to restore from before the two CFG-0 scales.
  if (!Number.isInteger(scales) || scales < 3) return { vanilla: PRESETS.vanilla };
  return {
    vanilla: PRESETS.vanilla,
    stagevar: {
      name: 'stagevar',
      description: 'StageVAR on STAR (official port): the last two scales on the unconditional branch (CFG 0), per-layer RP + RTR at the last scale (rank table row --alpha, default 0.96, RoPE of the sampled slots)',
      scales: {
        [scales - 2]: { cfg: 0 },
        [scales - 1]: { cfg: 0, tokens: { kind: 'rp', rope: 'sampled-slots' } },
      },
    },
  };
}

/** The presets of a family (STAR's depend on the schedule's length). */
export function presetsFor(family: PolicyFamily, scales: number): Readonly<Record<string, Policy>> {
  return family === 'star' ? starPresets(scales) : PRESETS;
}

/** `--policy` argument: a preset name of the model's family, or a JSON file. */
export async function loadPolicy(arg: string, family: PolicyFamily = 'infinity', scales = 0): Promise<Policy> {
  const presets = presetsFor(family, scales);
  const preset = presets[arg];
  if (preset) return preset;
  if (PRESETS[arg] || arg === 'stagevar') {
    const why = arg === 'stagevar' ? `needs at least 3 scales (this schedule has ${scales})` : 'is an Infinity preset';
    throw new Error(`--policy ${arg} ${why}; STAR has ${Object.keys(presets).join(', ')} here (or a .json file)`);
  }
  if (!arg.toLowerCase().endsWith('.json')) throw new Error(`--policy "${arg}" is neither a preset (${Object.keys(presets).join(', ')}) nor a .json file`);
  return parsePolicy(await readJsonFile(arg, '--policy'), arg);
}

/** A JSON file given to a flag; errors name the flag, the file and what went wrong. */
export async function readJsonFile(path: string, flag: string): Promise<unknown> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    throw new Error(`${flag} ${path}: cannot read the file (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
  }
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new Error(`${flag} ${path}: not valid JSON (${(err as Error).message})`);
  }
}

// ---- validation of policy data -----------------------------------------------------------------

class PolicyError extends Error {
  constructor(source: string, field: string, message: string) {
    super(`${source}: ${field}: ${message}`);
    this.name = 'PolicyError';
  }
}

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);

function onlyKeys(source: string, field: string, o: Obj, allowed: readonly string[]): void {
  for (const k of Object.keys(o)) {
    if (!allowed.includes(k)) throw new PolicyError(source, `${field}.${k}`, `unknown field (allowed: ${allowed.join(', ')})`);
  }
}

/** Checks untrusted policy data (parsed JSON) and returns it typed; every error names its field. */
export function parsePolicy(value: unknown, source = 'policy'): Policy {
  if (!isObj(value)) throw new PolicyError(source, '(top level)', 'must be an object { "name", "scales": { "<index>": { run, cfg, tokens } } }');
  onlyKeys(source, '(top level)', value, ['name', 'description', 'scales']);
  const name = value.name ?? source;
  if (typeof name !== 'string' || name === '') throw new PolicyError(source, 'name', 'must be a non-empty string');
  if (value.description !== undefined && typeof value.description !== 'string') throw new PolicyError(source, 'description', 'must be a string');
  if (!isObj(value.scales)) throw new PolicyError(source, 'scales', 'must be an object keyed by scale index, e.g. { "10": { "cfg": 0 } }');
  const scales: Record<number, ScaleRule> = {};
  for (const [key, rule] of Object.entries(value.scales)) {
    const field = `scales.${key}`;
    if (!/^(0|[1-9]\d*)$/.test(key)) throw new PolicyError(source, field, 'scale keys are scale indices 0, 1, 2, … (0 = the 1×1 scale)');
    scales[Number(key)] = parseScaleRule(source, field, rule);
  }
  const out: Policy = { name, scales };
  if (typeof value.description === 'string') out.description = value.description;
  return out;
}

function parseScaleRule(source: string, field: string, v: unknown): ScaleRule {
  if (!isObj(v)) throw new PolicyError(source, field, 'must be an object with run, cfg and/or tokens');
  onlyKeys(source, field, v, ['run', 'cfg', 'tokens']);
  const rule: ScaleRule = {};
  if (v.run !== undefined) {
    if (typeof v.run !== 'boolean') throw new PolicyError(source, `${field}.run`, `must be true or false, got ${JSON.stringify(v.run)}`);
    rule.run = v.run;
  }
  if (v.cfg !== undefined) {
    const [lo, hi] = LIMITS.cfg;
    if (typeof v.cfg !== 'number' || !Number.isFinite(v.cfg) || v.cfg < lo || v.cfg > hi) {
      throw new PolicyError(source, `${field}.cfg`, `must be a number in ${lo}…${hi} (0 = unconditional branch only), got ${JSON.stringify(v.cfg)}`);
    }
    rule.cfg = v.cfg;
  }
  if (v.tokens !== undefined) rule.tokens = parseTokens(source, `${field}.tokens`, v.tokens);
  if (rule.run === false && (rule.cfg !== undefined || rule.tokens !== undefined)) {
    throw new PolicyError(source, field, 'a skipped scale (run: false) takes no cfg or tokens');
  }
  return rule;
}

function numberList(source: string, field: string, v: unknown, ok: (x: number) => boolean, what: string): number[] {
  if (!Array.isArray(v) || v.length === 0 || !v.every((x) => typeof x === 'number' && ok(x))) {
    throw new PolicyError(source, field, `must be a non-empty list of ${what}, got ${JSON.stringify(v)}`);
  }
  return v as number[];
}

function parseTokens(source: string, field: string, v: unknown): TokenRule {
  if (v === 'all') return 'all';
  if (!isObj(v)) throw new PolicyError(source, field, `must be "all" or an object with kind "rp" or "fastvar", got ${JSON.stringify(v)}`);
  if (v.kind === 'rp' || v.kind === 'random-projection') {
    onlyKeys(source, field, v, ['kind', 'alpha', 'ranks', 'ratios', 'rope']);
    const given = ['alpha', 'ranks', 'ratios'].filter((k) => v[k] !== undefined);
    if (given.length > 1) throw new PolicyError(source, field, `give one of alpha, ranks, ratios (got ${given.join(' and ')})`);
    const rule: RpRule = { kind: 'rp' };
    if (v.alpha !== undefined) {
      if (typeof v.alpha !== 'string' && typeof v.alpha !== 'number') throw new PolicyError(source, `${field}.alpha`, 'must be a string such as "0.96"');
      try {
        rule.alpha = alphaKeyAnyTable(v.alpha);
      } catch (err) {
        throw new PolicyError(source, `${field}.alpha`, (err as Error).message);
      }
    }
    if (v.ranks !== undefined) rule.ranks = numberList(source, `${field}.ranks`, v.ranks, (x) => Number.isInteger(x) && x >= 1, 'positive integers (one per block chunk)');
    if (v.ratios !== undefined) rule.ratios = numberList(source, `${field}.ratios`, v.ratios, (x) => x > 0 && x < 1, 'numbers in (0, 1) (one per block chunk)');
    if (v.rope !== undefined) {
      if (v.rope !== 'first-rows' && v.rope !== 'sampled-slots') {
        throw new PolicyError(source, `${field}.rope`, `must be "first-rows" (official: raster cells 0..r−1) or "sampled-slots" (the cells I), got ${JSON.stringify(v.rope)}`);
      }
      rule.rope = v.rope;
    }
    return rule;
  }
  if (v.kind === 'fastvar') {
    onlyKeys(source, field, v, ['kind', 'prune', 'layers', 'cacheScale']);
    if (typeof v.prune !== 'number' || !(v.prune >= 0 && v.prune < 1)) throw new PolicyError(source, `${field}.prune`, `must be a fraction in [0, 1), got ${JSON.stringify(v.prune)}`);
    const layers = v.layers ?? [0, 1e9];
    const ok = Array.isArray(layers) && layers.length === 2 && layers.every((x) => Number.isInteger(x) && x >= 0) && layers[0] < layers[1];
    if (!ok) throw new PolicyError(source, `${field}.layers`, `must be [from, to) layer indices with from < to, got ${JSON.stringify(v.layers)}`);
    if (!Number.isInteger(v.cacheScale) || (v.cacheScale as number) < 0) throw new PolicyError(source, `${field}.cacheScale`, `must be a scale index, got ${JSON.stringify(v.cacheScale)}`);
    return { kind: 'fastvar', prune: v.prune, layers: [layers[0], layers[1]], cacheScale: v.cacheScale as number };
  }
  throw new PolicyError(source, `${field}.kind`, `must be "rp" or "fastvar", got ${JSON.stringify(v.kind)}`);
}
