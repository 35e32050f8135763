// Inputs shared by the attention kernel tests.

/** Rows of [rows, H·D] normalised per head and multiplied by `mul` (cosine attention inputs). */
export function unitHeads(x: Float32Array, c: number, heads: number, mul = 1): Float32Array {
  const d = c / heads;
  const y = new Float32Array(x.length);
  for (let o = 0; o < x.length; o += d) {
    let ss = 0;
    for (let i = 0; i < d; i++) ss += x[o + i] ** 2;
    const inv = mul / Math.sqrt(ss);
    for (let i = 0; i < d; i++) y[o + i] = x[o + i] * inv;
  }
  return y;
}

/** Offsets [0, l0, l0 + l1, …] of packed sequences of the given lengths (attentionVarlen's qStarts/kStarts). */
export function starts(lens: readonly number[]): number[] {
  return lens.reduce((a, n) => [...a, a[a.length - 1] + n], [0]);
}
