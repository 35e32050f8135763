// Rank selection of StageVAR's random projection (spec stagevar.md §2.4):
//   rank = int(ratio[α]['scale' + side][chunk] · M) + 1,   M = tokens of the scale.
// The official code looks the row up by the grid's width (`pn[-1]`), which only works for square images.
// Here the row is chosen by the scale's *index*: every 1M template has 13 scales, and index i of any
// template plays the role of the square template's side SQUARE_SIDES[i] (index 10 ↔ 'scale40'); M is the
// actual token count h·w of that scale, so a 16:9 image gets ratio · (its own tokens) + 1.
// A model with fewer block chunks than the row's 8 entries uses the first entries (as the stagevar-tiny
// fixture does); one with more maps chunk c to the entry at the same relative depth, floor(c · 8 / chunks).

import { RANK_RATIO_INFINITY } from './rank_table_data.js';
import { RANK_RATIO_STAR } from './rank_table_star_data.js';

/** Sides of the square template's 1M schedule: scale index i ↔ row 'scale' + SQUARE_SIDES[i]. */
export const SQUARE_SIDES: readonly number[] = [1, 2, 4, 6, 8, 12, 16, 20, 24, 32, 40, 48, 64];

/** The α keys of the official table, as written there (strings: '0.90' ≠ '0.9' textually). */
export const ALPHAS: readonly string[] = Object.keys(RANK_RATIO_INFINITY);

/** The official default (interactive_infer.py). */
export const DEFAULT_ALPHA = '0.96';

/** The table key of an α given as text or number ('0.9', 0.9 and '0.90' all name '0.90'); lists the allowed ones otherwise. */
export function alphaKey(alpha: string | number, table: RankTable = INFINITY_RANKS): string {
  const text = String(alpha).trim();
  const keys = table.alphas;
  if (keys.includes(text)) return text;
  const value = Number(text);
  const found = text !== '' && Number.isFinite(value) ? keys.find((a) => Math.abs(Number(a) - value) < 1e-9) : undefined;
  if (found === undefined) throw new RangeError(`alpha ${JSON.stringify(alpha)} has no row in ${table.name}'s StageVAR rank table: use one of ${keys.join(', ')}`);
  return found;
}

/** Scale indices that have a row in the table (10, 11, 12: sides 40, 48, 64). */
export function tableScales(alpha: string | number = DEFAULT_ALPHA): number[] {
  const row = RANK_RATIO_INFINITY[alphaKey(alpha)];
  return SQUARE_SIDES.flatMap((side, i) => (`scale${side}` in row ? [i] : []));
}

/** The table's ratios for scale index `scale`, one per block chunk of a model with `chunks` chunks. */
export function rankRatios(alpha: string | number, scale: number, chunks: number): number[] {
  const key = alphaKey(alpha);
  const side = SQUARE_SIDES[scale];
  const row = side === undefined ? undefined : RANK_RATIO_INFINITY[key][`scale${side}`];
  if (!row) {
    const have = tableScales(key).map((i) => `${i} (side ${SQUARE_SIDES[i]} in the 1:1 template)`);
    throw new RangeError(`the rank table has no row for scale index ${scale}; it has scale indices ${have.join(', ')}`);
  }
  if (!Number.isInteger(chunks) || chunks < 1) throw new RangeError(`block chunks ${chunks} must be a positive integer`);
  if (chunks <= row.length) return row.slice(0, chunks);
  return Array.from({ length: chunks }, (_, c) => row[Math.floor((c * row.length) / chunks)]);
}

/** rank = floor(ratio · M) + 1 (the official `int(ratio * M) + 1`). */
export function rankOf(ratio: number, tokens: number): number {
  return Math.floor(ratio * tokens) + 1;
}

/** Ranks per chunk of scale index `scale` with `tokens` tokens per image. */
export function tableRanks(alpha: string | number, scale: number, tokens: number, chunks: number): number[] {
  return rankRatios(alpha, scale, chunks).map((ratio) => rankOf(ratio, tokens));
}

/**
 * A model family's rank table, as the policy layer uses it: `units` are what one rank applies to (Infinity:
 * block chunks; STAR: layers), `scale` is an index into a `scales`-long schedule.
 */
export interface RankTable {
  name: string;
  alphas: readonly string[];
  ratios(alpha: string, scale: number, scales: number, units: number): number[];
  /** The rank of one unit at a scale of `tokens` tokens per image on a `width`-wide model. */
  rank(ratio: number, tokens: number, width: number): number;
}

export const INFINITY_RANKS: RankTable = {
  name: 'Infinity',
  alphas: ALPHAS,
  ratios: (alpha, scale, _scales, units) => rankRatios(alpha, scale, units),
  // The official tables' ratios are < 1; a calibrated ratio of 1 would give M + 1: cap at the tokens.
  rank: (ratio, tokens) => Math.min(rankOf(ratio, tokens), tokens),
};

/** The α keys of STAR's table. */
export const STAR_ALPHAS: readonly string[] = Object.keys(RANK_RATIO_STAR);

/**
 * STAR's table (StageVAR's STAR port): one row, 'scale64', one ratio per layer, measured at the last scale of
 * the 1024² model. It applies to the last scale of any STAR schedule (chosen by index, like Infinity's rows);
 * other scales need ranks or ratios in the policy. A model with fewer layers than the row's 30 uses the first
 * entries, one with more maps layer l to the entry at the same relative depth. The official port's rank is
 * int(ratio · min(tokens, width)) + 1: the rank of an M×C map is at most min(M, C).
 */
export const STAR_RANKS: RankTable = {
  name: 'STAR',
  alphas: STAR_ALPHAS,
  ratios(alpha, scale, scales, units) {
    const row = RANK_RATIO_STAR[alphaKey(alpha, STAR_RANKS)].scale64;
    if (scale !== scales - 1) {
      throw new RangeError(`STAR's rank table has a row for the last scale only (index ${scales - 1} of this ${scales}-scale schedule), not for scale index ${scale}`);
    }
    if (!Number.isInteger(units) || units < 1) throw new RangeError(`layers ${units} must be a positive integer`);
    if (units <= row.length) return row.slice(0, units);
    return Array.from({ length: units }, (_, l) => row[Math.floor((l * row.length) / units)]);
  },
  rank: (ratio, tokens, width) => Math.min(Math.floor(ratio * Math.min(tokens, width)) + 1, tokens),
};

/** Canonical key of α in any family's table (policy files are parsed before the model is known). */
export function alphaKeyAnyTable(alpha: string | number): string {
  for (const table of [INFINITY_RANKS, STAR_RANKS]) {
    try {
      return alphaKey(alpha, table);
    } catch {
      // try the next family's table
    }
  }
  const all = [...new Set([...ALPHAS, ...STAR_ALPHAS])].sort((a, b) => Number(b) - Number(a));
  throw new RangeError(`alpha ${JSON.stringify(alpha)} has no row in any StageVAR rank table: use one of ${all.join(', ')}`);
}
