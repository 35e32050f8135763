// StageVAR's STAR port as policy data (no GPU): STAR's rank table (numbers from the official
// STAR-T2I/models/rank_ratio.py), its presets for any schedule length, per-layer ranks with the
// min(tokens, width) rule, calibrated rank files (--ranks), and the errors.
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { STAR_PATCH_NUMS } from '../../model/star/config.js';
import { loadPolicy, parsePolicy, starPresets } from '../../sampler/policy.js';
import { checkPolicyFlags } from '../../sampler/policy_cli.js';
import { applyPolicy } from '../../sampler/policy_plan.js';
import { loadRankFile } from '../../sampler/rank_file.js';
import { INFINITY_RANKS, STAR_ALPHAS, STAR_RANKS, alphaKey } from '../../sampler/rank_table.js';
import { starGrids, starVanillaPlan } from '../../sampler/star_loop.js';

const P1024 = [...STAR_PATCH_NUMS[1024]];
const star1024 = { chunks: 30, depth: 30, table: STAR_RANKS, width: 1920, unit: 'layer' };

let dir: string;
beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'stagevar-star-policy-'));
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe("STAR's rank table", () => {
  it('has the official rows and gives the published 1024² ranks at α 0.96 (30…371, mean ≈ 216)', () => {
    expect(STAR_ALPHAS).toEqual(['0.999', '0.99', '0.98', '0.97', '0.96', '0.95', '0.94', '0.93', '0.92', '0.91', '0.90', '0.85', '0.80', '0.70']);
    const ranks = STAR_RANKS.ratios('0.96', 13, 14, 30).map((r) => STAR_RANKS.rank(r, 4096, 1920));
    expect(ranks).toHaveLength(30);
    expect(ranks[0]).toBe(30);
    expect(Math.max(...ranks)).toBe(371);
    expect(ranks.reduce((a, b) => a + b, 0) / 30).toBeCloseTo(216, 0);
    // min(tokens, width): a narrow model or a small last scale caps the basis.
    expect(STAR_RANKS.rank(0.5, 144, 128)).toBe(65);
    expect(STAR_RANKS.rank(0.5, 100, 128)).toBe(51);
  });

  it('never gives a rank above the tokens (a calibrated ratio of 1)', () => {
    expect(STAR_RANKS.rank(1, 100, 128)).toBe(100);
    expect(STAR_RANKS.rank(1, 4096, 1920)).toBe(1921);
    expect(INFINITY_RANKS.rank(1, 50, Infinity)).toBe(50);
    expect(INFINITY_RANKS.rank(0.5, 50, Infinity)).toBe(26);
  });

  it('applies to the last scale only; fewer layers take the first entries, more map by depth', () => {
    const row = STAR_RANKS.ratios('0.96', 13, 14, 30);
    expect(STAR_RANKS.ratios('0.96', 7, 8, 3)).toEqual(row.slice(0, 3));
    expect(STAR_RANKS.ratios('0.96', 9, 10, 60)).toEqual(row.flatMap((r) => [r, r]));
    expect(() => STAR_RANKS.ratios('0.96', 12, 14, 30)).toThrow(/last scale only \(index 13 of this 14-scale schedule\), not for scale index 12/);
    expect(alphaKey('0.94', STAR_RANKS)).toBe('0.94');
    expect(() => alphaKey('0.94', INFINITY_RANKS)).toThrow(/no row in Infinity's StageVAR rank table/);
    expect(() => alphaKey('0.5', STAR_RANKS)).toThrow(/no row in STAR's StageVAR rank table: use one of 0\.999/);
  });
});

describe("STAR's presets", () => {
  it('stagevar: CFG 0 on the last two scales, per-layer RP with the sampled slots\' RoPE at the last, nothing skipped', () => {
    const { plans } = applyPolicy(starPresets(14).stagevar, starVanillaPlan(P1024, { cfg: 4.5 }), star1024);
    expect(plans.map((p) => p.branches)).toEqual([...Array(12).fill('both'), 'uncond', 'uncond']);
    expect(plans.map((p) => p.cfg)).toEqual([...Array(12).fill(4.5), 0, 0]);
    expect(plans.every((p) => p.run)).toBe(true);
    expect(plans.slice(0, 13).every((p) => p.tokens === 'all')).toBe(true);
    expect(plans[13].tokens).toMatchObject({ kind: 'random-projection', rope: 'sampled-slots', restore: 'area' });
    expect((plans[13].tokens as { ranks: readonly number[] }).ranks).toEqual(STAR_RANKS.ratios('0.96', 13, 14, 30).map((r) => Math.floor(r * 1920) + 1));
  });

  it('follows the schedule length (the 512 list has 10 scales) and the model depth', () => {
    const P512 = [...STAR_PATCH_NUMS[512]];
    const { plans } = applyPolicy(starPresets(10).stagevar, starVanillaPlan(P512, { cfg: 4.5 }), { ...star1024, chunks: 16, depth: 16, width: 1024, alpha: '0.90' });
    expect(plans.map((p) => p.branches).slice(7)).toEqual(['both', 'uncond', 'uncond']);
    expect((plans[9].tokens as { ranks: readonly number[] }).ranks).toEqual(STAR_RANKS.ratios('0.90', 9, 10, 16).map((r) => Math.floor(r * 1024) + 1));
  });

  it('rejects FastVAR and unknown presets for STAR, and round-trips as a policy file', async () => {
    await expect(loadPolicy('fastvar', 'star', 14)).rejects.toThrow(/fastvar is an Infinity preset; STAR has vanilla, stagevar/);
    await expect(loadPolicy('fastest', 'star', 14)).rejects.toThrow(/neither a preset \(vanilla, stagevar\) nor a \.json file/);
    const preset = starPresets(14).stagevar;
    expect(parsePolicy(JSON.parse(JSON.stringify(preset)), 'copy')).toEqual(preset);
    // Two scales leave no scale to restore from: no stagevar preset, and asking for it says why.
    expect(Object.keys(starPresets(2))).toEqual(['vanilla']);
    expect(await loadPolicy('vanilla', 'star', 2)).toBe(starPresets(2).vanilla);
    await expect(loadPolicy('stagevar', 'star', 2)).rejects.toThrow(/--policy stagevar needs at least 3 scales \(this schedule has 2\); STAR has vanilla here/);
  });

  it("--cfg 0 is STAR's t = 0 (conditional logits, no \"\" rows), never StageVAR's unconditional-only scale", () => {
    expect(starVanillaPlan(P1024, { cfg: 0 }).every((p) => p.branches === 'cond' && p.cfg === 0)).toBe(true);
    const mixed = starVanillaPlan(P1024, { cfg: [0, ...Array(13).fill(4.5)] });
    expect(mixed.every((p) => p.branches === 'both')).toBe(true);
  });

  it('checks --policy/--alpha against a STAR run before any GPU work', async () => {
    const run = { schedule: starGrids(P1024), cfg: 4.5, tau: 1, chunks: 30, depth: 30, family: 'star' as const, width: 1920 };
    const ok = await checkPolicyFlags({ policy: 'stagevar', alpha: '0.93' }, run);
    expect(ok.context).toMatchObject({ unit: 'layer', alpha: '0.93', width: 1920 });
    const file = join(dir, 'bad.json');
    await writeFile(file, JSON.stringify({ scales: { 13: { cfg: 0, tokens: { kind: 'rp', ranks: Array(30).fill(5000) } } } }));
    await expect(checkPolicyFlags({ policy: file }, run)).rejects.toThrow(/rank 5000 of layer 0 must be an integer in 1…4096/);
    await writeFile(file, JSON.stringify({ scales: { 12: { cfg: 0, tokens: { kind: 'rp' } } } }));
    await expect(checkPolicyFlags({ policy: file }, run)).rejects.toThrow(/last scale only/);
    await writeFile(file, JSON.stringify({ scales: { 12: { cfg: 0 }, 13: { cfg: 3 } } }));
    await expect(checkPolicyFlags({ policy: file }, run)).rejects.toThrow(/scale 12 already ran with cfg 0/);
  });
});

describe('--ranks: a calibrated rank table', () => {
  it('replaces the official ratios (Infinity: per block chunk of scale 10; rank = ⌊ratio·M⌋ + 1)', async () => {
    const file = join(dir, 'ranks.json');
    await writeFile(file, JSON.stringify({ '0.97': { 10: [0.01, 0.2], 11: [0.02, 0.3] } }));
    const schedule = [[1, 1], [2, 2], [4, 4], [6, 6], [8, 8], [12, 12], [16, 16], [20, 20], [24, 24], [32, 32], [40, 40], [48, 48], [64, 64]] as const;
    const run = { schedule, cfg: 3, tau: 0.5, chunks: 2, depth: 4 };
    const checked = await checkPolicyFlags({ policy: 'stagevar', ranks: file }, run);
    expect(checked.alpha).toBe('0.97');
    expect(checked.plans[10].tokens).toMatchObject({ ranks: [Math.floor(0.01 * 1600) + 1, Math.floor(0.2 * 1600) + 1] });
    await expect(checkPolicyFlags({ policy: 'stagevar', ranks: file, alpha: '0.96' }, run)).rejects.toThrow(/alpha "0\.96" has no row in Infinity \(.*ranks\.json\)'s StageVAR rank table: use one of 0\.97/);
  });

  it('names the file and the field on bad content', async () => {
    const cases: Array<[unknown, RegExp]> = [
      [[1, 2], /must be an object/],
      [{ high: { 10: [0.1] } }, /key "high" must be an energy fraction/],
      [{ '0.9': { ten: [0.1] } }, /"0\.9"\."ten": scale keys are scale indices/],
      [{ '0.9': { 10: [0, 0.1] } }, /"0\.9"\."10" must be a non-empty list of ratios in \(0, 1\]/],
    ];
    for (const [value, message] of cases) {
      const file = join(dir, 'bad-ranks.json');
      await writeFile(file, JSON.stringify(value));
      await expect(loadRankFile(file, INFINITY_RANKS)).rejects.toThrow(message);
    }
    await expect(loadRankFile(join(dir, 'missing.json'), INFINITY_RANKS)).rejects.toThrow(/--ranks .*missing\.json: cannot read the file \(ENOENT\)/);
    const short = join(dir, 'short.json');
    await writeFile(short, JSON.stringify({ '0.96': { 10: [0.1] } }));
    const table = await loadRankFile(short, INFINITY_RANKS);
    expect(() => table.ratios('0.96', 10, 13, 2)).toThrow(/has 1 ratios for a model with 2 block chunks/);
    expect(() => table.ratios('0.96', 11, 13, 1)).toThrow(/no ratios for scale index 11 at α 0\.96 \(it has scales 10\)/);
  });
});
