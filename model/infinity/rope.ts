// 2D RoPE of Infinity, "normalized by hw = 2" (upstream `precompute_rope2d_freqs_grid`): every scale's
// token (i, j) takes the position of the template's final 1M grid it lands on,
// round(i·uph/ph), round(j·upw/pw), computed in f32 and rounded half to even (torch.round).
// Many non-square templates hit exact .5 values (70/20 = 3.5, 45/2 = 22.5), so Math.round is wrong here.

import type { Grid } from '../../sampler/schedule.js';

const f32 = Math.fround;

/** Round half to even, as torch.round / numpy.round. */
export function roundHalfEven(x: number): number {
  const r = Math.round(x);
  // Math.round rounds .5 up; step back to the even neighbour on exact ties.
  return r - x === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** Positions along one axis of a scale with `n` cells on a final axis of `full` cells. */
export function axisPositions(n: number, full: number): number[] {
  const step = f32(full / n);
  return Array.from({ length: n }, (_, i) => roundHalfEven(f32(f32(i) * step)));
}

/**
 * (row, col) position of every token of a schedule, scales concatenated, tokens row-major within a scale.
 * `finalGrid` is the last grid of the template's 1M schedule (`ropeGrid(template)`), whatever prefix runs.
 */
export function ropePositions(schedule: readonly Grid[], finalGrid: Grid): Int32Array {
  const total = schedule.reduce((n, [h, w]) => n + h * w, 0);
  const out = new Int32Array(total * 2);
  let t = 0;
  for (const [h, w] of schedule) {
    const rows = axisPositions(h, finalGrid[0]);
    const cols = axisPositions(w, finalGrid[1]);
    for (let i = 0; i < h; i++) {
      for (let j = 0; j < w; j++, t++) {
        out[2 * t] = rows[i];
        out[2 * t + 1] = cols[j];
      }
    }
  }
  return out;
}

/**
 * Cos/sin table [L, headDim/2, 2] for applyRope. Pair p of the first half rotates with the row
 * (angle row·θ_p), pair p of the second half with the column (col·θ_{p−half/2}), θ_k = base^(−2k/half)
 * with half = headDim/2. Each step is rounded to f32 like the upstream float32 tensors.
 */
export function ropeTable(positions: Int32Array, headDim: number, base = 10000): Float32Array {
  const half = headDim / 2;
  if (!Number.isInteger(half) || half % 2 !== 0) throw new Error(`2D RoPE needs a head dim divisible by 4, got ${headDim}`);
  const quarter = half / 2;
  const invFreq = Array.from({ length: quarter }, (_, k) => f32(1 / f32(base ** f32((2 * k) / half))));
  const tokens = positions.length / 2;
  const out = new Float32Array(tokens * half * 2);
  for (let t = 0; t < tokens; t++) {
    for (let p = 0; p < half; p++) {
      const pos = p < quarter ? positions[2 * t] : positions[2 * t + 1];
      const angle = f32(pos * invFreq[p % quarter]);
      out[(t * half + p) * 2] = Math.cos(angle);
      out[(t * half + p) * 2 + 1] = Math.sin(angle);
    }
  }
  return out;
}
