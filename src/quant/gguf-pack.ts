/**
 * The GPU layout of a GGUF block matrix, an exact re-layout of the file's bytes (no value changes):
 * ggml blocks of 18, 22, 34, 110 or 210 bytes are not 4-byte aligned, and WGSL reads storage in
 * u32s, so each block is split in two or three planes:
 *   - words: the block's bytes without its one f16 super-scale d where that field is what breaks
 *     the alignment (Q4_0, Q5_0, Q8_0, IQ4_NL at byte 0; Q3_K, Q6_K at the end) and without its
 *     h-plane fields (below), as little-endian u32s (BW per block, a multiple of 4 in every
 *     format). Words are tiled by 8 rows and by 16-byte words, so the 8 lanes that own a tile's 8
 *     rows read 128 contiguous bytes together (as src/quant/q4.ts tiles int4 words): u32 w of
 *     block b of row n is component w%4 of vec4 ((n/8)·NB·BW/4 + b·BW/4 + w/4)·8 + n%8. (A format
 *     whose BW were not a multiple of 4 would tile by u32: word w at ((n/8)·NB·BW + b·BW + w)·8 +
 *     n%8; shaders/common/gguf_block.wgsl reads both.)
 *   - dplane (those six formats only): the f16 d of (row n, block b) in half b%2 of u32
 *     ((n/8)·⌈NB/2⌉ + b/2)·8 + n%8.
 *   - hplane: the HW u32s of the block that keep the rest from tiling by 16 bytes (H_FIELD below),
 *     u32 j of (n, b) at ((n/8)·NB·HW + b·HW + j)·8 + n%8.
 * The bytes on the GPU equal the file's (plus the tile padding of the last 8 rows); the kernel,
 * shaders/matmul_gguf_vec4.wgsl with a fragment per format, decodes the blocks in registers.
 */
import { InvalidModelFileError, UnsupportedModelError } from '../errors.js';
import { ggufTensorBytes, ggufTypeByName, type GgufTypeInfo } from '../io/gguf-types.js';

/** Rows per tile of the layout. */
export const GGUF_TILE_ROWS = 8;

export interface GgufBlockLayout {
  info: GgufTypeInfo;
  /** u32 words per block in the words plane. */
  blockWords: number;
  /** Byte offset of the f16 moved to the d plane, or null when the block is already aligned. */
  dAt: number | null;
  /** Byte offset of the u32s moved to the h plane, or null. */
  hAt: number | null;
  /** u32s per block in the h plane (0 without one). */
  hWords: number;
  /** Byte offset in the block of each words-plane u32 (the bytes left once the planes' fields are out). */
  wordSrc: readonly number[];
  /** Chunks of 8 elements the kernel walks per block. */
  chunks: number;
  /** Tiled by 16-byte words (BW a multiple of 4), read by the 16-byte kernel. */
  vec4: boolean;
}

/** The block types that have a GPU kernel (the float types go to the float matmul). */
export const GGUF_KERNEL_TYPES = [
  'Q4_0',
  'Q4_1',
  'Q5_0',
  'Q5_1',
  'Q8_0',
  'Q2_K',
  'Q3_K',
  'Q4_K',
  'Q5_K',
  'Q6_K',
  'IQ4_NL',
  'IQ4_XS',
] as const;
export type GgufKernelType = (typeof GGUF_KERNEL_TYPES)[number];

const D_AT: Partial<Record<GgufKernelType, number>> = {
  Q4_0: 0,
  Q5_0: 0,
  Q8_0: 0,
  IQ4_NL: 0,
  Q3_K: 108,
  Q6_K: 208,
};

/**
 * The h-plane field: `words` u32s from byte `at`, the fields that keep the rest of the block from
 * tiling by 16 bytes (Q5_0: the fifth bits; Q4_1: d | m; Q5_1: d | m and the fifth bits; Q2_K:
 * d | dmin; Q3_K: the 12 scale bytes; IQ4_XS: d | scales_h and scales_l).
 */
const H_FIELD: Partial<Record<GgufKernelType, { at: number; words: number }>> = {
  Q5_0: { at: 2, words: 1 },
  Q4_1: { at: 0, words: 1 },
  Q5_1: { at: 0, words: 2 },
  Q2_K: { at: 80, words: 1 },
  Q3_K: { at: 96, words: 3 },
  IQ4_XS: { at: 0, words: 2 },
};

export function isGgufKernelType(name: string): name is GgufKernelType {
  return (GGUF_KERNEL_TYPES as readonly string[]).includes(name);
}

export function ggufBlockLayout(type: string): GgufBlockLayout {
  const info = ggufTypeByName(type);
  if (!info || !isGgufKernelType(type)) {
    throw new UnsupportedModelError(
      `GGUF type ${type} has no block matmul (supported: ${GGUF_KERNEL_TYPES.join(', ')})`,
    );
  }
  const dAt = D_AT[type] ?? null;
  const h = H_FIELD[type];
  const hAt = h?.at ?? null;
  const hWords = h?.words ?? 0;
  const kept: number[] = [];
  for (let o = 0; o < info.blockBytes; o++) {
    const inD = dAt !== null && o >= dAt && o < dAt + 2;
    const inH = hAt !== null && o >= hAt && o < hAt + 4 * hWords;
    if (!inD && !inH) kept.push(o);
  }
  // Every layout keeps whole runs of 4 contiguous bytes (the fields sit at a block's start or end).
  const wordSrc = kept.filter((_, i) => i % 4 === 0);
  const blockWords = wordSrc.length;
  return {
    info,
    blockWords,
    dAt,
    hAt,
    hWords,
    wordSrc,
    chunks: info.blockElems / 8,
    vec4: blockWords % 4 === 0,
  };
}

/** A [rows, cols] block matrix in the GPU layout. */
export interface PackedGguf {
  type: GgufKernelType;
  rows: number;
  cols: number;
  /** Rows rounded up to the 8-row tile (padding blocks are zero bytes). */
  paddedRows: number;
  blocksPerRow: number;
  words: Uint32Array;
  /** The d plane, for the formats whose blocks are not 4-byte aligned. */
  dplane?: Uint32Array;
  /** The h plane (Q5_0, Q4_1, Q5_1, Q2_K, Q3_K, IQ4_XS). */
  hplane?: Uint32Array;
}

/** GPU bytes of a [rows, cols] matrix of `type` (both planes, tile-padded). */
export function ggufPackedBytes(type: string, rows: number, cols: number): number {
  const L = ggufBlockLayout(type);
  const nb = cols / L.info.blockElems;
  const padded = Math.ceil(rows / GGUF_TILE_ROWS) * GGUF_TILE_ROWS;
  return (
    padded * nb * L.blockWords * 4 +
    (L.dAt === null ? 0 : padded * Math.ceil(nb / 2) * 4) +
    padded * nb * L.hWords * 4
  );
}

/**
 * Re-lays a row-major [rows, cols] tensor of `type` (the file's bytes: `rows` rows of cols/BK
 * blocks) into the planes. `cols` must be a whole number of blocks.
 */
export function packGguf(type: string, bytes: Uint8Array, rows: number, cols: number): PackedGguf {
  const L = ggufBlockLayout(type);
  const { info } = L;
  if (!Number.isInteger(rows) || rows < 1 || !Number.isInteger(cols) || cols < 1) {
    throw new RangeError(`GGUF ${type} matrix shape [${rows}, ${cols}] must be positive integers`);
  }
  if (cols % info.blockElems !== 0) {
    throw new UnsupportedModelError(
      `GGUF ${type} matrix of ${cols} columns: rows must be whole ${info.blockElems}-element blocks`,
    );
  }
  const need = ggufTensorBytes(info, rows * cols);
  if (need === null || bytes.byteLength < need) {
    throw new InvalidModelFileError(
      `GGUF ${type} [${rows}, ${cols}] tensor needs ${String(need)} bytes, got ${bytes.byteLength}`,
    );
  }
  const nb = cols / info.blockElems;
  const BW = L.blockWords;
  const paddedRows = Math.ceil(rows / GGUF_TILE_ROWS) * GGUF_TILE_ROWS;
  const words = new Uint32Array(paddedRows * nb * BW);
  const dplane = L.dAt === null ? undefined : new Uint32Array(paddedRows * Math.ceil(nb / 2));
  const HW = L.hWords;
  const hplane = L.hAt === null ? undefined : new Uint32Array(paddedRows * nb * HW);
  const u32At = (o: number) =>
    ((bytes[o] as number) |
      ((bytes[o + 1] as number) << 8) |
      ((bytes[o + 2] as number) << 16) |
      ((bytes[o + 3] as number) << 24)) >>>
    0;
  // Where u32 w of a block goes, relative to the block's word 0 of lane 0.
  const at = (w: number) => (L.vec4 ? (w >> 2) * 4 * GGUF_TILE_ROWS + (w & 3) : w * GGUF_TILE_ROWS);
  const laneStride = L.vec4 ? 4 : 1;
  for (let n = 0; n < rows; n++) {
    const tile = Math.floor(n / GGUF_TILE_ROWS) * nb * BW;
    const lane = n % GGUF_TILE_ROWS;
    for (let b = 0; b < nb; b++) {
      const src = (n * nb + b) * info.blockBytes;
      const dst = (tile + b * BW) * GGUF_TILE_ROWS + lane * laneStride;
      for (let w = 0; w < BW; w++) words[dst + at(w)] = u32At(src + (L.wordSrc[w] as number));
      if (hplane && L.hAt !== null) {
        const hb = (Math.floor(n / GGUF_TILE_ROWS) * nb + b) * HW;
        for (let j = 0; j < HW; j++) {
          hplane[(hb + j) * GGUF_TILE_ROWS + lane] = u32At(src + L.hAt + 4 * j);
        }
      }
      if (dplane && L.dAt !== null) {
        const h = (bytes[src + L.dAt] as number) | ((bytes[src + L.dAt + 1] as number) << 8);
        const at = (Math.floor(n / GGUF_TILE_ROWS) * Math.ceil(nb / 2) + (b >> 1)) * GGUF_TILE_ROWS + lane;
        dplane[at] = ((dplane[at] as number) | (h << (16 * (b & 1)))) >>> 0;
      }
    }
  }
  const out: PackedGguf = { type: type as GgufKernelType, rows, cols, paddedRows, blocksPerRow: nb, words };
  if (dplane) out.dplane = dplane;
  if (hplane) out.hplane = hplane;
  return out;
}
