/**
 * ggml's 32-element block formats (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0): one f16 scale d (and an f16
 * offset m for the _1 kinds) per 32 weights. Byte j of the 16 nibble bytes holds element j in its
 * low nibble and element j + 16 in its high nibble; the Q5 kinds add a little-endian u32 whose bit
 * i is the fifth bit of element i. Values: Q4_0 (q − 8)·d, Q4_1 q·d + m, Q5_0 (q − 16)·d,
 * Q5_1 q·d + m, Q8_0 q·d (q signed).
 */
import { clamp, code, range, readF16, signedMax, writeF16, type BlockCodec } from './gguf-codec.js';

function readU32(b: Uint8Array, off: number): number {
  return (
    ((b[off] as number) |
      ((b[off + 1] as number) << 8) |
      ((b[off + 2] as number) << 16) |
      ((b[off + 3] as number) << 24)) >>>
    0
  );
}

function writeU32(b: Uint8Array, off: number, v: number): void {
  b[off] = v & 0xff;
  b[off + 1] = (v >>> 8) & 0xff;
  b[off + 2] = (v >>> 16) & 0xff;
  b[off + 3] = (v >>> 24) & 0xff;
}

/** 32 codes (0..15) into 16 bytes: element j low nibble, element j + 16 high nibble. */
function putNibbles(dst: Uint8Array, off: number, q: Uint8Array): void {
  for (let j = 0; j < 16; j++) dst[off + j] = ((q[j] as number) & 15) | (((q[j + 16] as number) & 15) << 4);
}

/** The fifth bits of 32 codes (0..31) as the u32 ggml stores. */
function highBits(q: Uint8Array): number {
  let h = 0;
  for (let j = 0; j < 32; j++) h |= (((q[j] as number) >> 4) & 1) << j;
  return h >>> 0;
}

const scratch = new Uint8Array(32);

/** Symmetric codes: the signed extreme maps onto the most negative code −`neg`. */
function symmetric(
  x: Float32Array,
  xo: number,
  dst: Uint8Array,
  off: number,
  neg: number,
  max: number,
): number {
  const d = writeF16(dst, off, signedMax(x, xo, 32) / -neg);
  for (let j = 0; j < 32; j++) scratch[j] = code(x[xo + j] as number, d, -neg, max - neg, 0) + neg;
  return d;
}

/** Offset codes 0..max: x ≈ q·d + m with m the block minimum. */
function offset(x: Float32Array, xo: number, dst: Uint8Array, off: number, max: number): void {
  const { lo, hi } = range(x, xo, 32);
  const d = writeF16(dst, off, (hi - lo) / max);
  const m = writeF16(dst, off + 2, lo);
  for (let j = 0; j < 32; j++) scratch[j] = code((x[xo + j] as number) - m, d, 0, max, 0);
}

export const Q4_0: BlockCodec = {
  decode(src, off, out, o) {
    const d = readF16(src, off);
    for (let j = 0; j < 16; j++) {
      const b = src[off + 2 + j] as number;
      out[o + j] = ((b & 15) - 8) * d;
      out[o + j + 16] = ((b >> 4) - 8) * d;
    }
  },
  encode(x, xo, dst, off) {
    symmetric(x, xo, dst, off, 8, 15);
    putNibbles(dst, off + 2, scratch);
  },
};

export const Q4_1: BlockCodec = {
  decode(src, off, out, o) {
    const d = readF16(src, off);
    const m = readF16(src, off + 2);
    for (let j = 0; j < 16; j++) {
      const b = src[off + 4 + j] as number;
      out[o + j] = (b & 15) * d + m;
      out[o + j + 16] = (b >> 4) * d + m;
    }
  },
  encode(x, xo, dst, off) {
    offset(x, xo, dst, off, 15);
    putNibbles(dst, off + 4, scratch);
  },
};

export const Q5_0: BlockCodec = {
  decode(src, off, out, o) {
    const d = readF16(src, off);
    const qh = readU32(src, off + 2);
    for (let j = 0; j < 16; j++) {
      const b = src[off + 6 + j] as number;
      out[o + j] = (((b & 15) | (((qh >>> j) & 1) << 4)) - 16) * d;
      out[o + j + 16] = (((b >> 4) | (((qh >>> (j + 16)) & 1) << 4)) - 16) * d;
    }
  },
  encode(x, xo, dst, off) {
    symmetric(x, xo, dst, off, 16, 31);
    writeU32(dst, off + 2, highBits(scratch));
    putNibbles(dst, off + 6, scratch);
  },
};

export const Q5_1: BlockCodec = {
  decode(src, off, out, o) {
    const d = readF16(src, off);
    const m = readF16(src, off + 2);
    const qh = readU32(src, off + 4);
    for (let j = 0; j < 16; j++) {
      const b = src[off + 8 + j] as number;
      out[o + j] = ((b & 15) | (((qh >>> j) & 1) << 4)) * d + m;
      out[o + j + 16] = ((b >> 4) | (((qh >>> (j + 16)) & 1) << 4)) * d + m;
    }
  },
  encode(x, xo, dst, off) {
    offset(x, xo, dst, off, 31);
    writeU32(dst, off + 4, highBits(scratch));
    putNibbles(dst, off + 8, scratch);
  },
};

export const Q8_0: BlockCodec = {
  decode(src, off, out, o) {
    const d = readF16(src, off);
    for (let j = 0; j < 32; j++) out[o + j] = (((src[off + 2 + j] as number) << 24) >> 24) * d;
  },
  encode(x, xo, dst, off) {
    const d = writeF16(dst, off, Math.abs(signedMax(x, xo, 32)) / 127);
    for (let j = 0; j < 32; j++)
      dst[off + 2 + j] = clamp(code(x[xo + j] as number, d, -128, 127, 0), -128, 127) & 0xff;
  },
};
