/**
 * AWQ checkpoints (AutoAWQ's `gemm` packing, 4 bits) into Kiln's Q4Matrix, exactly: `dequantize`
 * of the result is the weight AutoAWQ's kernels compute.
 *
 * A Linear W[N = out, K = in] is stored as
 *   - qweight int32 [K, N/8]: int32 (k, c) holds n = 8c..8c+7 of row k, interleaved: nibble slot i
 *     (bits 4i..4i+3) holds column 8c + AWQ_ORDER[i], so column 8c + m sits in slot
 *     AWQ_SLOT[m] (the "reverse order" unpackers apply after splitting the nibbles);
 *   - qzeros int32 [G, N/8]: the zero points, packed the same way and stored as is (no offset);
 *   - scales f16 [G, N];
 * and W[n, k] = scales[k / group_size, n] · (q[k, n] − zero[k / group_size, n]). Groups are always
 * contiguous in k, so no permutation is ever needed.
 */
import { UnsupportedModelError } from '../errors.js';
import {
  checkLayerShape,
  decodeF16Scales,
  requireTensor,
  resolveGroupSize,
  type AwqImportConfig,
  type ImportedQ4,
  type PackedInts,
} from './import-config.js';

/** Column (within 8) held by nibble slot i: the order AutoAWQ's packer writes, chosen for its kernel's dequant. */
export const AWQ_ORDER: readonly number[] = [0, 2, 4, 6, 1, 3, 5, 7];
/** Nibble slot holding column m (the inverse of AWQ_ORDER). */
export const AWQ_SLOT: readonly number[] = [0, 4, 1, 5, 2, 6, 3, 7];

export interface AwqTensors {
  qweight: PackedInts | undefined;
  qzeros: PackedInts | undefined;
  /** f16 bits. */
  scales: Uint16Array | undefined;
  /** Stored shapes (from the safetensors header), to name both shapes when one is wrong. */
  shapes?: { qweight?: readonly number[]; qzeros?: readonly number[]; scales?: readonly number[] };
}

/** Bit shift of column n's nibble within its int32. */
const shiftOf = (n: number): number => 4 * (AWQ_SLOT[n & 7] as number);

/**
 * Converts one AWQ Linear of shape [rows = N, cols = K]; `layer` is its name prefix, used in every
 * message. Codes, zero points and f16 scales are carried over unchanged (scaleType 'f16'); the
 * matrix is symmetric exactly when every zero is 8.
 */
export function awqToQ4(
  t: AwqTensors,
  shape: { rows: number; cols: number },
  cfg: AwqImportConfig,
  layer: string,
): ImportedQ4 {
  // The config parser already refuses these; a hand-built config must not slip past them either.
  if (cfg.version !== 'gemm' || cfg.bits !== 4 || cfg.zeroPoint !== true) {
    throw new UnsupportedModelError(
      `${layer}: AWQ version ${String(cfg.version)}, ${String(cfg.bits)} bits, zero_point ${String(cfg.zeroPoint)} is not supported (gemm, 4 bits, zero_point true)`,
    );
  }
  const { rows: n, cols: k } = shape;
  checkLayerShape(n, k, layer);
  const gs = resolveGroupSize(cfg.groupSize, k, layer);
  const groups = k / gs;
  const words = n / 8;
  const qweight = requireTensor(t.qweight, t.shapes?.qweight, [k, words], `${layer}.qweight`);
  const qzeros = requireTensor(t.qzeros, t.shapes?.qzeros, [groups, words], `${layer}.qzeros`);
  const scaleBits = requireTensor(t.scales, t.shapes?.scales, [groups, n], `${layer}.scales`);
  const scales = decodeF16Scales(scaleBits, `${layer}.scales`);

  const codes = new Uint8Array(n * k);
  for (let r = 0; r < n; r++) {
    const shift = shiftOf(r);
    const col = r >>> 3;
    for (let c = 0; c < k; c++) codes[r * k + c] = ((qweight[c * words + col] as number) >>> shift) & 15;
  }
  const zeros = new Uint8Array(n * groups);
  const outScales = new Float32Array(n * groups);
  for (let g = 0; g < groups; g++) {
    for (let r = 0; r < n; r++) {
      zeros[r * groups + g] = ((qzeros[g * words + (r >>> 3)] as number) >>> shiftOf(r)) & 15;
      outScales[r * groups + g] = scales[g * n + r] as number;
    }
  }
  return {
    matrix: {
      rows: n,
      cols: k,
      format: { groupSize: gs, symmetric: zeros.every((z) => z === 8), scaleType: 'f16' },
      codes,
      scales: outScales,
      zeros,
    },
  };
}
