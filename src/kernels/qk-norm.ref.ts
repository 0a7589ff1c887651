/**
 * CPU twin of qk_norm (float64): every q head and k head of each row of the fused qkv rows
 * [m, (heads + 2·kvHeads)·headDim] RMS-normalized with its weight (qw or kw, [headDim]); v kept.
 * Returns a new array.
 */
import { rmsnormRef } from './rmsnorm.ref.js';

export function qkNormRef(
  qkv: ArrayLike<number>,
  m: number,
  heads: number,
  kvHeads: number,
  headDim: number,
  qw: ArrayLike<number>,
  kw: ArrayLike<number>,
  eps: number,
): Float64Array {
  const out = Float64Array.from(qkv);
  const slots = heads + 2 * kvHeads;
  for (let r = 0; r < m; r++) {
    for (let s = 0; s < heads + kvHeads; s++) {
      const at = (r * slots + s) * headDim;
      const y = rmsnormRef(out.subarray(at, at + headDim), s < heads ? qw : kw, 1, headDim, eps);
      out.set(y, at);
    }
  }
  return out;
}
