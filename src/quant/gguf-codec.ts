/**
 * What every GGUF block codec shares: the per-block interface and the little helpers that read
 * and write ggml's f16 fields and pick scales. Split from gguf-blocks.ts so the legacy, K-quant
 * and IQ4 codecs each get a file without importing one another.
 */
import { f16BitsToF32, f32ToF16Bits } from '../io/dtype.js';

/** One block format: decodes a block into float64 and encodes `blockElems` floats into a block. */
export interface BlockCodec {
  /** Writes the block at `src[off..]` as `blockElems` values into `out[o..]`. */
  decode(src: Uint8Array, off: number, out: Float64Array, o: number): void;
  /** Quantizes `x[xo .. xo + blockElems)` into the block at `dst[off..]` (all its bytes). */
  encode(x: Float32Array, xo: number, dst: Uint8Array, off: number): void;
}

export function readF16(b: Uint8Array, off: number): number {
  return f16BitsToF32((b[off] as number) | ((b[off + 1] as number) << 8));
}

/** Stores `v` as f16 (round to nearest even) and returns the stored value, which codes must use. */
export function writeF16(b: Uint8Array, off: number, v: number): number {
  const bits = f32ToF16Bits(v);
  b[off] = bits & 0xff;
  b[off + 1] = bits >>> 8;
  return f16BitsToF32(bits);
}

export function clamp(v: number, lo: number, hi: number): number {
  return v < lo ? lo : v > hi ? hi : v;
}

/**
 * The element of x[xo .. xo + n) with the largest magnitude, sign kept (ties: the first). ggml's
 * symmetric formats divide it by the most negative code so that it lands exactly on that code.
 */
export function signedMax(x: Float32Array, xo: number, n: number): number {
  let best = 0;
  for (let i = 0; i < n; i++) {
    const v = x[xo + i] as number;
    if (Math.abs(v) > Math.abs(best)) best = v;
  }
  return best;
}

/** min and max of x[xo .. xo + n). */
export function range(x: Float32Array, xo: number, n: number): { lo: number; hi: number } {
  let lo = Infinity;
  let hi = -Infinity;
  for (let i = 0; i < n; i++) {
    const v = x[xo + i] as number;
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  return { lo, hi };
}

/** round(v / d) clamped to [lo, hi], or `zero` when d is 0 (an all-zero group). */
export function code(v: number, d: number, lo: number, hi: number, zero: number): number {
  return d === 0 ? zero : clamp(Math.round(v / d), lo, hi);
}
