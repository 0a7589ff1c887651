/**
 * A weight matrix on the GPU: [rows, cols] (rows = output features, like HF Linear) in its
 * checkpoint's 16- or 32-bit float format, stored in the tiled layout of shaders/common/tiled.wgsl
 * (16-byte words, 8-row tiles) and split by whole tiles into parts when one buffer would exceed the
 * device's maxStorageBufferBindingSize (e.g. a 150k-token vocabulary).
 */
export type WeightFormat = 'f32' | 'f16' | 'bf16';

export interface WeightPart {
  buffer: GPUBuffer;
  /** First row of the matrix stored in this part (SWIGLU-fused: first unit). */
  rowStart: number;
  /** Rows in this part (SWIGLU-fused: units, each a gate row and an up row). */
  rows: number;
}

export interface GpuWeight {
  name: string;
  format: WeightFormat;
  /** Output features (SWIGLU-fused: units; the stored matrix has twice as many rows). */
  rows: number;
  cols: number;
  /**
   * 'swiglu': gate and up fused, their 8-row tiles interleaved (gate tile j, then up tile j), for
   * the matmul epilogue that writes silu(gate) · up.
   */
  fused?: 'swiglu';
  parts: WeightPart[];
}

export const WEIGHT_FORMAT_BYTES: Record<WeightFormat, number> = { f32: 4, f16: 2, bf16: 2 };
/** Rows per tile and bytes per word of the tiled layout. */
export const TILE_ROWS = 8;
export const WORD_BYTES = 16;

/** The shader fragment that reads this format (see shaders/common/weight_*.wgsl). */
export function weightFragment(format: WeightFormat) {
  return `common/weight_${format}` as const;
}

/** 16-byte words per stored row (the last word zero-padded). */
export function wordsPerRow(cols: number, format: WeightFormat): number {
  return Math.ceil((cols * WEIGHT_FORMAT_BYTES[format]) / WORD_BYTES);
}

/** Bytes of one 8-row tile. */
export function tileBytes(cols: number, format: WeightFormat): number {
  return TILE_ROWS * wordsPerRow(cols, format) * WORD_BYTES;
}

/**
 * Logical rows per part so each part (whole tiles; SWIGLU: whole gate/up tile pairs) fits
 * `maxBindingBytes`; 0 when not even one tile fits.
 */
export function rowsPerPart(
  rows: number,
  cols: number,
  format: WeightFormat,
  maxBindingBytes: number,
  fused?: 'swiglu',
): number {
  const tilesPerUnitTile = fused === 'swiglu' ? 2 : 1;
  const tiles = Math.floor(maxBindingBytes / (tileBytes(cols, format) * tilesPerUnitTile));
  return Math.max(0, Math.min(rows, tiles * TILE_ROWS));
}

/** Bytes a part of `rows` logical rows occupies. */
export function partBytes(rows: number, cols: number, format: WeightFormat, fused?: 'swiglu'): number {
  return Math.ceil(rows / TILE_ROWS) * tileBytes(cols, format) * (fused === 'swiglu' ? 2 : 1);
}

/**
 * Packs up to 8 rows (row-major bytes of `cols` elements each; missing rows are zero) into one
 * tile: word i of row r goes to word i · 8 + r.
 */
export function packTile(rows: readonly Uint8Array[], cols: number, format: WeightFormat): Uint8Array {
  const kw = wordsPerRow(cols, format);
  const rowBytes = cols * WEIGHT_FORMAT_BYTES[format];
  const out = new Uint8Array(TILE_ROWS * kw * WORD_BYTES);
  rows.forEach((row, r) => {
    if (row.length !== rowBytes)
      throw new RangeError(`tile row of ${row.length} bytes, expected ${rowBytes}`);
    for (let i = 0; i < kw; i++) {
      const start = i * WORD_BYTES;
      const end = Math.min(rowBytes, start + WORD_BYTES);
      out.set(row.subarray(start, end), (i * TILE_ROWS + r) * WORD_BYTES);
    }
  });
  return out;
}

/**
 * A whole [rows, cols] row-major matrix in the tiled layout (tests and small tensors; the model
 * loader streams tiles instead). With `fused: 'swiglu'`, `bytes` is [gate; up] stacked.
 */
export function tileMatrix(
  bytes: Uint8Array,
  rows: number,
  cols: number,
  format: WeightFormat,
  fused?: 'swiglu',
): Uint8Array {
  const rowBytes = cols * WEIGHT_FORMAT_BYTES[format];
  const row = (r: number) => bytes.subarray(r * rowBytes, (r + 1) * rowBytes);
  const tiles: Uint8Array[] = [];
  for (let t = 0; t < rows; t += TILE_ROWS) {
    const n = Math.min(TILE_ROWS, rows - t);
    const idx = Array.from({ length: n }, (_, i) => t + i);
    tiles.push(packTile(idx.map(row), cols, format));
    if (fused === 'swiglu')
      tiles.push(
        packTile(
          idx.map((r) => row(rows + r)),
          cols,
          format,
        ),
      );
  }
  const out = new Uint8Array(tiles.reduce((a, b) => a + b.length, 0));
  let at = 0;
  for (const t of tiles) {
    out.set(t, at);
    at += t.length;
  }
  return out;
}
