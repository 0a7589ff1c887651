/**
 * Q4_0 is Kiln's int4 format exactly: 32-element groups, one f16 scale d, codes q ∈ 0..15 standing
 * for (q − 8)·d, i.e. int4 g32, symmetric (z = 8), f16 scales (src/quant/q4.ts). So Q4_0 tensors
 * are converted, bit-exactly, into a Q4Matrix and run on matmul_q4 (the faster kernel, tuned,
 * with the subgroup X path) instead of matmul_gguf: only the nibble order changes.
 */
import { f16BitsToF32 } from '../io/dtype.js';
import { InvalidModelFileError } from '../errors.js';
import type { Q4Format, Q4Matrix } from './q4.js';

export const Q4_0_AS_Q4: Q4Format = { groupSize: 32, symmetric: true, scaleType: 'f16' };

/** A row-major [rows, cols] Q4_0 tensor (the file's bytes) as the int4 matrix of the same values. */
export function q4_0ToQ4Matrix(bytes: Uint8Array, rows: number, cols: number): Q4Matrix {
  if (cols % 32 !== 0)
    throw new InvalidModelFileError(`Q4_0 tensor of ${cols} columns: not whole 32-element blocks`);
  const blocks = (rows * cols) / 32;
  if (bytes.byteLength < blocks * 18) {
    throw new InvalidModelFileError(
      `Q4_0 [${rows}, ${cols}] tensor needs ${blocks * 18} bytes, got ${bytes.byteLength}`,
    );
  }
  const codes = new Uint8Array(rows * cols);
  const scales = new Float32Array(blocks);
  for (let b = 0; b < blocks; b++) {
    const o = b * 18;
    scales[b] = f16BitsToF32((bytes[o] as number) | ((bytes[o + 1] as number) << 8));
    for (let j = 0; j < 16; j++) {
      const v = bytes[o + 2 + j] as number;
      codes[b * 32 + j] = v & 15;
      codes[b * 32 + 16 + j] = v >> 4;
    }
  }
  return { rows, cols, format: Q4_0_AS_Q4, codes, scales, zeros: new Uint8Array(blocks).fill(8) };
}
