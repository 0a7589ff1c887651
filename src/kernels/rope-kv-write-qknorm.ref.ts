/**
 * CPU twin of rope_kv_write_qknorm (float64): every q and k head of the fused qkv rows
 * [m, (heads + 2·kvHeads)·headDim] RMS-normalized with its weight (qkNormRef), then q and k
 * rotated (ropeRef); returns what the kernel writes: q [m, heads·headDim], and k and v
 * [m, kvHeads·headDim] (into the cache at each row's slot).
 */
import { qkNormRef } from './qk-norm.ref.js';
import { ropeRef, type RopeAngles } from './rope.ref.js';

export function ropeKvWriteQkNormRef(
  qkv: ArrayLike<number>,
  positions: readonly number[],
  heads: number,
  kvHeads: number,
  headDim: number,
  rope: ArrayLike<number> | RopeAngles,
  qw: ArrayLike<number>,
  kw: ArrayLike<number>,
  eps: number,
): { q: Float64Array; k: Float64Array; v: Float64Array } {
  const m = positions.length;
  const normed = qkNormRef(qkv, m, heads, kvHeads, headDim, qw, kw, eps);
  const width = (heads + 2 * kvHeads) * headDim;
  const part = (from: number, cols: number) => {
    const out = new Float64Array(m * cols);
    for (let r = 0; r < m; r++) out.set(normed.subarray(r * width + from, r * width + from + cols), r * cols);
    return out;
  };
  const qDim = heads * headDim;
  const kvDim = kvHeads * headDim;
  return {
    q: ropeRef(part(0, qDim), positions, heads, headDim, rope),
    k: ropeRef(part(qDim, kvDim), positions, kvHeads, headDim, rope),
    v: part(qDim + kvDim, kvDim),
  };
}
