/**
 * A weight matrix on the GPU: [rows, cols] row-major (rows = output features, like HF Linear), in
 * its checkpoint's 16- or 32-bit float format, split by rows into parts when one buffer would
 * exceed the device's maxStorageBufferBindingSize (e.g. a 150k-token vocabulary).
 */
export type WeightFormat = 'f32' | 'f16' | 'bf16';

export interface WeightPart {
  buffer: GPUBuffer;
  /** First row of the matrix stored in this part. */
  rowStart: number;
  rows: number;
}

export interface GpuWeight {
  name: string;
  format: WeightFormat;
  rows: number;
  cols: number;
  parts: WeightPart[];
}

export const WEIGHT_FORMAT_BYTES: Record<WeightFormat, number> = { f32: 4, f16: 2, bf16: 2 };

/** The shader fragment that reads this format (see shaders/common/weight_*.wgsl). */
export function weightFragment(format: WeightFormat) {
  return `common/weight_${format}` as const;
}

/**
 * Rows per part so each part fits `maxBindingBytes`, keeping parts an even number of rows apart
 * so 16-bit rows never straddle a u32 word across two buffers.
 */
export function rowsPerPart(
  rows: number,
  cols: number,
  format: WeightFormat,
  maxBindingBytes: number,
): number {
  const rowBytes = cols * WEIGHT_FORMAT_BYTES[format];
  let per = Math.floor(maxBindingBytes / rowBytes);
  if (format !== 'f32' && cols % 2 === 1) per -= per % 2;
  return Math.max(0, Math.min(rows, per));
}
