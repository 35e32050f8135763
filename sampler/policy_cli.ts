// `--policy` and `--alpha` for `stagevar generate` and the Engine: read the policy (preset or file), check
// α, and apply both to the run's vanilla plan at once, so that every mistake (unknown α, a rank above a
// scale's tokens, a policy that skips everything, cfg 0 followed by cfg > 0) is reported before the GPU starts.

import type { Grid } from './schedule.js';
import { vanillaPlan, type PerScale } from './plan.js';
import { PRESET_NAMES, loadPolicy, type Policy, type PolicyFamily } from './policy.js';
import { applyPolicy, type AppliedPolicy, type PolicyContext } from './policy_plan.js';
import { loadRankFile } from './rank_file.js';
import { ALPHAS, DEFAULT_ALPHA, INFINITY_RANKS, STAR_ALPHAS, STAR_RANKS, alphaKey } from './rank_table.js';
import { starVanillaPlan } from './star_loop.js';

export const POLICY_HELP = `acceleration policy: ${PRESET_NAMES.join(', ')} (STAR: vanilla, stagevar), or a FILE.json of per-scale rules (run, cfg, tokens)`;
export const ALPHA_HELP = `StageVAR rank table row (energy kept by the random projection): ${ALPHAS.join(', ')} (STAR also ${STAR_ALPHAS.filter((a) => !ALPHAS.includes(a)).join(', ')}; default ${DEFAULT_ALPHA})`;
export const RANKS_HELP = 'calibrated rank table (stagevar calibrate --table FILE) instead of the official one';

export interface PolicyFlags {
  policy?: string;
  alpha?: string;
  /** A calibrated rank table file. */
  ranks?: string;
}

export interface RunShape {
  schedule: readonly Grid[];
  cfg: PerScale;
  tau: PerScale;
  /** From the checkpoint's tensors (InfinityArch: chunks, depth; STAR: its layers are the units). */
  chunks: number;
  depth: number;
  /** Default 'infinity'. */
  family?: PolicyFamily;
  /** Model width (STAR's ranks are at most min(tokens, width)). */
  width?: number;
}

export interface CheckedPolicy extends AppliedPolicy {
  policy: Policy;
  /** The table key of --alpha, when given. */
  alpha?: string;
  /** What the plan hook needs to apply the policy again inside the run (same table, α, units). */
  context: PolicyContext;
}

/** Reads and checks --policy (default vanilla), --alpha and --ranks against the run; throws with the reason. */
export async function checkPolicyFlags(f: PolicyFlags, run: RunShape): Promise<CheckedPolicy> {
  const family = run.family ?? 'infinity';
  const policy = await loadPolicy(f.policy ?? 'vanilla', family, run.schedule.length);
  const builtIn = family === 'star' ? STAR_RANKS : INFINITY_RANKS;
  const table = f.ranks ? await loadRankFile(f.ranks, builtIn) : builtIn;
  // A calibrated file with one α needs no --alpha.
  const alpha = f.alpha !== undefined ? alphaKey(f.alpha, table) : f.ranks ? table.alphas[0] : undefined;
  const base = family === 'star' ? starVanillaPlan(run.schedule.map((g) => g[0]), { cfg: run.cfg, tau: run.tau }) : vanillaPlan(run.schedule, { cfg: run.cfg, tau: run.tau });
  const context: PolicyContext = {
    chunks: run.chunks,
    depth: run.depth,
    table,
    ...(run.width !== undefined ? { width: run.width } : {}),
    ...(family === 'star' ? { unit: 'layer' } : {}),
    ...(alpha ? { alpha } : {}),
  };
  const applied = applyPolicy(policy, base, context);
  return { ...applied, policy, context, ...(alpha ? { alpha } : {}) };
}
