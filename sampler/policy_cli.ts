// `--policy` and `--alpha` for `stagevar generate` and the Engine: read the policy (preset or file), check
// α, and apply both to the run's vanilla plan at once, so that every mistake (unknown α, a rank above a
// scale's tokens, a policy that skips everything, cfg 0 followed by cfg > 0) is reported before the GPU starts.

import type { Grid } from './schedule.js';
import { vanillaPlan, type PerScale } from './plan.js';
import { PRESET_NAMES, loadPolicy, type Policy } from './policy.js';
import { applyPolicy, type AppliedPolicy } from './policy_plan.js';
import { ALPHAS, DEFAULT_ALPHA, alphaKey } from './rank_table.js';

export const POLICY_HELP = `acceleration policy: ${PRESET_NAMES.join(', ')}, or a FILE.json of per-scale rules (run, cfg, tokens)`;
export const ALPHA_HELP = `StageVAR rank table row (energy kept by the random projection): ${ALPHAS.join(', ')} (default ${DEFAULT_ALPHA})`;

export interface PolicyFlags {
  policy?: string;
  alpha?: string;
}

export interface RunShape {
  schedule: readonly Grid[];
  cfg: PerScale;
  tau: PerScale;
  /** From the checkpoint's tensors (InfinityArch: chunks, depth). */
  chunks: number;
  depth: number;
}

export interface CheckedPolicy extends AppliedPolicy {
  policy: Policy;
  /** The table key of --alpha, when given. */
  alpha?: string;
}

/** Reads and checks --policy (default vanilla) and --alpha against the run; throws with the reason. */
export async function checkPolicyFlags(f: PolicyFlags, run: RunShape): Promise<CheckedPolicy> {
  const policy = await loadPolicy(f.policy ?? 'vanilla');
  const alpha = f.alpha === undefined ? undefined : alphaKey(f.alpha);
  const base = vanillaPlan(run.schedule, { cfg: run.cfg, tau: run.tau });
  const applied = applyPolicy(policy, base, { chunks: run.chunks, depth: run.depth, ...(alpha ? { alpha } : {}) });
  return { ...applied, policy, ...(alpha ? { alpha } : {}) };
}
