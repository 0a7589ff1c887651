/**
 * ggml's K-quants: super-blocks of 256 weights with one f16 super-scale d (and an f16 dmin for the
 * offset kinds) and small per-sub-block scales. Layouts, by byte offset in the block:
 *   Q2_K  [0,16) sub-block (scale | min << 4) for 16 sub-blocks of 16, [16,80) 2-bit codes,
 *         80 d, 82 dmin. Element e: code (qs[32h + e%32] >> 2·((e%128)/32)) & 3 with h = e/128;
 *         value d·(sc & 15)·q − dmin·(sc >> 4), sub-block e/16.
 *   Q3_K  [0,32) high-bit mask, [32,96) 2-bit codes (same walk as Q2_K), [96,108) 16 six-bit
 *         scales, 108 d. The mask bit 4h + (e%128)/32 of byte e%32 set means the code is the low
 *         two bits, clear means low − 4; value d·(scale − 32)·q, scale of sub-block e/16: its low
 *         nibble is byte i (i < 8) or the high nibble of byte i − 8, its top two bits are bits
 *         2·(i/4) of byte 8 + i%4 (of the 12 scale bytes).
 *   Q4_K  0 d, 2 dmin, [4,16) 8 six-bit (scale, min) pairs, [16,144) nibbles: byte 32g + l holds
 *         element 64g + l (low) and 64g + 32 + l (high); value d·sc·q − dmin·m, sub-block e/32.
 *         Pair j < 4: sc = b[j] & 63, m = b[j+4] & 63; j ≥ 4: sc = (b[j+4] & 15) | (b[j−4] >> 6) << 4,
 *         m = (b[j+4] >> 4) | (b[j] >> 6) << 4.
 *   Q5_K  Q4_K's header, [16,48) high bits (bit 2g of byte l for element 64g + l, bit 2g + 1 for
 *         64g + 32 + l), [48,176) nibbles as Q4_K; q gains 16 when its high bit is set.
 *   Q6_K  [0,128) low nibbles, [128,192) 2-bit highs, [192,208) int8 scales, 208 d. Element
 *         e = 128h + 32t + l: low nibble of byte 64h + l + 32·(t & 1), high nibble when t ≥ 2; its
 *         top bits are bits 2t of byte 128 + 32h + l; value d·scale[e/16]·(q − 32).
 * The quantizers are plain round-to-nearest (per sub-block range, then the sub-block scales
 * rounded against a super-scale), valid blocks for tests and conversion, not llama.cpp's
 * error-minimising search.
 */
import { clamp, code, range, readF16, signedMax, writeF16, type BlockCodec } from './gguf-codec.js';

/** Q4_K / Q5_K (scale, min) pair j from the 12 packed bytes at `off`. */
function scaleMinK4(b: Uint8Array, off: number, j: number): { sc: number; m: number } {
  if (j < 4) return { sc: (b[off + j] as number) & 63, m: (b[off + j + 4] as number) & 63 };
  const a = b[off + j + 4] as number;
  return {
    sc: (a & 15) | (((b[off + j - 4] as number) >> 6) << 4),
    m: (a >> 4) | (((b[off + j] as number) >> 6) << 4),
  };
}

function putScaleMinK4(b: Uint8Array, off: number, sc: ArrayLike<number>, m: ArrayLike<number>): void {
  for (let j = 0; j < 4; j++) {
    const sh = sc[j + 4] as number;
    const mh = m[j + 4] as number;
    b[off + j] = (sc[j] as number) | ((sh >> 4) << 6);
    b[off + j + 4] = (m[j] as number) | ((mh >> 4) << 6);
    b[off + j + 8] = (sh & 15) | ((mh & 15) << 4);
  }
}

/** Q3_K's six-bit scale i (0..15, before the −32) from the 12 bytes at `off`. */
function scaleQ3(b: Uint8Array, off: number, i: number): number {
  const low = i < 8 ? (b[off + i] as number) & 15 : (b[off + i - 8] as number) >> 4;
  const high = ((b[off + 8 + (i % 4)] as number) >> (2 * Math.floor(i / 4))) & 3;
  return low | (high << 4);
}

function putScalesQ3(b: Uint8Array, off: number, raw: ArrayLike<number>): void {
  for (let i = 0; i < 12; i++) b[off + i] = 0;
  for (let i = 0; i < 16; i++) {
    const v = raw[i] as number;
    if (i < 8) b[off + i] = (b[off + i] as number) | (v & 15);
    else b[off + i - 8] = (b[off + i - 8] as number) | ((v & 15) << 4);
    const o = off + 8 + (i % 4);
    b[o] = (b[o] as number) | ((v >> 4) << (2 * Math.floor(i / 4)));
  }
}

/**
 * Offset quantization of `subs` sub-blocks of `len` (x ≈ d·sc·q − dmin·m, q ∈ 0..qmax, sc and m
 * in 0..smax): each sub-block's range widened to include 0 gives its ideal step and minimum; d and
 * dmin are the largest of them over smax, stored as f16 at `dOff` / `dOff + 2`.
 */
function offsetBlock(
  x: Float32Array,
  xo: number,
  dst: Uint8Array,
  dOff: number,
  subs: number,
  len: number,
  qmax: number,
  smax: number,
): { sc: Uint8Array; m: Uint8Array; q: Uint8Array } {
  const steps = new Float64Array(subs);
  const mins = new Float64Array(subs);
  let maxStep = 0;
  let maxMin = 0;
  for (let s = 0; s < subs; s++) {
    const { lo, hi } = range(x, xo + s * len, len);
    const l = Math.min(lo, 0);
    steps[s] = (hi - l) / qmax;
    mins[s] = -l;
    maxStep = Math.max(maxStep, steps[s] as number);
    maxMin = Math.max(maxMin, -l);
  }
  const d = writeF16(dst, dOff, maxStep / smax);
  const dmin = writeF16(dst, dOff + 2, maxMin / smax);
  const sc = new Uint8Array(subs);
  const m = new Uint8Array(subs);
  const q = new Uint8Array(subs * len);
  for (let s = 0; s < subs; s++) {
    sc[s] = code(steps[s] as number, d, 0, smax, 0);
    m[s] = code(mins[s] as number, dmin, 0, smax, 0);
    const step = d * (sc[s] as number);
    const mn = dmin * (m[s] as number);
    for (let i = 0; i < len; i++)
      q[s * len + i] = code((x[xo + s * len + i] as number) + mn, step, 0, qmax, 0);
  }
  return { sc, m, q };
}

/**
 * Symmetric quantization of 16 sub-blocks of 16 (x ≈ d·sc·q, q ∈ −neg..neg−1, sc ∈ −smax..smax):
 * each sub-block's signed extreme maps onto −neg; d = the largest |step| / smax, stored at `dOff`.
 */
function symmetricBlock(
  x: Float32Array,
  xo: number,
  dst: Uint8Array,
  dOff: number,
  neg: number,
  smax: number,
): { sc: Int8Array; q: Int8Array } {
  const steps = new Float64Array(16);
  let maxAbs = 0;
  for (let s = 0; s < 16; s++) {
    steps[s] = signedMax(x, xo + s * 16, 16) / -neg;
    maxAbs = Math.max(maxAbs, Math.abs(steps[s] as number));
  }
  const d = writeF16(dst, dOff, maxAbs / smax);
  const sc = new Int8Array(16);
  const q = new Int8Array(256);
  for (let s = 0; s < 16; s++) {
    sc[s] = code(steps[s] as number, d, -smax, smax, 0);
    const step = d * (sc[s] as number);
    for (let i = 0; i < 16; i++) q[s * 16 + i] = code(x[xo + s * 16 + i] as number, step, -neg, neg - 1, 0);
  }
  return { sc, q };
}

/** Q2_K / Q3_K's 2-bit code byte and shift for element e. */
function twoBitAt(e: number): { byte: number; shift: number } {
  return { byte: 32 * Math.floor(e / 128) + (e % 32), shift: 2 * Math.floor((e % 128) / 32) };
}

export const Q2_K: BlockCodec = {
  decode(src, off, out, o) {
    const d = readF16(src, off + 80);
    const dmin = readF16(src, off + 82);
    for (let e = 0; e < 256; e++) {
      const { byte, shift } = twoBitAt(e);
      const q = ((src[off + 16 + byte] as number) >> shift) & 3;
      const s = src[off + Math.floor(e / 16)] as number;
      out[o + e] = d * (s & 15) * q - dmin * (s >> 4);
    }
  },
  encode(x, xo, dst, off) {
    const { sc, m, q } = offsetBlock(x, xo, dst, off + 80, 16, 16, 3, 15);
    for (let s = 0; s < 16; s++) dst[off + s] = (sc[s] as number) | ((m[s] as number) << 4);
    dst.fill(0, off + 16, off + 80);
    for (let e = 0; e < 256; e++) {
      const { byte, shift } = twoBitAt(e);
      dst[off + 16 + byte] = (dst[off + 16 + byte] as number) | ((q[e] as number) << shift);
    }
  },
};

export const Q3_K: BlockCodec = {
  decode(src, off, out, o) {
    const d = readF16(src, off + 108);
    for (let e = 0; e < 256; e++) {
      const { byte, shift } = twoBitAt(e);
      const low = ((src[off + 32 + byte] as number) >> shift) & 3;
      const bit = 4 * Math.floor(e / 128) + Math.floor((e % 128) / 32);
      const high = ((src[off + (e % 32)] as number) >> bit) & 1;
      const q = high ? low : low - 4;
      out[o + e] = d * (scaleQ3(src, off + 96, Math.floor(e / 16)) - 32) * q;
    }
  },
  encode(x, xo, dst, off) {
    const { sc, q } = symmetricBlock(x, xo, dst, off + 108, 4, 31);
    putScalesQ3(
      dst,
      off + 96,
      Array.from(sc, (s) => s + 32),
    );
    dst.fill(0, off, off + 96);
    for (let e = 0; e < 256; e++) {
      const u = (q[e] as number) + 4;
      const { byte, shift } = twoBitAt(e);
      dst[off + 32 + byte] = (dst[off + 32 + byte] as number) | ((u & 3) << shift);
      const bit = 4 * Math.floor(e / 128) + Math.floor((e % 128) / 32);
      dst[off + (e % 32)] = (dst[off + (e % 32)] as number) | ((u >> 2) << bit);
    }
  },
};

function decodeK45(src: Uint8Array, off: number, out: Float64Array, o: number, five: boolean): void {
  const d = readF16(src, off);
  const dmin = readF16(src, off + 2);
  const qs = off + (five ? 48 : 16);
  for (let g = 0; g < 4; g++) {
    const a = scaleMinK4(src, off + 4, 2 * g);
    const b = scaleMinK4(src, off + 4, 2 * g + 1);
    for (let l = 0; l < 32; l++) {
      const byte = src[qs + 32 * g + l] as number;
      const h = five ? (src[off + 16 + l] as number) : 0;
      const q0 = (byte & 15) + (five ? ((h >> (2 * g)) & 1) << 4 : 0);
      const q1 = (byte >> 4) + (five ? ((h >> (2 * g + 1)) & 1) << 4 : 0);
      out[o + 64 * g + l] = d * a.sc * q0 - dmin * a.m;
      out[o + 64 * g + 32 + l] = d * b.sc * q1 - dmin * b.m;
    }
  }
}

function encodeK45(x: Float32Array, xo: number, dst: Uint8Array, off: number, five: boolean): void {
  const { sc, m, q } = offsetBlock(x, xo, dst, off, 8, 32, five ? 31 : 15, 63);
  putScaleMinK4(dst, off + 4, sc, m);
  const qs = off + (five ? 48 : 16);
  if (five) dst.fill(0, off + 16, off + 48);
  for (let g = 0; g < 4; g++) {
    for (let l = 0; l < 32; l++) {
      const q0 = q[64 * g + l] as number;
      const q1 = q[64 * g + 32 + l] as number;
      dst[qs + 32 * g + l] = (q0 & 15) | ((q1 & 15) << 4);
      if (five) {
        dst[off + 16 + l] =
          (dst[off + 16 + l] as number) | ((q0 >> 4) << (2 * g)) | ((q1 >> 4) << (2 * g + 1));
      }
    }
  }
}

export const Q4_K: BlockCodec = {
  decode: (src, off, out, o) => decodeK45(src, off, out, o, false),
  encode: (x, xo, dst, off) => encodeK45(x, xo, dst, off, false),
};

export const Q5_K: BlockCodec = {
  decode: (src, off, out, o) => decodeK45(src, off, out, o, true),
  encode: (x, xo, dst, off) => encodeK45(x, xo, dst, off, true),
};

/** Q6_K: the low-nibble byte, its nibble shift and the high-bits byte and shift of element e. */
function q6At(e: number): { lowByte: number; lowShift: number; highByte: number; highShift: number } {
  const h = Math.floor(e / 128);
  const t = Math.floor((e % 128) / 32);
  const l = e % 32;
  return {
    lowByte: 64 * h + l + 32 * (t & 1),
    lowShift: t >= 2 ? 4 : 0,
    highByte: 128 + 32 * h + l,
    highShift: 2 * t,
  };
}

export const Q6_K: BlockCodec = {
  decode(src, off, out, o) {
    const d = readF16(src, off + 208);
    for (let e = 0; e < 256; e++) {
      const a = q6At(e);
      const q =
        (((src[off + a.lowByte] as number) >> a.lowShift) & 15) |
        ((((src[off + a.highByte] as number) >> a.highShift) & 3) << 4);
      const s = ((src[off + 192 + Math.floor(e / 16)] as number) << 24) >> 24;
      out[o + e] = d * s * (q - 32);
    }
  },
  encode(x, xo, dst, off) {
    const { sc, q } = symmetricBlock(x, xo, dst, off + 208, 32, 127);
    dst.fill(0, off, off + 192);
    for (let s = 0; s < 16; s++) dst[off + 192 + s] = (sc[s] as number) & 0xff;
    for (let e = 0; e < 256; e++) {
      const u = clamp((q[e] as number) + 32, 0, 63);
      const a = q6At(e);
      dst[off + a.lowByte] = (dst[off + a.lowByte] as number) | ((u & 15) << a.lowShift);
      dst[off + a.highByte] = (dst[off + a.highByte] as number) | ((u >> 4) << a.highShift);
    }
  },
};
