import { describe, expect, it } from 'vitest';
import {
  H_DIV_W_TEMPLATES,
  RESOLUTIONS,
  imageSize,
  nearestTemplate,
  parseRatio,
  ropeGrid,
  scaleSchedule,
  scaleStarts,
  scheduleFromList,
  templateForRatio,
  type ResolutionName,
} from '../../sampler/schedule.js';

// Spec §5: final grid, total tokens at 1M / 0.25M / 0.06M for each template.
const TABLE: Array<[number, [number, number], number, number, number]> = [
  [1.0, [64, 64], 10521, 2521, 521],
  [1.25, [70, 56], 10774, 2814, 614],
  [0.8, [56, 70], 10774, 2814, 614],
  [1.333, [72, 54], 10973, 2657, 665],
  [0.75, [54, 72], 10973, 2657, 665],
  [1.5, [78, 52], 10997, 2759, 533],
  [0.666, [52, 78], 10997, 2759, 533],
  [1.75, [84, 48], 11252, 2628, 472],
  [0.571, [48, 84], 11252, 2628, 472],
  [2.0, [90, 45], 11269, 2681, 451],
  [0.5, [45, 90], 11269, 2681, 451],
  [2.5, [100, 40], 10805, 2555, 555],
  [0.4, [40, 100], 10805, 2555, 555],
  [3.0, [111, 37], 11123, 2588, 509],
  [0.333, [37, 111], 11123, 2588, 509],
];

const total = (r: number, pn: ResolutionName) => scaleStarts(scaleSchedule(r, pn)).at(-1);

describe('scale schedules', () => {
  it('has the 15 templates in upstream order', () => {
    expect(H_DIV_W_TEMPLATES).toEqual(TABLE.map((t) => t[0]));
  });

  it.each(TABLE)('template %f: final grid, token totals of 1M / 0.25M / 0.06M', (r, final, t1m, t025, t006) => {
    expect(scaleSchedule(r)).toHaveLength(13);
    expect(scaleSchedule(r).at(-1)).toEqual(final);
    expect(ropeGrid(r)).toEqual(final);
    expect(total(r, '1M')).toBe(t1m);
    expect(total(r, '0.25M')).toBe(t025);
    expect(total(r, '0.06M')).toBe(t006);
    // Lower resolutions are prefixes of 1M; each schedule's last grid has the template's aspect.
    for (const pn of Object.keys(RESOLUTIONS) as ResolutionName[]) {
      const s = scaleSchedule(r, pn);
      expect(s).toEqual(scaleSchedule(r).slice(0, RESOLUTIONS[pn]));
      const [h, w] = s.at(-1)!;
      expect(Math.abs(h / w - r)).toBeLessThan(0.01);
    }
    expect(scaleSchedule(r)[0]).toEqual([1, 1]);
  });

  it('gives the 1:1 starts and image size of the spec', () => {
    expect(scaleStarts(scaleSchedule(1))).toEqual([0, 1, 5, 21, 57, 121, 265, 521, 921, 1497, 2521, 4121, 6425, 10521]);
    expect(imageSize(scaleSchedule(1))).toEqual([1024, 1024]);
    expect(imageSize(scaleSchedule(1, '0.25M'))).toEqual([512, 512]);
    expect(imageSize(scaleSchedule(2.0))).toEqual([1440, 720]);
    expect(scaleSchedule(0.5, '0.06M').map(([h, w]) => `${h}x${w}`).join(' ')).toBe('1x1 2x2 2x4 3x6 5x10 8x16 11x22');
  });

  it('picks the nearest template for --ratio H:W (first one on ties)', () => {
    expect(parseRatio('16:9')).toBeCloseTo(16 / 9);
    expect(parseRatio('1.25')).toBe(1.25);
    expect(templateForRatio('1:1')).toBe(1.0);
    expect(templateForRatio('16:9')).toBe(1.75);
    expect(templateForRatio('9:16')).toBe(0.571);
    expect(templateForRatio('4:3')).toBe(1.333);
    expect(templateForRatio('3:4')).toBe(0.75);
    expect(templateForRatio('2:3')).toBe(0.666);
    expect(templateForRatio('1:3')).toBe(0.333);
    expect(templateForRatio('5:1')).toBe(3.0);
    expect(templateForRatio('1:10')).toBe(0.333);
    // Exactly between 1.0 and 1.25: upstream's argmin keeps the earlier template (1.0).
    expect(nearestTemplate(1.125)).toBe(1.0);
    expect(() => parseRatio('wide')).toThrow(/aspect ratio/);
    expect(() => scaleSchedule(1.1)).toThrow(/not an h\/w template/);
  });

  it('reads upstream [1, h, w] lists', () => {
    expect(scheduleFromList([[1, 1, 1], [1, 2, 3]])).toEqual([[1, 1], [2, 3]]);
    expect(() => scheduleFromList([[2, 2, 2]])).toThrow();
  });
});
