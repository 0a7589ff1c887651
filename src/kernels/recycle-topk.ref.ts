/**
 * CPU twin of recycle_topk: the table after one step. For each logit row (the last row of a step
 * with a given input token wins), its input token's table row becomes the k best indices of the
 * row's logits: larger value first, the lower index among ties, NaN and -inf never counted;
 * entries past the counted values are RECYCLE_NONE. Input tokens >= n change nothing.
 */
const NONE = 0xffffffff;

export function recycleTopkRef(
  table: Uint32Array,
  logits: ArrayLike<number>,
  inputTokens: readonly number[],
  n: number,
  k: number,
): Uint32Array {
  const out = table.slice();
  inputTokens.forEach((tok, r) => {
    if (tok >= n || inputTokens.indexOf(tok, r + 1) >= 0) return;
    const counted: number[] = [];
    for (let i = 0; i < n; i++) {
      const v = logits[r * n + i] as number;
      if (!Number.isNaN(v) && v !== -Infinity) counted.push(i);
    }
    counted.sort((a, b) => (logits[r * n + b] as number) - (logits[r * n + a] as number) || a - b);
    for (let j = 0; j < k; j++) out[tok * k + j] = counted[j] ?? NONE;
  });
  return out;
}
