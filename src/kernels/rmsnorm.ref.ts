/** CPU twin of rmsnorm (float64): y = w ⊙ x / sqrt(mean(x²) + eps), row by row. */
export function rmsnormRef(
  x: ArrayLike<number>,
  w: ArrayLike<number>,
  rows: number,
  hidden: number,
  eps: number,
) {
  const y = new Float64Array(rows * hidden);
  for (let r = 0; r < rows; r++) {
    let ss = 0;
    for (let j = 0; j < hidden; j++) ss += (x[r * hidden + j] as number) ** 2;
    const inv = 1 / Math.sqrt(ss / hidden + eps);
    for (let j = 0; j < hidden; j++)
      y[r * hidden + j] = (x[r * hidden + j] as number) * inv * (w[j] as number);
  }
  return y;
}
