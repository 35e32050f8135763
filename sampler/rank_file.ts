// `--ranks FILE`: a calibrated rank table (`stagevar calibrate --table FILE`) used in place of the official
// one. Format: { "<α>": { "<scale index>": [ratio per unit] } } — units are block chunks (Infinity) or
// layers (STAR); ranks follow the family's rule (rank_table.ts). Every error names the file and the field.

import { readJsonFile } from './policy.js';
import type { RankTable } from './rank_table.js';

export async function loadRankFile(path: string, family: RankTable): Promise<RankTable> {
  return parseRankTable(await readJsonFile(path, '--ranks'), path, family);
}

const isObj = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

export function parseRankTable(value: unknown, source: string, family: RankTable): RankTable {
  const where = `--ranks ${source}`;
  if (!isObj(value) || Object.keys(value).length === 0) throw new Error(`${where}: must be an object { "<alpha>": { "<scale index>": [ratio per ${family.name === 'STAR' ? 'layer' : 'block chunk'}] } }`);
  const rows = new Map<string, Map<number, number[]>>();
  for (const [alpha, scales] of Object.entries(value)) {
    const a = Number(alpha);
    if (!(a > 0 && a <= 1)) throw new Error(`${where}: key "${alpha}" must be an energy fraction α in (0, 1]`);
    if (!isObj(scales)) throw new Error(`${where}: "${alpha}" must map scale indices to ratio lists`);
    const byScale = new Map<number, number[]>();
    for (const [scale, ratios] of Object.entries(scales)) {
      if (!/^(0|[1-9]\d*)$/.test(scale)) throw new Error(`${where}: "${alpha}"."${scale}": scale keys are scale indices 0, 1, 2, …`);
      if (!Array.isArray(ratios) || ratios.length === 0 || !ratios.every((r) => typeof r === 'number' && r > 0 && r <= 1)) {
        throw new Error(`${where}: "${alpha}"."${scale}" must be a non-empty list of ratios in (0, 1], got ${JSON.stringify(ratios)}`);
      }
      byScale.set(Number(scale), ratios as number[]);
    }
    rows.set(alpha, byScale);
  }
  return {
    name: `${family.name} (${source})`,
    alphas: [...rows.keys()],
    ratios(alpha, scale, _scales, units) {
      const row = rows.get(alpha)!;
      const ratios = row.get(scale);
      if (!ratios) throw new RangeError(`${where} has no ratios for scale index ${scale} at α ${alpha} (it has scales ${[...row.keys()].join(', ')})`);
      if (ratios.length < units) throw new RangeError(`${where}: α ${alpha} scale ${scale} has ${ratios.length} ratios for a model with ${units} ${family.name === 'STAR' ? 'layers' : 'block chunks'}`);
      return ratios.slice(0, units);
    },
    rank: family.rank,
  };
}
