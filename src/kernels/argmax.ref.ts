/** CPU twin of argmax: the first index of the maximum, NaN never wins (0 if all are NaN). */
export function argmaxRef(row: ArrayLike<number>): number {
  let best = 0;
  let bv = -Infinity;
  let found = false;
  for (let i = 0; i < row.length; i++) {
    const v = row[i] as number;
    if (Number.isNaN(v)) continue;
    if (!found || v > bv) {
      bv = v;
      best = i;
      found = true;
    }
  }
  return best;
}
