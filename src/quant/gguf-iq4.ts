/**
 * ggml's IQ4 formats: 4-bit codes that index a fixed non-linear table of 16 levels (denser near
 * zero, where weights cluster) instead of standing for evenly spaced values.
 *   IQ4_NL  blocks of 32: 0 d (f16), [2,18) nibbles as in Q4_0 (byte j: element j low, j + 16
 *           high); value d·T[q].
 *   IQ4_XS  blocks of 256: 0 d (f16), 2 scales_h (u16), [4,8) scales_l, [8,136) nibbles, 16 per
 *           sub-block of 32 as in IQ4_NL. Sub-block i's six-bit scale is nibble i%2 of
 *           scales_l[i/2] with bits 2i..2i+1 of scales_h on top; value d·(scale − 32)·T[q].
 * The quantizers map each (sub-)block's signed extreme onto T[0] = −127 and pick the nearest level
 * for every weight: plain rounding, not llama.cpp's scale search.
 */
import { code, readF16, signedMax, writeF16, type BlockCodec } from './gguf-codec.js';

/** The 16 levels (ggml's kvalues_iq4nl). */
export const IQ4_LEVELS: readonly number[] = [
  -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

/** The level index nearest to v (levels are in increasing order). */
function nearestLevel(v: number): number {
  let best = 0;
  for (let i = 1; i < 16; i++) {
    if (Math.abs((IQ4_LEVELS[i] as number) - v) < Math.abs((IQ4_LEVELS[best] as number) - v)) best = i;
  }
  return best;
}

/** 32 weights at x[xo..] with step d into 16 nibble bytes at dst[off..]. */
function putLevels(x: Float32Array, xo: number, d: number, dst: Uint8Array, off: number): void {
  for (let j = 0; j < 16; j++) {
    const a = d === 0 ? 8 : nearestLevel((x[xo + j] as number) / d);
    const b = d === 0 ? 8 : nearestLevel((x[xo + j + 16] as number) / d);
    dst[off + j] = a | (b << 4);
  }
}

function getLevels(src: Uint8Array, off: number, d: number, out: Float64Array, o: number): void {
  for (let j = 0; j < 16; j++) {
    const b = src[off + j] as number;
    out[o + j] = d * (IQ4_LEVELS[b & 15] as number);
    out[o + j + 16] = d * (IQ4_LEVELS[b >> 4] as number);
  }
}

export const IQ4_NL: BlockCodec = {
  decode(src, off, out, o) {
    getLevels(src, off + 2, readF16(src, off), out, o);
  },
  encode(x, xo, dst, off) {
    const d = writeF16(dst, off, signedMax(x, xo, 32) / (IQ4_LEVELS[0] as number));
    putLevels(x, xo, d, dst, off + 2);
  },
};

export const IQ4_XS: BlockCodec = {
  decode(src, off, out, o) {
    const d = readF16(src, off);
    const sh = (src[off + 2] as number) | ((src[off + 3] as number) << 8);
    for (let i = 0; i < 8; i++) {
      const low = ((src[off + 4 + (i >> 1)] as number) >> (4 * (i & 1))) & 15;
      const ls = low | (((sh >> (2 * i)) & 3) << 4);
      getLevels(src, off + 8 + 16 * i, d * (ls - 32), out, o + 32 * i);
    }
  },
  encode(x, xo, dst, off) {
    const steps = new Float64Array(8);
    let maxAbs = 0;
    for (let i = 0; i < 8; i++) {
      steps[i] = signedMax(x, xo + 32 * i, 32) / (IQ4_LEVELS[0] as number);
      maxAbs = Math.max(maxAbs, Math.abs(steps[i] as number));
    }
    const d = writeF16(dst, off, maxAbs / 31);
    let sh = 0;
    dst.fill(0, off + 4, off + 8);
    for (let i = 0; i < 8; i++) {
      const ls = code(steps[i] as number, d, -31, 31, 0) + 32;
      dst[off + 4 + (i >> 1)] = (dst[off + 4 + (i >> 1)] as number) | ((ls & 15) << (4 * (i & 1)));
      sh |= (ls >> 4) << (2 * i);
      putLevels(x, xo + 32 * i, d * (ls - 32), dst, off + 8 + 16 * i);
    }
    dst[off + 2] = sh & 0xff;
    dst[off + 3] = sh >> 8;
  },
};
