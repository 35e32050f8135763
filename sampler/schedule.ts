// Scale schedules of Infinity (upstream `infinity/utils/dynamic_resolution.py`): one 13-scale list of
// token grids (h, w) per height/width template; the lower resolutions are prefixes of it. The grids are
// in transformer tokens (VAE stride 16); an image is 16·(h, w) of the last scale used.

/** A token grid: [rows, columns]. */
export type Grid = readonly [number, number];

/** The 1M ("1024²-class") schedules of the eight base templates, as in upstream; the inverse templates
 *  (w/h) are their transposes. */
const BASE_SCHEDULES: ReadonlyArray<readonly [number, readonly Grid[]]> = [
  [1.0, [[1, 1], [2, 2], [4, 4], [6, 6], [8, 8], [12, 12], [16, 16], [20, 20], [24, 24], [32, 32], [40, 40], [48, 48], [64, 64]]],
  [1.25, [[1, 1], [2, 2], [3, 3], [5, 4], [10, 8], [15, 12], [20, 16], [25, 20], [30, 24], [35, 28], [45, 36], [55, 44], [70, 56]]],
  [1.333, [[1, 1], [2, 2], [4, 3], [8, 6], [12, 9], [16, 12], [20, 15], [24, 18], [28, 21], [36, 27], [48, 36], [60, 45], [72, 54]]],
  [1.5, [[1, 1], [2, 2], [3, 2], [6, 4], [9, 6], [15, 10], [21, 14], [27, 18], [33, 22], [39, 26], [48, 32], [63, 42], [78, 52]]],
  [1.75, [[1, 1], [2, 2], [3, 3], [7, 4], [11, 6], [14, 8], [21, 12], [28, 16], [35, 20], [42, 24], [56, 32], [70, 40], [84, 48]]],
  [2.0, [[1, 1], [2, 2], [4, 2], [6, 3], [10, 5], [16, 8], [22, 11], [30, 15], [38, 19], [46, 23], [60, 30], [74, 37], [90, 45]]],
  [2.5, [[1, 1], [2, 2], [5, 2], [10, 4], [15, 6], [20, 8], [25, 10], [30, 12], [40, 16], [50, 20], [65, 26], [80, 32], [100, 40]]],
  [3.0, [[1, 1], [2, 2], [6, 2], [9, 3], [15, 5], [21, 7], [27, 9], [36, 12], [45, 15], [54, 18], [72, 24], [90, 30], [111, 37]]],
];

/** Resolution names and how many scales of the 1M list each one uses. */
export const RESOLUTIONS = { '0.06M': 7, '0.25M': 10, '0.60M': 12, '1M': 13 } as const;
export type ResolutionName = keyof typeof RESOLUTIONS;

function buildTemplates(): Map<number, readonly Grid[]> {
  const out = new Map<number, readonly Grid[]>();
  for (const [ratio, grids] of BASE_SCHEDULES) {
    out.set(ratio, grids);
    // Upstream keys the inverse template as int(1/r·1000)/1000 (0.666, 0.571, 0.333: truncated, not rounded).
    if (ratio !== 1) out.set(Math.trunc((1 / ratio) * 1000) / 1000, grids.map(([h, w]) => [w, h] as const));
  }
  return out;
}

const TEMPLATES = buildTemplates();

/** The 15 h/w templates in upstream order (this order decides ties in `nearestTemplate`). */
export const H_DIV_W_TEMPLATES: readonly number[] = [...TEMPLATES.keys()];

/** The template equal to `hDivW` (within 1e-6), or an error listing the valid ones. */
export function template(hDivW: number): number {
  const found = H_DIV_W_TEMPLATES.find((t) => Math.abs(t - hDivW) < 1e-6);
  if (found === undefined) throw new Error(`${hDivW} is not an h/w template (templates: ${H_DIV_W_TEMPLATES.join(', ')})`);
  return found;
}

/** The template nearest to an h/w ratio (numpy argmin semantics: the first of equal distances). */
export function nearestTemplate(hDivW: number): number {
  if (!(hDivW > 0) || !Number.isFinite(hDivW)) throw new Error(`aspect ratio h/w must be a positive number, got ${hDivW}`);
  let best = H_DIV_W_TEMPLATES[0];
  for (const t of H_DIV_W_TEMPLATES) if (Math.abs(t - hDivW) < Math.abs(best - hDivW)) best = t;
  return best;
}

/** Parses `--ratio`: "H:W" (height:width, e.g. "16:9"), or a plain h/w number ("1.25"). Returns h/w. */
export function parseRatio(text: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*[:/x]\s*(\d+(?:\.\d+)?)\s*$/.exec(text);
  const value = m ? Number(m[1]) / Number(m[2]) : Number(text);
  if (!(value > 0) || !Number.isFinite(value)) throw new Error(`cannot read aspect ratio "${text}": use H:W (e.g. 16:9) or h/w (e.g. 1.25)`);
  return value;
}

/** The template to use for a `--ratio H:W` argument. */
export function templateForRatio(text: string): number {
  return nearestTemplate(parseRatio(text));
}

/** The scale schedule (token grids) of a template at a resolution; "1M" by default. */
export function scaleSchedule(hDivW: number, resolution: ResolutionName = '1M'): Grid[] {
  const count = RESOLUTIONS[resolution];
  if (count === undefined) throw new Error(`unknown resolution "${resolution}" (known: ${Object.keys(RESOLUTIONS).join(', ')})`);
  return TEMPLATES.get(template(hDivW))!.slice(0, count).map(([h, w]) => [h, w] as const);
}

/** The final grid of a template's 1M schedule: the grid that RoPE positions of every scale are spread over. */
export function ropeGrid(hDivW: number): Grid {
  const grids = TEMPLATES.get(template(hDivW))!;
  return grids[grids.length - 1];
}

/** Tokens per scale. */
export function scaleTokens(schedule: readonly Grid[]): number[] {
  return schedule.map(([h, w]) => h * w);
}

/** Index of the first token of every scale in the concatenated sequence, plus the total at the end. */
export function scaleStarts(schedule: readonly Grid[]): number[] {
  const starts = [0];
  for (const [h, w] of schedule) starts.push(starts[starts.length - 1] + h * w);
  return starts;
}

/** Output image size in pixels [height, width] (VAE stride 16 on the transformer grid). */
export function imageSize(schedule: readonly Grid[], stride = 16): Grid {
  const [h, w] = schedule[schedule.length - 1];
  return [h * stride, w * stride];
}

/** Accepts upstream's `[[1, h, w], …]` (as in fixture configs) or `[[h, w], …]`. */
export function scheduleFromList(list: ReadonlyArray<readonly number[]>): Grid[] {
  return list.map((s) => {
    if (s.length === 3 && s[0] === 1) return [s[1], s[2]] as const;
    if (s.length === 2) return [s[0], s[1]] as const;
    throw new Error(`scale ${JSON.stringify(s)} is neither [1, h, w] nor [h, w]`);
  });
}
