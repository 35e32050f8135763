// The fixtures' parity measure, shared by every model's parity runner and the tests.

/** f32 arithmetic stays far below this (≈1e-6 on the fixtures); a wrong operation gives 1e-1 or more. */
export const F32_TOL = 1e-3;

/**
 * The bar for the f16 paths (f16 activations and/or an f16 KV cache). Each f16 store rounds by ≤ 2⁻¹¹
 * (4.9e-4) relative, the residual stream and every statistic stay f32, so errors stay near one f16
 * rounding of the largest values: measured worst 4.8e-4 (infinity-tiny) and 5.0e-4 (infinity8b-tiny)
 * over logits, hidden, latent and image (model/infinity/README.md). Deeper real models add layers and
 * outliers, hence 20× room; a wrong operation gives ≥ 1e-1, 10× above the bar.
 */
export const F16_TOL = 1e-2;

/** The parity bar for a precision: F32_TOL only when everything is f32. */
export function parityTolerance(p: { activations?: 'f32' | 'f16'; cacheDtype?: 'f32' | 'f16' }): number {
  return (p.activations ?? 'f32') === 'f32' && (p.cacheDtype ?? 'f32') === 'f32' ? F32_TOL : F16_TOL;
}

export interface ParityEntry {
  key: string;
  /** max|engine − golden| / max|golden| (over the rows compared). */
  error: number;
  /** Pass bar for this key. */
  tol: number;
}

/**
 * max|got − want| / max|want|. With `width` and `rows`, only the rows (of `width` elements) that `rows`
 * accepts are compared — e.g. real tokens, not pad positions. A length mismatch or a NaN is Infinity.
 */
export function relMaxError(got: ArrayLike<number>, want: ArrayLike<number>, width = 1, rows?: (r: number) => boolean): number {
  if (got.length !== want.length) return Infinity;
  let maxErr = 0;
  let maxRef = 0;
  for (let i = 0; i < want.length; i++) {
    if (rows && !rows(Math.floor(i / width))) continue;
    const e = Math.abs(got[i] - want[i]);
    if (!(e <= maxErr)) maxErr = Number.isNaN(e) ? Infinity : e;
    maxRef = Math.max(maxRef, Math.abs(want[i]));
  }
  return maxErr / (maxRef || 1);
}
