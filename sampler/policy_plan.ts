// Policy → per-scale plans, the way the paper's algorithm reads (StageVAR §3): split the schedule into
// stages, then give each scale its stage's treatment from the policy table — run or skip, which CFG
// branches, which tokens through which layers — on top of the vanilla plan (cfg, τ from the user).
// Every rule is checked here, before any GPU work: ranks above a scale's tokens, a policy that skips
// everything, a scale that needs a branch whose caches were already cut, RP without a scale to restore from.

import type { Branches, ProjectedTokens, ScalePlan, TokenPolicy } from './plan.js';
import type { FastVarRule, Policy, RpRule, TokenRule } from './policy.js';
import { DEFAULT_ALPHA, INFINITY_RANKS, alphaKey, SQUARE_SIDES, type RankTable } from './rank_table.js';

/** FastVAR's cached token pruning, resolved for a model (layers clamped to its depth). */
export interface FastVarTokens {
  kind: 'fastvar';
  prune: number;
  layers: [number, number];
  cacheScale: number;
}

/** The loop's token policies plus FastVAR's (plan.ts's TokenPolicy does not list it yet). */
export type PolicyTokens = TokenPolicy | FastVarTokens;
export type PolicyPlan = Omit<ScalePlan, 'tokens'> & { tokens: PolicyTokens };

export type Stage = 'semantic' | 'structure' | 'refinement';

/** Stage of a scale index (paper: semantics settle by side 16, structure by side 32 of the 1:1 template).
 *  By index, never by width, so every aspect template splits the same way. */
export function stageOf(scale: number): Stage {
  const side = SQUARE_SIDES[Math.min(scale, SQUARE_SIDES.length - 1)];
  return side <= 16 ? 'semantic' : side <= 32 ? 'structure' : 'refinement';
}

export interface PolicyContext {
  /** Block chunks and layers of the model (ranks are per chunk; FastVAR layer ranges are clamped). STAR
   *  projects per layer: its `chunks` is its depth (chunks of one layer). */
  chunks: number;
  depth: number;
  /** The family's rank table (default Infinity's) and the model width (STAR's ranks are capped by it). */
  table?: RankTable;
  width?: number;
  /** What one rank applies to, for messages (default 'block chunk'; STAR: 'layer'). */
  unit?: string;
  /** Rank table row for RP rules without their own alpha/ranks/ratios (`--alpha`; default 0.96). */
  alpha?: string | number;
}

export interface AppliedPolicy {
  plans: PolicyPlan[];
  /** Things the user may want to know (rules for scales the schedule does not have, an unused --alpha). */
  notes: string[];
}

/** Applies a policy to the vanilla plans (one per scale of the schedule) and checks the result. */
export function applyPolicy(policy: Policy, base: readonly ScalePlan[], ctx: PolicyContext): AppliedPolicy {
  const alpha = alphaKey(ctx.alpha ?? DEFAULT_ALPHA, ctx.table ?? INFINITY_RANKS);
  const notes: string[] = [];
  const where = (s: number) => `policy ${policy.name}: scale ${s}`;
  const plans: PolicyPlan[] = base.map((p) => {
    const stage = stageOf(p.scale); // 1. the stage split …
    const rule = policy.scales[p.scale]; // 2. … and the policy's treatment of this scale of that stage
    if (!rule) return { ...p };
    const plan: PolicyPlan = { ...p };
    if (rule.run !== undefined) plan.run = rule.run;
    if (rule.cfg !== undefined) {
      plan.cfg = rule.cfg;
      plan.branches = rule.cfg === 0 ? 'uncond' : 'both';
    }
    if (rule.tokens !== undefined) plan.tokens = resolveTokens(rule.tokens, p, base.length, ctx, alpha, `${where(p.scale)} (${stage} stage)`);
    return plan;
  });
  const beyond = Object.keys(policy.scales).map(Number).filter((s) => s >= base.length);
  if (beyond.length) notes.push(`policy ${policy.name}: scales ${beyond.join(', ')} are not in this ${base.length}-scale schedule; their rules do not apply`);
  const usesTable = Object.values(policy.scales).some((r) => typeof r.tokens === 'object' && r.tokens.kind === 'rp' && !r.tokens.alpha && !r.tokens.ranks && !r.tokens.ratios);
  if (ctx.alpha !== undefined && !usesTable) notes.push(`--alpha ${ctx.alpha} has no effect: policy ${policy.name} takes no ranks from the table`);
  checkPolicyPlans(plans, ctx, policy.name);
  return { plans, notes };
}

function resolveTokens(rule: TokenRule, p: ScalePlan, scales: number, ctx: PolicyContext, alpha: string, where: string): PolicyTokens {
  if (rule === 'all') return 'all';
  if (rule.kind === 'fastvar') return fastVarTokens(rule, ctx);
  return rpTokens(rule, p, scales, ctx, alpha, where);
}

function rpTokens(rule: RpRule, p: ScalePlan, scales: number, ctx: PolicyContext, alpha: string, where: string): ProjectedTokens {
  const tokens = p.grid[0] * p.grid[1];
  const table = ctx.table ?? INFINITY_RANKS;
  const width = ctx.width ?? Infinity;
  let ranks: number[];
  if (rule.ranks) ranks = fitChunks(rule.ranks, ctx, `${where}: tokens.ranks`);
  else if (rule.ratios) ranks = fitChunks(rule.ratios, ctx, `${where}: tokens.ratios`).map((r) => table.rank(r, tokens, width));
  else {
    try {
      const key = alphaKey(rule.alpha ?? alpha, table);
      ranks = table.ratios(key, p.scale, scales, ctx.chunks).map((r) => table.rank(r, tokens, width));
    } catch (err) {
      throw new RangeError(`${where}: tokens: ${(err as Error).message}; give ranks or ratios for it`);
    }
  }
  return { kind: 'random-projection', ranks, rope: rule.rope ?? 'first-rows', restore: 'area' };
}

/** A per-chunk list for a model with `chunks` chunks: its first entries; too few is an error. */
function fitChunks(list: readonly number[], ctx: PolicyContext, where: string): number[] {
  if (list.length < ctx.chunks) throw new RangeError(`${where}: ${list.length} entries for a model with ${ctx.chunks} ${ctx.unit ?? 'block chunk'}s`);
  return list.slice(0, ctx.chunks);
}

function fastVarTokens(rule: FastVarRule, ctx: PolicyContext): FastVarTokens {
  return { kind: 'fastvar', prune: rule.prune, layers: [Math.min(rule.layers[0], ctx.depth), Math.min(rule.layers[1], ctx.depth)], cacheScale: rule.cacheScale };
}

/** Rows a branch choice reads from the previous scale's state. */
const covers = (prev: Branches, cur: Branches) => prev === 'both' || prev === cur;

/** The checks that need the whole plan list; throws RangeError naming the scale. */
export function checkPolicyPlans(plans: readonly PolicyPlan[], ctx: PolicyContext, name = 'plan'): void {
  const ran = plans.filter((p) => p.run);
  if (ran.length === 0) throw new RangeError(`policy ${name} skips every scale: nothing would be generated`);
  if (!plans[0].run) throw new RangeError(`policy ${name} skips scale 0: every later scale builds on it`);
  const guidance = ran.some((p) => p.branches !== 'cond');
  let cutAt = -1; // first run scale on the unconditional branch only: the conditional caches stop there
  let prev: PolicyPlan | null = null;
  for (const p of plans) {
    const at = `policy ${name}: scale ${p.scale}`;
    if (!p.run) continue;
    if (cutAt >= 0 && p.branches !== 'uncond') {
      throw new RangeError(`${at} runs ${p.branches === 'both' ? `both CFG branches (cfg ${p.cfg})` : 'the conditional branch'}, but scale ${cutAt} already ran with cfg 0 and cut every cache to the unconditional branch; cfg 0 must hold to the end`);
    }
    if (p.branches !== 'cond' && prev?.branches === 'cond') {
      throw new RangeError(`${at} needs the unconditional branch (cfg ${p.cfg}) but scale ${prev.scale} ran without guidance: its unconditional KV cache would be missing (use a cfg ≠ 1 on every scale before it)`);
    }
    if (p.branches === 'uncond' && guidance && cutAt < 0) cutAt = p.scale;
    const t = p.tokens;
    const tokens = p.grid[0] * p.grid[1];
    if (t !== 'all' && t.kind === 'random-projection') {
      if (t.ranks.length !== ctx.chunks) throw new RangeError(`${at}: ${t.ranks.length} ranks for a model with ${ctx.chunks} ${ctx.unit ?? 'block chunk'}s`);
      t.ranks.forEach((r, c) => {
        if (!Number.isInteger(r) || r < 1 || r > tokens) {
          throw new RangeError(`${at}: rank ${r} of ${ctx.unit ?? 'block chunk'} ${c} must be an integer in 1…${tokens} (the scale's ${p.grid[0]}×${p.grid[1]} tokens)`);
        }
      });
      if (!prev) throw new RangeError(`${at}: random projection needs an earlier scale that ran, to restore the other tokens from`);
      if (!covers(prev.branches, p.branches)) throw new RangeError(`${at}: restoration reads the ${p.branches} rows of scale ${prev.scale}, which ran only ${prev.branches}`);
    }
    if (t !== 'all' && t.kind === 'fastvar') {
      const src = plans[t.cacheScale];
      if (!src || t.cacheScale >= p.scale || !src.run || src.tokens !== 'all') {
        throw new RangeError(`${at}: FastVAR's cache scale ${t.cacheScale} must be an earlier scale that runs every token`);
      }
      if (!covers(src.branches, p.branches)) throw new RangeError(`${at}: FastVAR restores the ${p.branches} rows from scale ${t.cacheScale}, which ran only ${src.branches}`);
      if (Math.floor(t.prune * tokens) >= tokens) throw new RangeError(`${at}: pruning ${t.prune} of ${tokens} tokens keeps none`);
    }
    prev = p;
  }
}

/** The scale index that holds the recorded chunk outputs an RP scale restores from: the previous run scale. */
export function restoreSource(plans: readonly PolicyPlan[], scale: number): number {
  for (let s = scale - 1; s >= 0; s--) if (plans[s].run) return s;
  return -1;
}

/** Plan hook for `Engine.generate({ plan })`: the vanilla plans in, the policy's out (notes to `onNote`). */
export function policyPlanHook(policy: Policy, ctx: PolicyContext, onNote?: (note: string) => void): (plans: ScalePlan[]) => PolicyPlan[] {
  return (plans) => {
    const applied = applyPolicy(policy, plans, ctx);
    for (const n of applied.notes) onNote?.(n);
    return applied.plans;
  };
}
