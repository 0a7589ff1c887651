/**
 * float64 reference of matmul_gguf: the weights decoded by the CPU twins (src/quant/gguf-blocks.ts,
 * exact in float64), then Y = X · Wᵀ (+ bias) (+ Y0) summed in float64.
 */
import { dequantizeGguf } from '../quant/gguf-blocks.js';

export function matmulGgufRef(
  type: string,
  bytes: Uint8Array,
  rows: number,
  cols: number,
  x: Float32Array,
  m: number,
  extra?: { bias?: Float32Array; y0?: Float32Array },
): Float64Array {
  const w = dequantizeGguf(type, bytes, rows * cols);
  const y = new Float64Array(m * rows);
  for (let i = 0; i < m; i++) {
    for (let n = 0; n < rows; n++) {
      let s = 0;
      for (let k = 0; k < cols; k++) s += (x[i * cols + k] as number) * (w[n * cols + k] as number);
      if (extra?.bias) s += extra.bias[n] as number;
      if (extra?.y0) s += extra.y0[i * rows + n] as number;
      y[i * rows + n] = s;
    }
  }
  return y;
}
