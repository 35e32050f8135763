// Eigenvalues of a real symmetric matrix in float64: Householder reduction to tridiagonal form, then the
// implicit QL iteration with Wilkinson shifts (the classic tred2/tqli pair, values only). O(n³): about 3 s
// for n = 1024 in Node, so fine for offline rank calibration, where n = min(tokens, width).

/** Eigenvalues of the symmetric n×n matrix `a` (row-major; only read, copied), sorted descending. */
export function symmetricEigenvalues(a: ArrayLike<number>, n: number): Float64Array {
  if (a.length !== n * n) throw new Error(`symmetricEigenvalues: ${a.length} values for a ${n}×${n} matrix`);
  const m = Float64Array.from(a);
  const d = new Float64Array(n);
  const e = new Float64Array(n);
  tridiagonalize(m, n, d, e);
  tridiagonalQl(d, e, n);
  return d.sort().reverse();
}

/** Householder: m → tridiagonal with diagonal d and sub-diagonal e[1..n−1] (e[0] = 0). Destroys m. */
function tridiagonalize(m: Float64Array, n: number, d: Float64Array, e: Float64Array): void {
  for (let i = n - 1; i > 0; i--) {
    const l = i - 1;
    const ri = i * n;
    let h = 0;
    if (l > 0) {
      let scale = 0;
      for (let k = 0; k <= l; k++) scale += Math.abs(m[ri + k]);
      if (scale === 0) {
        e[i] = m[ri + l];
      } else {
        for (let k = 0; k <= l; k++) {
          m[ri + k] /= scale;
          h += m[ri + k] * m[ri + k];
        }
        let f = m[ri + l];
        let g = f >= 0 ? -Math.sqrt(h) : Math.sqrt(h);
        e[i] = scale * g;
        h -= f * g;
        m[ri + l] = f - g;
        f = 0;
        for (let j = 0; j <= l; j++) {
          // g = (A·u)_j over the lower triangle, A symmetric.
          g = 0;
          const rj = j * n;
          for (let k = 0; k <= j; k++) g += m[rj + k] * m[ri + k];
          for (let k = j + 1; k <= l; k++) g += m[k * n + j] * m[ri + k];
          e[j] = g / h;
          f += e[j] * m[ri + j];
        }
        const hh = f / (h + h);
        for (let j = 0; j <= l; j++) {
          f = m[ri + j];
          g = e[j] - hh * f;
          e[j] = g;
          const rj = j * n;
          for (let k = 0; k <= j; k++) m[rj + k] -= f * e[k] + g * m[ri + k];
        }
      }
    } else {
      e[i] = m[ri + l];
    }
    d[i] = h;
  }
  for (let i = 0; i < n; i++) d[i] = m[i * n + i];
}

/** Implicit QL on the tridiagonal (d, e with e[i] coupling i−1 and i); eigenvalues left in d. */
function tridiagonalQl(d: Float64Array, e: Float64Array, n: number): void {
  for (let i = 1; i < n; i++) e[i - 1] = e[i];
  if (n > 0) e[n - 1] = 0;
  for (let l = 0; l < n; l++) {
    let iter = 0;
    let m: number;
    do {
      for (m = l; m < n - 1; m++) {
        const dd = Math.abs(d[m]) + Math.abs(d[m + 1]);
        if (Math.abs(e[m]) <= Number.EPSILON * dd) break;
      }
      if (m !== l) {
        if (++iter > 60) throw new Error('symmetricEigenvalues: no convergence');
        let g = (d[l + 1] - d[l]) / (2 * e[l]);
        let r = Math.hypot(g, 1);
        g = d[m] - d[l] + e[l] / (g + (g >= 0 ? r : -r));
        let s = 1;
        let c = 1;
        let p = 0;
        let i: number;
        for (i = m - 1; i >= l; i--) {
          const f = s * e[i];
          const b = c * e[i];
          r = Math.hypot(f, g);
          e[i + 1] = r;
          if (r === 0) {
            d[i + 1] -= p;
            e[m] = 0;
            break;
          }
          s = f / r;
          c = g / r;
          g = d[i + 1] - p;
          r = (d[i] - g) * s + 2 * c * b;
          p = s * r;
          d[i + 1] = g + p;
          g = c * r - b;
        }
        if (r === 0 && i >= l) continue;
        d[l] -= p;
        e[l] = g;
        e[m] = 0;
      }
    } while (m !== l);
  }
}

/** Smallest k whose leading eigenvalues (descending, negatives from rounding as 0) hold ≥ α of the total. */
export function energyRank(eigenvalues: ArrayLike<number>, alpha: number): number {
  let total = 0;
  for (let i = 0; i < eigenvalues.length; i++) total += Math.max(0, eigenvalues[i]);
  if (total === 0) return 1;
  let acc = 0;
  for (let i = 0; i < eigenvalues.length; i++) {
    acc += Math.max(0, eigenvalues[i]);
    if (acc >= alpha * total * (1 - 1e-12)) return i + 1;
  }
  return eigenvalues.length;
}
