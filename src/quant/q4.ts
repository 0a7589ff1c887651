/**
 * int4 group-wise weights: the format, a round-to-nearest quantizer, the exact dequantization the
 * kernel computes, and the packer into the layout shaders/matmul_q4.wgsl reads. Pure CPU code (no
 * GPU), shared by the loader, the tests and the benchmarks.
 *
 * A matrix W[rows = N, cols = K] (rows = output features, like HF Linear) is split along K into
 * groups of `groupSize`; each (row, group) has a scale s and a zero point z, and a code q ∈ 0..15
 * stands for the weight (q − z)·s.
 *   - symmetric: z = 8 for every group, s = max|w| / 7, so codes span 1..15 (q − z ∈ −7..7). The /7
 *     (rather than /8 with a clamp at +7, which wastes no code but can err by a whole s on the
 *     largest positive value) keeps every element within s/2 of its weight.
 *   - asymmetric: the group's range is widened to include 0 (as AWQ/GPTQ do, so z lands in 0..15),
 *     s = (max − min) / 15, z = round(−min / s).
 * With f16 scales the scale is rounded UP to the next f16, so every weight still maps inside the
 * code range and the s/2 error bound holds with the stored scale.
 */
import { UnsupportedModelError } from '../errors.js';
import { f16BitsToF32, f32ToF16Bits } from '../io/dtype.js';

export type Q4GroupSize = 32 | 64 | 128;

export interface Q4Format {
  /** Consecutive k sharing one scale (and zero point). */
  groupSize: Q4GroupSize;
  /** Zero point fixed at 8 (no zero buffer) or one 4-bit zero point per group. */
  symmetric: boolean;
  /** Storage of the scales: f16 halves their size; the values the kernel sees are rounded to f16. */
  scaleType: 'f32' | 'f16';
}

/** A quantized matrix in logical (row-major) order: what the quantizer produces and tests inspect. */
export interface Q4Matrix {
  rows: number;
  cols: number;
  format: Q4Format;
  /** [rows · cols] codes 0..15, row-major. */
  codes: Uint8Array;
  /** [rows · groups] scales exactly as stored (already rounded to f16 for scaleType 'f16'). */
  scales: Float32Array;
  /** [rows · groups] zero points 0..15 (all 8 when symmetric). */
  zeros: Uint8Array;
}

/** A quantized matrix in the kernel layout (see `packQ4`). */
export interface PackedQ4 {
  rows: number;
  cols: number;
  format: Q4Format;
  /** Rows rounded up to the 8-row tile; the padding rows are all-zero codes and scales. */
  paddedRows: number;
  /** 16-byte words (4 u32) per row: cols / 32. */
  wordsPerRow: number;
  /** Groups per row: cols / groupSize. */
  groups: number;
  /** Codes, 8 per u32, in the tiled order of `q4WordIndex`. */
  words: Uint32Array;
  /** f32 scales in the order of `q4GroupIndex`, or f16 pairs in the order of `q4HalfScaleIndex`. */
  scales: ArrayBuffer;
  /** Asymmetric only: zero points, 8 groups of one row per u32 (`q4ZeroIndex`). */
  zeros?: Uint32Array;
}

export const Q4_GROUP_SIZES: readonly Q4GroupSize[] = [32, 64, 128];
/** Rows per tile of the kernel layout: one SIMD group of 8 lanes reads one tile's words together. */
export const Q4_TILE_ROWS = 8;
/** k per 16-byte word (4 u32 × 8 nibbles). */
export const Q4_WORD_K = 32;

function checkFormat(format: Q4Format): void {
  if (!Q4_GROUP_SIZES.includes(format.groupSize)) {
    throw new UnsupportedModelError(
      `int4 group size ${String(format.groupSize)} is not supported (use ${Q4_GROUP_SIZES.join(', ')})`,
    );
  }
  if (format.scaleType !== 'f32' && format.scaleType !== 'f16') {
    throw new UnsupportedModelError(
      `int4 scale type ${String(format.scaleType)} is not supported (f32, f16)`,
    );
  }
}

/**
 * Validates a [rows, cols] shape for `format`. K (cols) must be a whole number of groups: the
 * kernel has no tail path, and padding K silently would change what the caller's activations must
 * look like, so a caller that wants padding must pad W (and X) itself.
 */
export function checkQ4Shape(rows: number, cols: number, format: Q4Format): void {
  checkFormat(format);
  if (!Number.isInteger(rows) || rows < 1 || !Number.isInteger(cols) || cols < 1) {
    throw new RangeError(`int4 matrix shape [${rows}, ${cols}] must be positive integers`);
  }
  if (cols % format.groupSize !== 0) {
    throw new UnsupportedModelError(
      `int4 quantization needs K (${cols}) to be a multiple of the group size (${format.groupSize}); pad K or pick a smaller group`,
    );
  }
}

/** The smallest f16 value ≥ x (x ≥ 0 finite), as f32; throws past the f16 range. */
function f16Up(x: number): number {
  const bits = f32ToF16Bits(x);
  let v = f16BitsToF32(bits);
  if (v < x) v = f16BitsToF32(bits + 1);
  if (!Number.isFinite(v)) {
    throw new RangeError(`int4 scale ${x} does not fit in f16 (max 65504); use scaleType 'f32'`);
  }
  return v;
}

const scratchF32 = new Float32Array(1);
const scratchU32 = new Uint32Array(scratchF32.buffer);

/** The smallest f32 value ≥ x (x ≥ 0 finite). */
function f32Up(x: number): number {
  scratchF32[0] = x;
  if ((scratchF32[0] as number) < x) scratchU32[0] = (scratchU32[0] as number) + 1;
  return scratchF32[0] as number;
}

/**
 * Stored scale for an exact scale `s` (≥ 0), rounded UP to f32 or f16: then |w| / s never exceeds
 * the code range, so no element is clamped by more than half a step.
 */
function storedScale(s: number, scaleType: Q4Format['scaleType']): number {
  return scaleType === 'f16' ? f16Up(s) : f32Up(s);
}

/**
 * Round-to-nearest quantization of a row-major [rows, cols] matrix (see the file comment for the
 * scale and zero-point rules). Every element ends within s/2 of its value, s being the stored scale
 * of its group (a nonzero group never gets a zero scale; note that a GPU may flush f16 scales
 * below 2⁻¹⁴ to zero, so such groups want scaleType 'f32'). All-zero groups get s = 0.
 */
export function quantizeRtn(values: Float32Array, rows: number, cols: number, format: Q4Format): Q4Matrix {
  checkQ4Shape(rows, cols, format);
  if (values.length !== rows * cols) {
    throw new RangeError(`int4 quantize: ${values.length} values for a [${rows}, ${cols}] matrix`);
  }
  const gs = format.groupSize;
  const groups = cols / gs;
  const codes = new Uint8Array(rows * cols);
  const scales = new Float32Array(rows * groups);
  const zeros = new Uint8Array(rows * groups);
  for (let n = 0; n < rows; n++) {
    for (let g = 0; g < groups; g++) {
      const base = n * cols + g * gs;
      let lo = 0;
      let hi = 0;
      for (let j = 0; j < gs; j++) {
        const v = values[base + j] as number;
        if (!Number.isFinite(v))
          throw new RangeError(`int4 quantize: non-finite value at row ${n}, col ${g * gs + j}`);
        if (v < lo) lo = v;
        if (v > hi) hi = v;
      }
      let s: number;
      let z: number;
      if (format.symmetric) {
        s = storedScale(Math.max(-lo, hi) / 7, format.scaleType);
        z = 8;
      } else {
        s = storedScale((hi - lo) / 15, format.scaleType);
        z = s > 0 ? Math.min(15, Math.max(0, Math.round(-lo / s))) : 0;
      }
      scales[n * groups + g] = s;
      zeros[n * groups + g] = z;
      for (let j = 0; j < gs; j++) {
        const q = s > 0 ? Math.round((values[base + j] as number) / s) + z : z;
        codes[base + j] = Math.min(15, Math.max(0, q));
      }
    }
  }
  return { rows, cols, format, codes, scales, zeros };
}

/**
 * The weights a Q4Matrix stands for, (q − z)·s rounded once to f32: the matrix the kernel's result
 * is checked against (the kernel sums s·Σq·x − s·z·Σx, the same value up to f32 rounding).
 */
export function dequantize(q: Q4Matrix): Float32Array {
  const gs = q.format.groupSize;
  const groups = q.cols / gs;
  const out = new Float32Array(q.rows * q.cols);
  for (let n = 0; n < q.rows; n++) {
    for (let k = 0; k < q.cols; k++) {
      const g = n * groups + Math.floor(k / gs);
      out[n * q.cols + k] =
        ((q.codes[n * q.cols + k] as number) - (q.zeros[g] as number)) * (q.scales[g] as number);
    }
  }
  return out;
}

/** Rows [start, start + count) of a quantized matrix (to pack a tensor in several buffers). */
export function sliceQ4Rows(q: Q4Matrix, start: number, count: number): Q4Matrix {
  if (
    !Number.isInteger(start) ||
    !Number.isInteger(count) ||
    start < 0 ||
    count < 1 ||
    start + count > q.rows
  ) {
    throw new RangeError(`int4 row slice [${start}, ${start + count}) of ${q.rows} rows`);
  }
  const groups = q.cols / q.format.groupSize;
  return {
    rows: count,
    cols: q.cols,
    format: q.format,
    codes: q.codes.slice(start * q.cols, (start + count) * q.cols),
    scales: q.scales.slice(start * groups, (start + count) * groups),
    zeros: q.zeros.slice(start * groups, (start + count) * groups),
  };
}

/** Row-concatenation of quantized matrices sharing a format and K (q/k/v, gate/up stacking). */
export function stackQ4(list: readonly Q4Matrix[]): Q4Matrix {
  const first = list[0];
  if (!first) throw new RangeError('stackQ4: nothing to stack');
  if (list.length === 1) return first;
  for (const q of list) {
    const f = q.format;
    if (
      q.cols !== first.cols ||
      f.groupSize !== first.format.groupSize ||
      f.symmetric !== first.format.symmetric ||
      f.scaleType !== first.format.scaleType
    ) {
      throw new UnsupportedModelError(
        'int4 projections fused into one matmul must share K and the quantization format',
      );
    }
  }
  const rows = list.reduce((a, q) => a + q.rows, 0);
  const cat = <T extends Uint8Array | Float32Array>(make: (n: number) => T, pick: (q: Q4Matrix) => T): T => {
    const out = make(list.reduce((a, q) => a + pick(q).length, 0));
    let at = 0;
    for (const q of list) {
      out.set(pick(q), at);
      at += pick(q).length;
    }
    return out;
  };
  return {
    rows,
    cols: first.cols,
    format: first.format,
    codes: cat(
      (n) => new Uint8Array(n),
      (q) => q.codes,
    ),
    scales: cat(
      (n) => new Float32Array(n),
      (q) => q.scales,
    ),
    zeros: cat(
      (n) => new Uint8Array(n),
      (q) => q.zeros,
    ),
  };
}

/**
 * Index (in 16-byte words) of word `i` (k = 32i..32i+31) of row `n`: rows are tiled by 8 and the 8
 * rows of a tile are interleaved word by word, so the 8 SIMD lanes that own 8 consecutive rows read
 * 128 contiguous bytes at each step and the tile's stream advances contiguously.
 */
export function q4WordIndex(n: number, i: number, wordsPerRow: number): number {
  return (Math.floor(n / Q4_TILE_ROWS) * wordsPerRow + i) * Q4_TILE_ROWS + (n % Q4_TILE_ROWS);
}

/** Index of the f32 scale of (row n, group g), tiled like the words: ((n/8)·G + g)·8 + n%8. */
export function q4GroupIndex(n: number, g: number, groups: number): number {
  return (Math.floor(n / Q4_TILE_ROWS) * groups + g) * Q4_TILE_ROWS + (n % Q4_TILE_ROWS);
}

/**
 * u32 index and half (0 = low) of the f16 scale of (row n, group g). The two halves of a u32 are
 * groups 2j and 2j + 1 of the same row (not two rows), so a lane loads one u32 per two groups; the
 * u32s are tiled like the words: ((n/8)·⌈G/2⌉ + g/2)·8 + n%8.
 */
export function q4HalfScaleIndex(n: number, g: number, groups: number): { word: number; half: number } {
  const pairs = Math.ceil(groups / 2);
  const word = (Math.floor(n / Q4_TILE_ROWS) * pairs + Math.floor(g / 2)) * Q4_TILE_ROWS + (n % Q4_TILE_ROWS);
  return { word, half: g % 2 };
}

/**
 * u32 index and nibble of the zero point of (row n, group g): one u32 holds groups 8j..8j+7 of one
 * row (nibble g % 8), so a lane loads one u32 per eight groups; tiled like the words:
 * ((n/8)·⌈G/8⌉ + g/8)·8 + n%8.
 */
export function q4ZeroIndex(n: number, g: number, groups: number): { word: number; nibble: number } {
  const octets = Math.ceil(groups / 8);
  const word =
    (Math.floor(n / Q4_TILE_ROWS) * octets + Math.floor(g / 8)) * Q4_TILE_ROWS + (n % Q4_TILE_ROWS);
  return { word, nibble: g % 8 };
}

/**
 * Packs a quantized matrix into the kernel layout:
 *   - words: u32 j of a 16-byte word holds k = 8j..8j+7 of that word's 32, nibble t (bits 4t..4t+3,
 *     low nibble first) = k + t; words tiled as in `q4WordIndex`.
 *   - scales: f32 tiled as in `q4GroupIndex`, or f16 with two consecutive groups of a row per u32
 *     (`q4HalfScaleIndex`).
 *   - zeros (asymmetric only): eight consecutive groups of a row per u32, 4 bits each
 *     (`q4ZeroIndex`). The kernel computes s·Σq·x − s·z·Σx per group with Σx summed once per
 *     workgroup, so z costs 4 bits per group and the inner loop does no subtraction. Symmetric
 *     formats store no zeros (z = 8).
 * Packing several groups of one row into a u32 matters on CPU adapters, where every lane's load is
 * a separate scalar load: at group size 32 a per-group scale load was one load in five.
 * Padding rows (up to a multiple of 8) and padding groups are zero.
 */
export function packQ4(q: Q4Matrix): PackedQ4 {
  checkQ4Shape(q.rows, q.cols, q.format);
  const { rows, cols, format } = q;
  const groups = cols / format.groupSize;
  if (
    q.codes.length !== rows * cols ||
    q.scales.length !== rows * groups ||
    q.zeros.length !== rows * groups
  ) {
    throw new RangeError(`int4 pack: array lengths do not match a [${rows}, ${cols}] matrix`);
  }
  const paddedRows = Math.ceil(rows / Q4_TILE_ROWS) * Q4_TILE_ROWS;
  const wordsPerRow = cols / Q4_WORD_K;
  const words = new Uint32Array(paddedRows * wordsPerRow * 4);
  for (let n = 0; n < rows; n++) {
    for (let i = 0; i < wordsPerRow; i++) {
      const dst = q4WordIndex(n, i, wordsPerRow) * 4;
      for (let j = 0; j < 4; j++) {
        const src = n * cols + i * Q4_WORD_K + j * 8;
        let u = 0;
        for (let t = 0; t < 8; t++) {
          const c = q.codes[src + t] as number;
          if (c > 15) throw new RangeError(`int4 pack: code ${c} at row ${n} is not 4-bit`);
          u |= c << (4 * t);
        }
        words[dst + j] = u >>> 0;
      }
    }
  }
  let scales: ArrayBuffer;
  if (format.scaleType === 'f32') {
    const s = new Float32Array(paddedRows * groups);
    for (let n = 0; n < rows; n++) {
      for (let g = 0; g < groups; g++) s[q4GroupIndex(n, g, groups)] = q.scales[n * groups + g] as number;
    }
    scales = s.buffer;
  } else {
    const s = new Uint32Array((paddedRows / Q4_TILE_ROWS) * Math.ceil(groups / 2) * Q4_TILE_ROWS);
    for (let n = 0; n < rows; n++) {
      for (let g = 0; g < groups; g++) {
        const v = q.scales[n * groups + g] as number;
        const bits = f32ToF16Bits(v);
        if (f16BitsToF32(bits) !== v) {
          throw new RangeError(`int4 pack: scale ${v} at row ${n}, group ${g} is not an f16 value`);
        }
        const { word, half } = q4HalfScaleIndex(n, g, groups);
        s[word] = ((s[word] as number) | (bits << (16 * half))) >>> 0;
      }
    }
    scales = s.buffer;
  }
  const out: PackedQ4 = { rows, cols, format, paddedRows, wordsPerRow, groups, words, scales };
  if (!format.symmetric) {
    const zeros = new Uint32Array((paddedRows / Q4_TILE_ROWS) * Math.ceil(groups / 8) * Q4_TILE_ROWS);
    for (let n = 0; n < rows; n++) {
      for (let g = 0; g < groups; g++) {
        const { word, nibble } = q4ZeroIndex(n, g, groups);
        zeros[word] = ((zeros[word] as number) | ((q.zeros[n * groups + g] as number) << (4 * nibble))) >>> 0;
      }
    }
    out.zeros = zeros;
  } else if (q.zeros.some((z) => z !== 8)) {
    throw new RangeError('int4 pack: a symmetric matrix must have every zero point at 8');
  }
  return out;
}

/** Bytes of weight data the kernel streams for one pass over a packed matrix (codes, scales, zeros). */
export function packedQ4Bytes(p: PackedQ4): number {
  return p.words.byteLength + p.scales.byteLength + (p.zeros?.byteLength ?? 0);
}
