/** CPU twin of matmul: Y[m, n] = Σ_k X[m, k]·W[n, k] (+ bias[n]) (+ Y[m, n]), float64 sums. */
export function matmulRef(
  x: ArrayLike<number>,
  w: ArrayLike<number>,
  m: number,
  n: number,
  k: number,
  bias?: ArrayLike<number>,
  yIn?: ArrayLike<number>,
): Float64Array {
  const y = new Float64Array(m * n);
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < n; j++) {
      let s = 0;
      for (let t = 0; t < k; t++) s += (x[i * k + t] as number) * (w[j * k + t] as number);
      if (bias) s += bias[j] as number;
      if (yIn) s += yIn[i * n + j] as number;
      y[i * n + j] = s;
    }
  }
  return y;
}
