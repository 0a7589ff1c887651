/**
 * GPTQ checkpoints (AutoGPTQ / GPTQModel "gptq" and "gptq_v2" formats, 4 bits) into Kiln's
 * Q4Matrix, exactly: `dequantize` of the result is the weight the reference GPTQ kernels compute.
 *
 * A Linear W[N = out, K = in] is stored as
 *   - qweight int32 [K/8, N]: int32 (r, n) holds k = 8r..8r+7 of column n, k = 8r + j in bits
 *     4j..4j+3 (low nibble first);
 *   - qzeros int32 [G, N/8]: int32 (g, c) holds the zero points of n = 8c..8c+7 the same way. The
 *     classic format stores zero − 1 (a quirk of the original packer, which the reference kernels
 *     undo with +1 per nibble); gptq_v2 stores the zero itself;
 *   - scales f16 [G, N];
 *   - g_idx int32 [K]: the group of each k, floor(k / group_size) unless act-order (desc_act)
 *     quantized the columns in another order, in which case groups are scattered over k;
 * and W[n, k] = scales[g_idx[k], n] · (q[k, n] − zero[g_idx[k], n]).
 *
 * Kiln's groups are runs of groupSize consecutive k, so scattered groups are made contiguous by a
 * column permutation `perm` (the runtime gathers X by it before the matmul): Σ_k X[k]·W[n, k] =
 * Σ_j X[perm[j]]·W[n, perm[j]], exactly the same sum.
 */
import { InvalidModelFileError, UnsupportedModelError } from '../errors.js';
import {
  checkLayerShape,
  decodeF16Scales,
  requireTensor,
  resolveGroupSize,
  type GptqImportConfig,
  type ImportedQ4,
  type PackedInts,
} from './import-config.js';
import type { Q4Matrix } from './q4.js';

export interface GptqTensors {
  qweight: PackedInts | undefined;
  qzeros: PackedInts | undefined;
  /** f16 bits. */
  scales: Uint16Array | undefined;
  /** Absent: the trivial floor(k / group_size), which act-order checkpoints cannot rely on. */
  gIdx?: Int32Array | Uint32Array;
  /** Stored shapes (from the safetensors header), to name both shapes when one is wrong. */
  shapes?: {
    qweight?: readonly number[];
    qzeros?: readonly number[];
    scales?: readonly number[];
    gIdx?: readonly number[];
  };
}

/**
 * Converts one GPTQ Linear of shape [rows = N, cols = K]; `layer` is its name prefix (e.g.
 * "model.layers.0.mlp.down_proj"), used in every message. Codes, zero points and f16 scales are
 * carried over unchanged (scaleType 'f16'); the matrix is symmetric exactly when every zero is 8.
 */
export function gptqToQ4(
  t: GptqTensors,
  shape: { rows: number; cols: number },
  cfg: GptqImportConfig,
  layer: string,
): ImportedQ4 {
  const { rows: n, cols: k } = shape;
  checkLayerShape(n, k, layer);
  if (k % 8 !== 0) {
    throw new UnsupportedModelError(
      `${layer}: K = ${k} input features is not a multiple of 8 (qweight packs 8 per int32)`,
    );
  }
  const gs = resolveGroupSize(cfg.groupSize, k, layer);
  const groups = k / gs;
  const qweight = requireTensor(t.qweight, t.shapes?.qweight, [k / 8, n], `${layer}.qweight`);
  const qzeros = requireTensor(t.qzeros, t.shapes?.qzeros, [groups, n / 8], `${layer}.qzeros`);
  const scaleBits = requireTensor(t.scales, t.shapes?.scales, [groups, n], `${layer}.scales`);
  const scales = decodeF16Scales(scaleBits, `${layer}.scales`);
  if (t.gIdx === undefined && cfg.descAct) {
    throw new InvalidModelFileError(
      `${layer}.g_idx is missing, but desc_act is true: the group of each input feature is unknown`,
    );
  }
  const perm =
    t.gIdx === undefined
      ? undefined
      : groupPermutation(requireTensor(t.gIdx, t.shapes?.gIdx, [k], `${layer}.g_idx`), gs, groups, layer);

  const codes = new Uint8Array(n * k);
  for (let j = 0; j < k; j++) {
    const src = perm === undefined ? j : (perm[j] as number);
    const base = (src >>> 3) * n;
    const shift = 4 * (src & 7);
    for (let r = 0; r < n; r++) codes[r * k + j] = ((qweight[base + r] as number) >>> shift) & 15;
  }

  // The classic format's +1 applies per nibble, as in the reference kernels: a true zero of 0 was
  // stored as −1 (nibble 15, with the sign bits spilling into the nibbles above it) and decodes as
  // 16, which no 4-bit zero point can hold.
  const offset = cfg.checkpointFormat === 'gptq' ? 1 : 0;
  const zeros = new Uint8Array(n * groups);
  const outScales = new Float32Array(n * groups);
  for (let g = 0; g < groups; g++) {
    for (let r = 0; r < n; r++) {
      const z = (((qzeros[g * (n / 8) + (r >>> 3)] as number) >>> (4 * (r & 7))) & 15) + offset;
      if (z > 15) {
        throw new UnsupportedModelError(
          `${layer}.qzeros: group ${g}, output feature ${r} decodes to zero point ${z} (stored 15 in the classic GPTQ format); Kiln's zero points are 0..15`,
        );
      }
      zeros[r * groups + g] = z;
      outScales[r * groups + g] = scales[g * n + r] as number;
    }
  }

  const matrix: Q4Matrix = {
    rows: n,
    cols: k,
    format: { groupSize: gs, symmetric: zeros.every((z) => z === 8), scaleType: 'f16' },
    codes,
    scales: outScales,
    zeros,
  };
  return perm === undefined ? { matrix } : { matrix, perm };
}

/**
 * The stable sort of k by g_idx, or undefined when g_idx is the trivial floor(k / gs). After the
 * sort, columns [g·gs, (g+1)·gs) must all belong to group g, i.e. every group has exactly gs
 * members; GPTQ's act-order always produces that, and anything else has no Kiln equivalent.
 */
function groupPermutation(
  gIdx: Int32Array | Uint32Array,
  gs: number,
  groups: number,
  layer: string,
): Uint32Array | undefined {
  const k = gIdx.length;
  const counts = new Uint32Array(groups);
  let trivial = true;
  for (let i = 0; i < k; i++) {
    const g = gIdx[i] as number;
    if (!Number.isInteger(g) || g < 0 || g >= groups) {
      throw new InvalidModelFileError(
        `${layer}.g_idx: element ${i} is ${g}, expected a group index in 0..${groups - 1}`,
      );
    }
    counts[g] = (counts[g] as number) + 1;
    if (g !== Math.floor(i / gs)) trivial = false;
  }
  if (trivial) return undefined;
  for (let g = 0; g < groups; g++) {
    if (counts[g] !== gs) {
      throw new UnsupportedModelError(
        `${layer}.g_idx: group ${g} has ${counts[g] as number} input features, but Kiln's groups are exactly ${gs} (group_size) each`,
      );
    }
  }
  // Counting sort: a stable order that keeps each group's k ascending, so the gather reads X in
  // increasing address order within a group.
  const next = new Uint32Array(groups);
  for (let g = 0; g < groups; g++) next[g] = g * gs;
  const perm = new Uint32Array(k);
  for (let i = 0; i < k; i++) {
    const g = gIdx[i] as number;
    perm[next[g] as number] = i;
    next[g] = (next[g] as number) + 1;
  }
  return perm;
}
