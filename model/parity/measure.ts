// The fixtures' parity measure, shared by every model's parity runner and the tests.

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
