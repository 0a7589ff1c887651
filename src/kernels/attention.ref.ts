/**
 * CPU twin of attention (float64) over contiguous K/V: row r attends to keys 0..positions[r], or
 * with `window` W > 0 (transformers' sliding-window mask) to the keys j with
 * positions[r] - W < j <= positions[r]. k, v: [tokens, kvHeads·headDim]; q: [rows, heads·headDim].
 * With `tree[r]` = { base, mask } the row is a token tree's node (row-info.ts): it sees keys
 * j < base and base + b for each bit b of mask, and key j's position (for the window) is j below
 * base, base + (its rank among the mask's bits) above.
 */
export function attentionRef(
  q: ArrayLike<number>,
  k: ArrayLike<number>,
  v: ArrayLike<number>,
  positions: readonly number[],
  heads: number,
  kvHeads: number,
  headDim: number,
  scale: number,
  window = 0,
  /** > 0: scores become softcap · tanh(score / softcap) before the softmax (Gemma 2). */
  softcap = 0,
  tree: readonly ({ base: number; mask: number } | undefined)[] = [],
): Float64Array {
  const out = new Float64Array(positions.length * heads * headDim);
  const rep = heads / kvHeads;
  const kvDim = kvHeads * headDim;
  positions.forEach((pos, r) => {
    for (let h = 0; h < heads; h++) {
      const kh = Math.floor(h / rep);
      const qb = (r * heads + h) * headDim;
      const lo = window > 0 ? Math.max(0, pos - window + 1) : 0;
      const seen = keysSeen(pos, lo, tree[r]);
      const scores = new Float64Array(seen.length);
      let max = -Infinity;
      for (const [i, j] of seen.entries()) {
        let s = 0;
        for (let d = 0; d < headDim; d++)
          s += (q[qb + d] as number) * (k[j * kvDim + kh * headDim + d] as number);
        scores[i] = softcap > 0 ? softcap * Math.tanh((s * scale) / softcap) : s * scale;
        max = Math.max(max, scores[i] as number);
      }
      let sum = 0;
      for (let i = 0; i < seen.length; i++) sum += scores[i] = Math.exp((scores[i] as number) - max);
      for (let d = 0; d < headDim; d++) {
        let acc = 0;
        for (const [i, j] of seen.entries())
          acc += (scores[i] as number) * (v[j * kvDim + kh * headDim + d] as number);
        out[qb + d] = acc / sum;
      }
    }
  });
  return out;
}

/** The keys a row at `pos` sees (window from position `lo`), plain or as a tree node. */
function keysSeen(pos: number, lo: number, tree: { base: number; mask: number } | undefined): number[] {
  if (!tree) return Array.from({ length: pos + 1 - lo }, (_, i) => lo + i);
  const out: number[] = [];
  for (let j = lo; j < tree.base; j++) out.push(j);
  let rank = 0;
  for (let b = 0; b < 32; b++) {
    if (((tree.mask >>> b) & 1) === 0) continue;
    if (tree.base + rank >= lo) out.push(tree.base + b);
    rank++;
  }
  return out;
}
