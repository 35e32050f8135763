// The per-scale walk both next-scale loops share (Infinity's loop.ts, STAR's star_loop.ts): for each plan,
// in order — abort check, a skipped scale recorded as such (no forward, no draw, nothing added), or the
// family's own work for a run scale, timed until the GPU finished — then the progress callback and the
// optional trace hook (timed apart, so trace decodes count for no scale).

import type { Gpu } from '../engine/device.js';
import type { ScalePlan } from './plan.js';
import type { Grid } from './schedule.js';

export interface ScaleStats {
  scale: number;
  grid: Grid;
  /** Tokens per image of the scale. */
  tokens: number;
  run: boolean;
  branches: ScalePlan['branches'];
  /** Sequence rows that ran (images × branches). */
  rows: number;
  /** Wall time of the scale: forward, sampling and latent update, until the GPU finished. */
  ms: number;
}

export interface DriveOptions<P extends ScalePlan> {
  signal?: AbortSignal;
  /** The work of one run scale (recorded on the GPU); returns the sequence rows that ran. */
  run: (plan: P) => Promise<number> | number;
  /** A skipped scale (e.g. to keep per-scale outputs aligned). */
  skip?: (plan: P) => void;
  onScale?: (stats: ScaleStats) => void;
  /** After each run scale, once its work is done (trace decodes). */
  trace?: (plan: P) => Promise<void> | void;
}

const now = () => performance.now();

/** Walks the plans; returns the per-scale stats and the time spent in `trace`. */
export async function driveScales<P extends ScalePlan>(gpu: Gpu, plans: readonly P[], o: DriveOptions<P>): Promise<{ stats: ScaleStats[]; traceMs: number }> {
  const stats: ScaleStats[] = [];
  let traceMs = 0;
  for (const plan of plans) {
    o.signal?.throwIfAborted();
    const start = now();
    const tokens = plan.grid[0] * plan.grid[1];
    if (!plan.run) {
      o.skip?.(plan);
      const s: ScaleStats = { scale: plan.scale, grid: plan.grid, tokens, run: false, branches: plan.branches, rows: 0, ms: 0 };
      stats.push(s);
      o.onScale?.(s);
      continue;
    }
    const rows = await o.run(plan);
    await gpu.sync();
    const s: ScaleStats = { scale: plan.scale, grid: plan.grid, tokens, run: true, branches: plan.branches, rows, ms: now() - start };
    stats.push(s);
    o.onScale?.(s);
    if (o.trace) {
      const t = now();
      await o.trace(plan);
      traceMs += now() - t;
    }
  }
  return { stats, traceMs };
}
