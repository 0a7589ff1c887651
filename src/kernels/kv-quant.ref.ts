/**
 * Float64 twin of the quantized KV formats (kv-dtype.ts): kv_quantize's rule for one token row,
 * the decoder of the cache's words (what kv_k1/kv_v1/kv_k4/kv_v4 compute), and the round trip the
 * reference model applies to every K/V row it caches. The scale and min are rounded to f16 as the
 * kernel stores them; codes are rounded half to even, as WGSL's round().
 */
import { f16BitsToF32, f32ToF16Bits } from '../io/dtype.js';
import { kvCodeWords, kvFactorWords, kvQuantParams, type KvQuantDtype } from './kv-dtype.js';

export interface QuantRow {
  codes: Uint8Array;
  /** f16-rounded scale and min: x ≈ code · scale + min. */
  scale: number;
  min: number;
  /** GEAR's sparse part: channel and f16-rounded residual added to its dequantized code. */
  outliers: { ch: number; resid: number }[];
}

const f16 = (x: number) => f16BitsToF32(f32ToF16Bits(x));

function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** The KV_OUTLIERS channels of largest |x|, the lowest channel first among equals. */
function pickOutliers(x: ArrayLike<number>, count: number): number[] {
  const picked: number[] = [];
  for (let o = 0; o < count; o++) {
    let best = 0;
    let bestAbs = -1;
    for (let d = 0; d < x.length; d++) {
      const a = Math.abs(x[d] as number);
      if (!picked.includes(d) && a > bestAbs) {
        best = d;
        bestAbs = a;
      }
    }
    picked.push(best);
  }
  return picked;
}

/** The code of `v` for a row's (scale, min). */
export function kvCode(v: number, scale: number, min: number, bits: number): number {
  const inv = scale > 0 ? 1 / scale : 0;
  return Math.min(2 ** bits - 1, Math.max(0, roundHalfEven((v - min) * inv)));
}

/** kv_quantize's rule for one token row (head_dim values), in float64. */
export function quantizeKvRow(x: ArrayLike<number>, dtype: KvQuantDtype): QuantRow {
  const { bits, outliers } = kvQuantParams(dtype);
  const out = pickOutliers(x, outliers);
  let lo = Infinity;
  let hi = -Infinity;
  for (let d = 0; d < x.length; d++) {
    if (out.includes(d)) continue;
    lo = Math.min(lo, x[d] as number);
    hi = Math.max(hi, x[d] as number);
  }
  const scale = f16((hi - lo) / (2 ** bits - 1));
  const min = f16(lo);
  const codes = Uint8Array.from({ length: x.length }, (_, d) => kvCode(x[d] as number, scale, min, bits));
  return {
    codes,
    scale,
    min,
    outliers: out.map((ch) => ({
      ch,
      resid: f16((x[ch] as number) - ((codes[ch] as number) * scale + min)),
    })),
  };
}

/** The values a quantized row stands for. */
export function dequantizeKvRow(q: QuantRow): Float64Array {
  const x = Float64Array.from(q.codes, (c) => c * q.scale + q.min);
  for (const o of q.outliers) x[o.ch] = (x[o.ch] as number) + o.resid;
  return x;
}

/** quantize -> dequantize: what a `dtype` cache gives back for row `x`. */
export function kvRoundTrip(x: ArrayLike<number>, dtype: KvQuantDtype): Float64Array {
  return dequantizeKvRow(quantizeKvRow(x, dtype));
}

/** The u32 words of a row as the cache stores it. */
export function encodeKvRow(q: QuantRow, dtype: KvQuantDtype): Uint32Array {
  const { bits, outliers } = kvQuantParams(dtype);
  const n = q.codes.length;
  const cw = kvCodeWords(bits, n);
  const w = new Uint32Array(cw + 1 + outliers);
  for (let d = 0; d < n; d++) {
    const at = Math.floor((d * bits) / 32);
    w[at] = ((w[at] as number) | ((q.codes[d] as number) << ((d * bits) % 32))) >>> 0;
  }
  w[cw] = (f32ToF16Bits(q.scale) | (f32ToF16Bits(q.min) << 16)) >>> 0;
  q.outliers.forEach((o, i) => {
    w[cw + 1 + i] = ((f32ToF16Bits(o.resid) << 16) | o.ch) >>> 0;
  });
  return w;
}

/** Reads a row back from its words (`headDim` values). */
export function decodeKvRow(words: Uint32Array, dtype: KvQuantDtype, headDim: number): QuantRow {
  const { bits, outliers } = kvQuantParams(dtype);
  const cw = kvCodeWords(bits, headDim);
  const mask = 2 ** bits - 1;
  const codes = Uint8Array.from(
    { length: headDim },
    (_, d) => ((words[Math.floor((d * bits) / 32)] as number) >>> ((d * bits) % 32)) & mask,
  );
  const sm = words[cw] as number;
  return {
    codes,
    scale: f16BitsToF32(sm & 0xffff),
    min: f16BitsToF32(sm >>> 16),
    outliers: Array.from({ length: outliers }, (_, i) => {
      const o = words[cw + 1 + i] as number;
      return { ch: o & 0xffff, resid: f16BitsToF32(o >>> 16) };
    }),
  };
}

/**
 * Rows of `headDim` values quantized and packed as a `dtype` cache stores them, in the cache's
 * layout ([block][kv head] groups of 16 rows: a multiple of 16 rows for the low-rank formats,
 * whose groups end with their factors, left zero here: no low-rank part).
 */
export function encodeKvRows(x: ArrayLike<number>, dtype: KvQuantDtype, headDim: number): Uint32Array {
  const rows = Math.floor(x.length / headDim);
  const { bits, outliers, rank } = kvQuantParams(dtype);
  const rw = kvCodeWords(bits, headDim) + 1 + outliers;
  const fw = kvFactorWords(rank, headDim);
  if (fw > 0 && rows % 16 !== 0) throw new RangeError(`encodeKvRows: ${rows} rows is not whole blocks`);
  const out = new Uint32Array(rows * rw + (rows / 16) * fw);
  const row = new Float64Array(headDim);
  for (let r = 0; r < rows; r++) {
    for (let d = 0; d < headDim; d++) row[d] = x[r * headDim + d] as number;
    out.set(
      encodeKvRow(quantizeKvRow(row, dtype), dtype),
      Math.floor(r / 16) * (16 * rw + fw) + (r % 16) * rw,
    );
  }
  return out;
}
