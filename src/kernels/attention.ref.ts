/**
 * CPU twin of attention (float64) over contiguous K/V: row r attends to keys 0..positions[r], or
 * with `window` W > 0 (transformers' sliding-window mask) to the keys j with
 * positions[r] - W < j <= positions[r]. k, v: [tokens, kvHeads·headDim]; q: [rows, heads·headDim].
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
): Float64Array {
  const out = new Float64Array(positions.length * heads * headDim);
  const rep = heads / kvHeads;
  const kvDim = kvHeads * headDim;
  positions.forEach((pos, r) => {
    for (let h = 0; h < heads; h++) {
      const kh = Math.floor(h / rep);
      const qb = (r * heads + h) * headDim;
      const lo = window > 0 ? Math.max(0, pos - window + 1) : 0;
      const scores = new Float64Array(pos + 1);
      let max = -Infinity;
      for (let j = lo; j <= pos; j++) {
        let s = 0;
        for (let d = 0; d < headDim; d++)
          s += (q[qb + d] as number) * (k[j * kvDim + kh * headDim + d] as number);
        scores[j] = softcap > 0 ? softcap * Math.tanh((s * scale) / softcap) : s * scale;
        max = Math.max(max, scores[j] as number);
      }
      let sum = 0;
      for (let j = lo; j <= pos; j++) sum += scores[j] = Math.exp((scores[j] as number) - max);
      for (let d = 0; d < headDim; d++) {
        let acc = 0;
        for (let j = lo; j <= pos; j++)
          acc += (scores[j] as number) * (v[j * kvDim + kh * headDim + d] as number);
        out[qb + d] = acc / sum;
      }
    }
  });
  return out;
}
