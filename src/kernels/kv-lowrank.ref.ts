/**
 * Float64 twin of kv_lowrank (shaders/kv_lowrank.wgsl): GEAR's rank-r factors of one block's
 * quantization error, by the kernel's power iteration (start at the error's row of largest norm,
 * ITERS steps of v = Eᵀ(E v) normalised, a = E v, deflate with the f16-rounded factors), and the
 * low-rank round trip of a whole 16-row block.
 */
import { f16BitsToF32, f32ToF16Bits } from '../io/dtype.js';
import { kvQuantParams, type KvQuantDtype } from './kv-dtype.js';
import { dequantizeKvRow, quantizeKvRow } from './kv-quant.ref.js';

/** Power iteration steps per factor (the kernel's ITERS). */
export const KV_LOWRANK_ITERS = 4;

const f16 = (x: number) => f16BitsToF32(f32ToF16Bits(x));

export interface LowRankFactors {
  /** [rows][rank], f16-rounded. */
  a: Float64Array;
  /** [rank][cols], f16-rounded. */
  b: Float64Array;
}

/** Rank-`rank` factors of `e` ([rows][cols]) as kv_lowrank computes them, in float64. */
export function lowRankFactors(
  e: ArrayLike<number>,
  rows: number,
  cols: number,
  rank: number,
): LowRankFactors {
  const a = new Float64Array(rows * rank);
  const b = new Float64Array(rank * cols);
  const ej = Float64Array.from(e);
  for (let j = 0; j < rank; j++) {
    let best = -1;
    let bestT = 0;
    for (let t = 0; t < rows; t++) {
      let s = 0;
      for (let d = 0; d < cols; d++) s += (ej[t * cols + d] as number) ** 2;
      if (s > best) {
        best = s;
        bestT = t;
      }
    }
    if (best > 0) {
      let v = Float64Array.from(
        { length: cols },
        (_, d) => (ej[bestT * cols + d] as number) / Math.sqrt(best),
      );
      const ev = (vec: Float64Array) =>
        Float64Array.from({ length: rows }, (_, t) => {
          let s = 0;
          for (let d = 0; d < cols; d++) s += (ej[t * cols + d] as number) * (vec[d] as number);
          return s;
        });
      for (let it = 0; it < KV_LOWRANK_ITERS; it++) {
        const u = ev(v);
        const nv = Float64Array.from({ length: cols }, (_, d) => {
          let s = 0;
          for (let t = 0; t < rows; t++) s += (ej[t * cols + d] as number) * (u[t] as number);
          return s;
        });
        const n2 = nv.reduce((s, x) => s + x * x, 0);
        if (n2 <= 0) break;
        v = nv.map((x) => x / Math.sqrt(n2));
      }
      const u = ev(v);
      for (let t = 0; t < rows; t++) a[t * rank + j] = f16(u[t] as number);
      for (let d = 0; d < cols; d++) b[j * cols + d] = f16(v[d] as number);
    }
    // Deflate with the stored (rounded) factor, as the kernel does.
    for (let t = 0; t < rows; t++) {
      for (let d = 0; d < cols; d++) {
        ej[t * cols + d] =
          (ej[t * cols + d] as number) - (a[t * rank + j] as number) * (b[j * cols + d] as number);
      }
    }
  }
  return { a, b };
}

/** A·B ([rows][cols]) of a factor pair. */
export function lowRankProduct(f: LowRankFactors, rows: number, cols: number, rank: number): Float64Array {
  const out = new Float64Array(rows * cols);
  for (let t = 0; t < rows; t++) {
    for (let d = 0; d < cols; d++) {
      let s = 0;
      for (let j = 0; j < rank; j++) s += (f.a[t * rank + j] as number) * (f.b[j * cols + d] as number);
      out[t * cols + d] = s;
    }
  }
  return out;
}

/**
 * What a low-rank `dtype` cache gives back for one whole block written in one step (`x`, 16 rows
 * of `headDim`, read by a query of a later block): each row's codes and outliers plus the block's
 * factors.
 */
export function kvBlockRoundTrip(x: ArrayLike<number>, dtype: KvQuantDtype, headDim: number): Float64Array {
  const rows = Math.floor(x.length / headDim);
  const { rank } = kvQuantParams(dtype);
  const out = new Float64Array(rows * headDim);
  for (let t = 0; t < rows; t++) {
    const row = Array.from({ length: headDim }, (_, d) => x[t * headDim + d] as number);
    out.set(dequantizeKvRow(quantizeKvRow(row, dtype)), t * headDim);
  }
  if (rank === 0) return out;
  const e = Float64Array.from(out, (y, i) => (x[i] as number) - y);
  const ab = lowRankProduct(lowRankFactors(e, rows, headDim, rank), rows, headDim, rank);
  return out.map((y, i) => y + (ab[i] as number));
}
