// STAR's normalised 2D axial RoPE (models/embed_rope.py: compute_axial_cis, apply_rotary_emb).
//
// Every scale spans the same [0, normalize] range: a token at (row r, col c) of a pn×pn scale sits at
// x = c/(pn−1)·normalize, y = r/(pn−1)·normalize (0 when pn = 1). Per head of D channels, the first D/4
// complex pairs (2j, 2j+1) rotate by x·ω_j (the column), the next D/4 by y·ω_j (the row), with
// ω_j = θ^(−4j/D). Upstream computes positions, frequencies and angles in f32 (its table is built outside
// autocast), so the table here rounds each step through f32 too.
//
// The table has the layout of kernels/rope.ts `applyRope` ([L, D/2, 2] = cos, sin). kernels/rope.ts also
// builds 2D tables (`rope2dTable`, angles in float64); this one keeps upstream's f32 rounding of the
// normalised positions, frequencies and angles, which is what the checkpoints saw.

const f = Math.fround;

/** Token positions (x = column, y = row), flattened row-major, of one pn×pn scale: [pn², 2] as (x, y). */
export function scalePositions(pn: number, normalize = 64): Float32Array {
  if (!Number.isInteger(pn) || pn < 1) throw new Error(`scale side ${pn} must be a positive integer`);
  const out = new Float32Array(pn * pn * 2);
  // init_t_xy: t_x / t_x.max() · normalize, only when the scale has more than one token.
  const norm = (i: number) => (pn === 1 ? 0 : f(f(i / (pn - 1)) * normalize));
  for (let r = 0; r < pn; r++) {
    for (let c = 0; c < pn; c++) {
      out[(r * pn + c) * 2] = norm(c);
      out[(r * pn + c) * 2 + 1] = norm(r);
    }
  }
  return out;
}

/** cos/sin table [L, D/2, 2] for positions [L, 2] = (x, y) (already normalised), f32 like upstream. */
export function ropeTable(positions: ArrayLike<number>, headDim: number, theta = 10000): Float32Array {
  if (headDim % 4 !== 0) throw new Error(`RoPE head dim ${headDim} must be a multiple of 4`);
  const quarter = headDim / 4;
  const half = headDim / 2;
  const L = positions.length / 2;
  // freqs = 1 / theta ** (arange(0, dim, 4)[:dim//4] / dim), each op in f32.
  const freqs = Array.from({ length: quarter }, (_, j) => f(1 / f(theta ** f((4 * j) / headDim))));
  const out = new Float32Array(L * half * 2);
  for (let t = 0; t < L; t++) {
    for (let axis = 0; axis < 2; axis++) {
      const p = f(positions[t * 2 + axis]);
      for (let j = 0; j < quarter; j++) {
        const angle = f(p * freqs[j]);
        const o = (t * half + axis * quarter + j) * 2;
        out[o] = Math.cos(angle);
        out[o + 1] = Math.sin(angle);
      }
    }
  }
  return out;
}

/** The table of a whole scale. */
export function scaleRopeTable(pn: number, headDim: number, theta = 10000, normalize = 64): Float32Array {
  return ropeTable(scalePositions(pn, normalize), headDim, theta);
}
