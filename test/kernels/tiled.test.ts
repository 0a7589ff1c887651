import { describe, expect, test } from 'vitest';
import { partBytes, rowsPerPart, tileBytes, tileMatrix, wordsPerRow } from '../../src/kernels/tiled.js';

/** Element (n, k) of a tiled f32 matrix, by the index rule of shaders/common/tiled.wgsl. */
function tiledF32(tiled: Float32Array, n: number, k: number, cols: number): number {
  const kw = wordsPerRow(cols, 'f32');
  const word = (Math.floor(n / 8) * kw + Math.floor(k / 4)) * 8 + (n % 8);
  return tiled[word * 4 + (k % 4)] as number;
}

describe('tiled weight layout', () => {
  for (const [rows, cols] of [
    [1, 1],
    [7, 129],
    [129, 7],
    [9, 4097],
  ] as const) {
    test(`f32 ${rows}x${cols}: every element where the kernels look for it, padding zero`, () => {
      const values = Float32Array.from({ length: rows * cols }, (_, i) => i + 1);
      const tiled = new Float32Array(tileMatrix(new Uint8Array(values.buffer), rows, cols, 'f32').buffer);
      expect(tiled.length * 4).toBe(Math.ceil(rows / 8) * tileBytes(cols, 'f32'));
      for (let n = 0; n < rows; n++)
        for (let k = 0; k < cols; k++) expect(tiledF32(tiled, n, k, cols)).toBe(values[n * cols + k]);
      // Everything else (row and word padding) is zero: the sum of all entries is the sum of values.
      const sum = tiled.reduce((a, b) => a + b, 0);
      expect(sum).toBe(values.reduce((a, b) => a + b, 0));
    });
  }

  test('16-bit rows pack 8 elements per word, odd column counts padded', () => {
    const cols = 9;
    const bits = Uint16Array.from({ length: 2 * cols }, (_, i) => 0x100 + i);
    const tiled = new Uint16Array(tileMatrix(new Uint8Array(bits.buffer), 2, cols, 'bf16').buffer);
    expect(wordsPerRow(cols, 'bf16')).toBe(2);
    // Word 0 of row 1 is tile word 1 (8 halves in), word 1 of row 0 is tile word 8.
    expect(Array.from(tiled.subarray(8, 16))).toEqual(Array.from(bits.subarray(cols, cols + 8)));
    expect(Array.from(tiled.subarray(64, 72))).toEqual([bits[8], 0, 0, 0, 0, 0, 0, 0]);
  });

  test('swiglu fusion interleaves gate and up tiles', () => {
    const [units, cols] = [9, 4];
    const values = Float32Array.from({ length: 2 * units * cols }, (_, i) => i + 1);
    const tiled = new Float32Array(
      tileMatrix(new Uint8Array(values.buffer), units, cols, 'f32', 'swiglu').buffer,
    );
    // Stored row of gate unit u: (u / 8)·16 + u % 8; its up row: 8 rows later.
    for (let u = 0; u < units; u++) {
      const g = Math.floor(u / 8) * 16 + (u % 8);
      for (let k = 0; k < cols; k++) {
        expect(tiledF32(tiled, g, k, cols)).toBe(values[u * cols + k]);
        expect(tiledF32(tiled, g + 8, k, cols)).toBe(values[(units + u) * cols + k]);
      }
    }
    expect(tiled.length * 4).toBe(partBytes(units, cols, 'f32', 'swiglu'));
  });

  test('parts hold whole tiles under the binding limit', () => {
    // 100 rows of 1000 f32 (4000 B rows, 32000 B tiles) under 100 KB: 3 tiles = 24 rows per part.
    expect(rowsPerPart(100, 1000, 'f32', 100_000)).toBe(24);
    expect(rowsPerPart(100, 1000, 'f32', 100_000, 'swiglu')).toBe(8);
    expect(rowsPerPart(5, 1000, 'f32', 100_000)).toBe(5);
    expect(rowsPerPart(100, 1000, 'f32', 30_000)).toBe(0);
  });
});
