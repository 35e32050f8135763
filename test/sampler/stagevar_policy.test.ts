// Policy table: the rank table, policy data validation (errors name the field), presets applied to
// schedules of every size and aspect, and the checks that run before any GPU work.

import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { vanillaPlan } from '../../sampler/plan.js';
import { PRESETS, loadPolicy, parsePolicy, type Policy } from '../../sampler/policy.js';
import { applyPolicy, stageOf } from '../../sampler/policy_plan.js';
import { ALPHAS, alphaKey, rankRatios, tableRanks, tableScales } from '../../sampler/rank_table.js';
import { scaleSchedule } from '../../sampler/schedule.js';

const base = (template = 1, res: '0.06M' | '0.25M' | '0.60M' | '1M' = '1M', cfg = 3) => vanillaPlan(scaleSchedule(template, res), { cfg, tau: 0.5 });
const ctx2b = { chunks: 8, depth: 32 };

describe('rank table', () => {
  it('ships every α of the official table, for scales 40, 48 and 64', () => {
    expect(ALPHAS).toEqual(['0.999', '0.99', '0.98', '0.97', '0.96', '0.95', '0.92', '0.91', '0.90', '0.85', '0.80', '0.70']);
    for (const a of ALPHAS) expect(tableScales(a)).toEqual([10, 11, 12]);
  });

  it('gives the official ranks int(ratio · M) + 1 (spec §2.4; the fixture\'s 27 and 219)', () => {
    expect(tableRanks('0.96', 10, 1600, 8)).toEqual([27, 219, 337, 401, 410, 317, 252, 306]);
    expect(tableRanks('0.96', 11, 2304, 8)).toEqual([31, 271, 437, 512, 541, 422, 309, 376]);
    expect(tableRanks('0.96', 12, 4096, 8)).toEqual([34, 223, 341, 273, 233, 122, 157, 228]);
    expect(tableRanks('0.96', 10, 1600, 2)).toEqual([27, 219]); // fewer chunks: the first entries
    // More chunks than entries: the entry at the same relative depth.
    expect(rankRatios('0.96', 10, 16)).toEqual(rankRatios('0.96', 10, 8).flatMap((r) => [r, r]));
  });

  it('reads α as text or number, and lists the allowed ones otherwise', () => {
    expect(alphaKey('0.96')).toBe('0.96');
    expect(alphaKey(0.9)).toBe('0.90');
    expect(alphaKey('0.9')).toBe('0.90');
    for (const bad of ['0.5', 'high', '', 1]) expect(() => alphaKey(bad)).toThrow(/no row in Infinity's StageVAR rank table: use one of 0\.999, 0\.99, .*0\.70/);
    expect(() => rankRatios('0.96', 9, 8)).toThrow(/no row for scale index 9; it has scale indices 10 \(side 40/);
  });
});

describe('policy data', () => {
  it('accepts the documented format (and the presets are valid data)', () => {
    const p = parsePolicy({ name: 'mine', scales: { '10': { cfg: 0, tokens: { kind: 'rp', alpha: 0.9, rope: 'sampled-slots' } }, '11': { run: false }, '3': { tokens: 'all' } } });
    expect(p.scales[10]).toEqual({ cfg: 0, tokens: { kind: 'rp', alpha: '0.90', rope: 'sampled-slots' } });
    expect(p.scales[11]).toEqual({ run: false });
    for (const preset of Object.values(PRESETS)) expect(parsePolicy(JSON.parse(JSON.stringify(preset)), preset.name)).toEqual(preset);
  });

  it.each([
    [[], /\(top level\): must be an object/],
    [{ scales: [] }, /scales: must be an object keyed by scale index/],
    [{ scales: {}, extra: 1 }, /\(top level\)\.extra: unknown field/],
    [{ scales: { ten: {} } }, /scales\.ten: scale keys are scale indices/],
    [{ scales: { '-1': {} } }, /scales\.-1: scale keys are scale indices/],
    [{ scales: { 10: { run: 'no' } } }, /scales\.10\.run: must be true or false/],
    [{ scales: { 10: { cfg: -1 } } }, /scales\.10\.cfg: must be a number in 0…50/],
    [{ scales: { 10: { skip: true } } }, /scales\.10\.skip: unknown field \(allowed: run, cfg, tokens\)/],
    [{ scales: { 10: { run: false, cfg: 0 } } }, /scales\.10: a skipped scale \(run: false\) takes no cfg or tokens/],
    [{ scales: { 10: { tokens: 'some' } } }, /scales\.10\.tokens: must be "all" or an object/],
    [{ scales: { 10: { tokens: { kind: 'svd' } } } }, /scales\.10\.tokens\.kind: must be "rp" or "fastvar"/],
    [{ scales: { 10: { tokens: { kind: 'rp', alpha: '0.5' } } } }, /scales\.10\.tokens\.alpha: alpha "0\.5" has no row .* use one of 0\.999/],
    [{ scales: { 10: { tokens: { kind: 'rp', ranks: [1, 0] } } } }, /scales\.10\.tokens\.ranks: must be a non-empty list of positive integers/],
    [{ scales: { 10: { tokens: { kind: 'rp', ratios: [0.5, 1.5] } } } }, /scales\.10\.tokens\.ratios: must be a non-empty list of numbers in \(0, 1\)/],
    [{ scales: { 10: { tokens: { kind: 'rp', ranks: [3], alpha: '0.96' } } } }, /scales\.10\.tokens: give one of alpha, ranks, ratios/],
    [{ scales: { 10: { tokens: { kind: 'rp', rope: 'mine' } } } }, /scales\.10\.tokens\.rope: must be "first-rows"/],
    [{ scales: { 10: { tokens: { kind: 'fastvar', prune: 1 } } } }, /scales\.10\.tokens\.prune: must be a fraction in \[0, 1\)/],
    [{ scales: { 10: { tokens: { kind: 'fastvar', prune: 0.5, layers: [5, 3], cacheScale: 8 } } } }, /scales\.10\.tokens\.layers: must be \[from, to\)/],
  ])('rejects %j', (value, message) => {
    expect(() => parsePolicy(value, 'p.json')).toThrow(message);
    expect(() => parsePolicy(value, 'p.json')).toThrow(/^p\.json: /);
  });

  it('loads presets by name and files by path, with clear errors', async () => {
    expect(await loadPolicy('stagevar')).toBe(PRESETS.stagevar);
    await expect(loadPolicy('fastest')).rejects.toThrow(/neither a preset \(vanilla, stagevar, fastvar\) nor a \.json file/);
    const dir = await mkdtemp(join(tmpdir(), 'policy-'));
    try {
      const file = join(dir, 'p.json');
      await writeFile(file, JSON.stringify({ name: 'late-cfg0', scales: { 9: { cfg: 0 } } }));
      expect((await loadPolicy(file)).scales[9]).toEqual({ cfg: 0 });
      await writeFile(file, '{ "scales": ');
      await expect(loadPolicy(file)).rejects.toThrow(/p\.json: not valid JSON/);
      await expect(loadPolicy(join(dir, 'missing.json'))).rejects.toThrow(/cannot read the file \(ENOENT\)/);
    } finally {
      await rm(dir, { recursive: true });
    }
  });
});

describe('policies → plans', () => {
  it('splits stages by scale index (1:1 sides ≤ 16, ≤ 32, above)', () => {
    expect(Array.from({ length: 13 }, (_, s) => ({ semantic: 'S', structure: 'T', refinement: 'R' })[stageOf(s)]).join('')).toBe('SSSSSSSTTTRRR');
  });

  it('vanilla changes nothing', () => {
    const plans = base();
    expect(applyPolicy(PRESETS.vanilla, plans, ctx2b).plans).toEqual(plans);
  });

  it('stagevar: scales ≤ 9 vanilla, 10 unconditional with RP at the α row, 11 and 12 skipped', () => {
    const { plans, notes } = applyPolicy(PRESETS.stagevar, base(), ctx2b);
    expect(notes).toEqual([]);
    for (const p of plans.slice(0, 10)) expect([p.run, p.branches, p.cfg, p.tokens]).toEqual([true, 'both', 3, 'all']);
    expect(plans[10]).toMatchObject({ run: true, branches: 'uncond', cfg: 0, tokens: { kind: 'random-projection', ranks: [27, 219, 337, 401, 410, 317, 252, 306], rope: 'first-rows', restore: 'area' } });
    expect(plans.slice(11).map((p) => p.run)).toEqual([false, false]);
    const at90 = applyPolicy(PRESETS.stagevar, base(), { ...ctx2b, alpha: '0.90' }).plans[10].tokens;
    expect(at90).toMatchObject({ ranks: tableRanks('0.90', 10, 1600, 8) });
    // The tiny model's two chunks take the first two entries.
    expect(applyPolicy(PRESETS.stagevar, base(), { chunks: 2, depth: 4 }).plans[10].tokens).toMatchObject({ ranks: [27, 219] });
  });

  it('stagevar on other aspect templates: the same scale indices, ranks from their own token counts', () => {
    for (const template of [1.75, 0.571, 3]) {
      const plans = applyPolicy(PRESETS.stagevar, base(template), ctx2b).plans;
      const [h, w] = plans[10].grid;
      expect(plans[10].branches).toBe('uncond');
      expect(plans[10].tokens).toMatchObject({ ranks: rankRatios('0.96', 10, 8).map((r) => Math.floor(r * h * w) + 1) });
      expect(plans.filter((p) => !p.run).map((p) => p.scale)).toEqual([11, 12]);
    }
  });

  it('smaller schedules keep the rules that apply and say which do not', () => {
    const r = applyPolicy(PRESETS.stagevar, base(1, '0.25M'), ctx2b);
    expect(r.plans.every((p) => p.run && p.tokens === 'all')).toBe(true);
    expect(r.notes).toEqual(['policy stagevar: scales 10, 11, 12 are not in this 10-scale schedule; their rules do not apply']);
    const mid = applyPolicy(PRESETS.stagevar, base(1, '0.60M'), ctx2b);
    expect(mid.plans.map((p) => p.run)).toEqual([...Array(11).fill(true), false]);
    expect(applyPolicy(PRESETS.vanilla, base(), { ...ctx2b, alpha: '0.9' }).notes).toEqual(['--alpha 0.9 has no effect: policy vanilla takes no ranks from the table']);
  });

  const policy = (scales: Policy['scales']): Policy => ({ name: 'test', scales });
  it.each([
    ['a rank above the token count', { 10: { tokens: { kind: 'rp' as const, ranks: [27, 1601, 3, 3, 3, 3, 3, 3] } } }, /scale 10: rank 1601 of block chunk 1 must be an integer in 1…1600/],
    ['too few ranks', { 10: { tokens: { kind: 'rp' as const, ranks: [27, 30] } } }, /tokens\.ranks: 2 entries for a model with 8 block chunks/],
    ['a scale without a table row', { 5: { tokens: { kind: 'rp' as const } } }, /scale 5 \(semantic stage\): tokens: the rank table has no row for scale index 5.*give ranks or ratios/],
    ['skipping every scale', Object.fromEntries(Array.from({ length: 13 }, (_, s) => [s, { run: false }])), /skips every scale/],
    ['skipping scale 0', { 0: { run: false } }, /skips scale 0/],
    ['cfg > 0 after cfg 0', { 9: { cfg: 0 }, 10: { cfg: 3 } }, /scale 10 runs both CFG branches \(cfg 3\), but scale 9 already ran with cfg 0 .* cfg 0 must hold to the end/],
    ['RP on scale 0', { 0: { tokens: { kind: 'rp' as const, ranks: [1, 1, 1, 1, 1, 1, 1, 1] } } }, /scale 0: random projection needs an earlier scale that ran/],
    ['FastVAR from a later scale', { 9: { tokens: { kind: 'fastvar' as const, prune: 0.4, layers: [3, 28] as [number, number], cacheScale: 10 } } }, /FastVAR's cache scale 10 must be an earlier scale/],
  ])('rejects %s before any GPU work', (_what, scales, message) => {
    expect(() => applyPolicy(policy(scales), base(), ctx2b)).toThrow(message);
  });

  it('rejects CFG 0 (and any unconditional use) when the earlier scales ran without guidance', () => {
    expect(() => applyPolicy(PRESETS.stagevar, base(1, '1M', 1), ctx2b)).toThrow(/scale 10 needs the unconditional branch \(cfg 0\) but scale 9 ran without guidance/);
  });

  it('a skipped scale in between: RP restores from the last scale that ran', () => {
    const plans = applyPolicy(policy({ 9: { run: false }, 10: { cfg: 0, tokens: { kind: 'rp' } }, 11: { cfg: 0 }, 12: { run: false } }), base(), ctx2b).plans;
    expect(plans[9].run).toBe(false);
    expect(plans[10].tokens).toMatchObject({ kind: 'random-projection' });
    expect(plans[11]).toMatchObject({ run: true, branches: 'uncond', tokens: 'all' }); // cfg 0 holds after the cut
  });
});
