/** CPU twin of embed: rows of the table gathered by token id, times `scale`. */
export function embedRef(
  table: ArrayLike<number>,
  cols: number,
  ids: readonly number[],
  /** Multiplier of every row (Gemma's √hidden), default 1. */
  scale = 1,
): Float64Array {
  const out = new Float64Array(ids.length * cols);
  ids.forEach((id, m) => {
    for (let j = 0; j < cols; j++) out[m * cols + j] = (table[id * cols + j] as number) * scale;
  });
  return out;
}
