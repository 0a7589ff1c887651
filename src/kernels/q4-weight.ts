/**
 * An int4 weight on the GPU (the buffers of src/quant/q4.ts's packed layout), as the int4 kernels
 * (matmul_q4, matmul_q4_gemv, embed_q4) and the loaders see it.
 */
import type { Q4Format } from '../quant/q4.js';

export interface Q4WeightPart {
  /** Codes (PackedQ4.words). */
  words: GPUBuffer;
  /** Scales (PackedQ4.scales). */
  scales: GPUBuffer;
  /** Zero points (PackedQ4.zeros); asymmetric formats only. */
  zeros?: GPUBuffer | undefined;
  /** First row of the matrix stored in this part. */
  rowStart: number;
  rows: number;
}

/** An int4 weight on the GPU: [rows, cols], split by rows into parts (each packed on its own). */
export interface Q4GpuWeight {
  name: string;
  format: Q4Format;
  rows: number;
  cols: number;
  parts: Q4WeightPart[];
}
