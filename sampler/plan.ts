// The per-scale plan: every decision the next-scale loop makes about one scale lives in one ScalePlan,
// built before the loop starts and only read by it. The vanilla sampler is one way to fill the list
// (`vanillaPlan`); acceleration policies (StageVAR: CFG-0 refinement on the unconditional branch with
// random projection per block chunk, skipped scales; FastVAR; SkipVAR) are other ways, and the loop
// needs no other change for them than the token-policy hook in loop.ts.

import type { FastVarTokens } from './policy_plan.js';
import type { Grid } from './schedule.js';

/**
 * Which sequence rows a scale runs:
 *  'both'   conditional and unconditional rows; logits mixed cfg·ℓc + (1 − cfg)·ℓu (upstream CFG on logits)
 *  'cond'   conditional rows only; logits ℓc (guidance off, or SkipVAR-style late scales)
 *  'uncond' unconditional rows only (StageVAR's "CFG 0"): the conditional rows' caches stop growing, and
 *           the logits are ℓu
 */
export type Branches = 'both' | 'cond' | 'uncond';

/**
 * Which tokens go through which layers. 'all': every token of the scale through every block chunk.
 * The object form is StageVAR's random projection + representative-token restoration (spec stagevar.md
 * §2.3–2.7), described here so that plans can carry it; the loop rejects it until that issue lands.
 */
export type TokenPolicy = 'all' | ProjectedTokens | FastVarTokens;

export interface ProjectedTokens {
  kind: 'random-projection';
  /** Rank r per block chunk (the chunk runs on r projected rows). */
  ranks: readonly number[];
  /** RoPE phases of projected row k: raster position k of the scale (upstream) or that of sampled slot I[k]. */
  rope: 'first-rows' | 'sampled-slots';
  /** Full map after each chunk: area-resize of the previous run scale's output of the same chunk, then Y[I] = rows. */
  restore: 'area';
}

export interface ScalePlan {
  /** Index of the scale in the schedule (also its level embedding and its random stream). */
  scale: number;
  grid: Grid;
  /** false: skipped — no forward pass, no draw, nothing added to the latent (StageVAR / FastVAR skip). */
  run: boolean;
  branches: Branches;
  /** Guidance scale (used when branches = 'both'). */
  cfg: number;
  /** Temperature: logits are divided by it. */
  tau: number;
  tokens: TokenPolicy;
}

/** A per-scale value: one number for every scale, or one per scale. */
export type PerScale = number | readonly number[];

export interface VanillaPlanOptions {
  cfg: PerScale;
  tau: PerScale;
}

/** Expands a per-scale value to one entry per scale, or says what is wrong. */
export function perScale(name: string, value: PerScale, scales: number): number[] {
  if (typeof value === 'number') return new Array<number>(scales).fill(value);
  if (value.length === 1) return new Array<number>(scales).fill(value[0]);
  if (value.length !== scales) throw new RangeError(`${name}: ${value.length} values for ${scales} scales (give one value, or one per scale)`);
  return [...value];
}

/** Upstream's sampler: every scale runs all tokens; CFG (both branches) on every scale when any cfg ≠ 1. */
export function vanillaPlan(schedule: readonly Grid[], options: VanillaPlanOptions): ScalePlan[] {
  const cfg = perScale('cfg', options.cfg, schedule.length);
  const tau = perScale('tau', options.tau, schedule.length);
  const guidance = cfg.some((c) => c !== 1);
  const plans = schedule.map((grid, scale) => ({
    scale,
    grid,
    run: true,
    branches: guidance ? ('both' as const) : ('cond' as const),
    cfg: cfg[scale],
    tau: tau[scale],
    tokens: 'all' as const,
  }));
  validatePlans(plans, schedule);
  return plans;
}

/** Sequence rows the generation must allocate: the unconditional branch is needed when any run scale uses it. */
export function needsGuidance(plans: readonly ScalePlan[]): boolean {
  return plans.some((p) => p.run && p.branches !== 'cond');
}

/** Limits of the sampling knobs (shared with the CLI's messages). */
export const LIMITS = {
  cfg: [0, 50] as const,
  tau: [0, 100] as const,
};

export function checkCfg(cfg: number, where = 'cfg'): void {
  if (!Number.isFinite(cfg) || cfg < LIMITS.cfg[0] || cfg > LIMITS.cfg[1]) {
    throw new RangeError(`${where} ${cfg} is out of range: use ${LIMITS.cfg[0]}…${LIMITS.cfg[1]} (1 = no guidance; Infinity's default is 3)`);
  }
}

export function checkTau(tau: number, where = 'tau'): void {
  if (!Number.isFinite(tau) || tau <= LIMITS.tau[0] || tau > LIMITS.tau[1]) {
    throw new RangeError(`${where} ${tau} is out of range: the temperature must be > 0 and ≤ ${LIMITS.tau[1]} (Infinity-2B uses 0.5)`);
  }
}

export function checkTopP(topP: number): void {
  if (!(topP > 0 && topP <= 1)) throw new RangeError(`top-p ${topP} is out of range: use a value in (0, 1] (1 = off; Infinity uses 0.97)`);
}

export function checkTopK(topK: number): void {
  if (!Number.isInteger(topK) || topK < 0) throw new RangeError(`top-k ${topK} must be a non-negative integer (0 = off)`);
}

/** Throws on a plan list the loop cannot run: wrong length or order, bad knobs, or nothing to run. */
export function validatePlans(plans: readonly ScalePlan[], schedule: readonly Grid[]): void {
  if (plans.length !== schedule.length) throw new RangeError(`${plans.length} scale plans for a schedule of ${schedule.length} scales`);
  plans.forEach((p, i) => {
    const where = `scale ${i}`;
    if (p.scale !== i) throw new RangeError(`${where}: plan says scale ${p.scale}`);
    if (p.grid[0] !== schedule[i][0] || p.grid[1] !== schedule[i][1]) throw new RangeError(`${where}: plan grid ${p.grid} is not the schedule's ${schedule[i]}`);
    if (!['both', 'cond', 'uncond'].includes(p.branches)) throw new RangeError(`${where}: unknown branches "${p.branches}"`);
    checkCfg(p.cfg, `${where}: cfg`);
    checkTau(p.tau, `${where}: tau`);
    if (p.tokens !== 'all') {
      const t = p.tokens;
      if (t.kind !== 'fastvar' && (t.kind !== 'random-projection' || t.ranks.some((r) => !Number.isInteger(r) || r < 1))) {
        throw new RangeError(`${where}: bad token policy ${JSON.stringify(t)}`);
      }
    }
  });
  if (!plans[0]?.run) throw new RangeError('scale 0 must run: every later scale builds on it');
}
