/**
 * GGUF tensor element types (ggml's `ggml_type` ids) and their block geometry: how many elements
 * one block holds and how many bytes it takes. The reader needs this to bound every tensor's bytes
 * before reading any; the CPU dequantizers and the block kernels share it, so the geometry has one
 * home. Ids are stable in the file format; removed ids (4, 5: Q4_2, Q4_3) are absent on purpose.
 */

export interface GgufTypeInfo {
  /** ggml's id, as stored in the tensor table. */
  readonly id: number;
  /** ggml's name ('Q4_K'), used in messages, kernel variants and Hub file tags. */
  readonly name: string;
  /** Elements per block (1 for plain element types). */
  readonly blockElems: number;
  /** Bytes per block. */
  readonly blockBytes: number;
}

const TYPES: readonly GgufTypeInfo[] = [
  { id: 0, name: 'F32', blockElems: 1, blockBytes: 4 },
  { id: 1, name: 'F16', blockElems: 1, blockBytes: 2 },
  // d (f16) + 32 nibbles.
  { id: 2, name: 'Q4_0', blockElems: 32, blockBytes: 18 },
  // d, m (f16) + 32 nibbles.
  { id: 3, name: 'Q4_1', blockElems: 32, blockBytes: 20 },
  // d (f16) + 32 high bits + 32 nibbles.
  { id: 6, name: 'Q5_0', blockElems: 32, blockBytes: 22 },
  // d, m (f16) + 32 high bits + 32 nibbles.
  { id: 7, name: 'Q5_1', blockElems: 32, blockBytes: 24 },
  // d (f16) + 32 int8.
  { id: 8, name: 'Q8_0', blockElems: 32, blockBytes: 34 },
  // d, s (f16) + 32 int8.
  { id: 9, name: 'Q8_1', blockElems: 32, blockBytes: 36 },
  // 16 scale/min nibble pairs, 256 2-bit quants, d, dmin (f16).
  { id: 10, name: 'Q2_K', blockElems: 256, blockBytes: 84 },
  // 256 high bits, 256 2-bit quants, 12 bytes of 6-bit scales, d (f16).
  { id: 11, name: 'Q3_K', blockElems: 256, blockBytes: 110 },
  // d, dmin (f16), 12 bytes of 6-bit scales/mins, 256 nibbles.
  { id: 12, name: 'Q4_K', blockElems: 256, blockBytes: 144 },
  // d, dmin (f16), 12 bytes of scales/mins, 256 high bits, 256 nibbles.
  { id: 13, name: 'Q5_K', blockElems: 256, blockBytes: 176 },
  // 256 low nibbles, 256 2-bit highs, 16 int8 scales, d (f16).
  { id: 14, name: 'Q6_K', blockElems: 256, blockBytes: 210 },
  // d (f32), 256 int8, 16 int16 block sums.
  { id: 15, name: 'Q8_K', blockElems: 256, blockBytes: 292 },
  { id: 16, name: 'IQ2_XXS', blockElems: 256, blockBytes: 66 },
  { id: 17, name: 'IQ2_XS', blockElems: 256, blockBytes: 74 },
  { id: 18, name: 'IQ3_XXS', blockElems: 256, blockBytes: 98 },
  { id: 19, name: 'IQ1_S', blockElems: 256, blockBytes: 50 },
  // d (f16) + 32 nibbles indexing a fixed non-linear table.
  { id: 20, name: 'IQ4_NL', blockElems: 32, blockBytes: 18 },
  { id: 21, name: 'IQ3_S', blockElems: 256, blockBytes: 110 },
  { id: 22, name: 'IQ2_S', blockElems: 256, blockBytes: 82 },
  // d (f16), scales_h (u16), scales_l (4 bytes), 256 nibbles into IQ4_NL's table.
  { id: 23, name: 'IQ4_XS', blockElems: 256, blockBytes: 136 },
  { id: 24, name: 'I8', blockElems: 1, blockBytes: 1 },
  { id: 25, name: 'I16', blockElems: 1, blockBytes: 2 },
  { id: 26, name: 'I32', blockElems: 1, blockBytes: 4 },
  { id: 27, name: 'I64', blockElems: 1, blockBytes: 8 },
  { id: 28, name: 'F64', blockElems: 1, blockBytes: 8 },
  { id: 29, name: 'IQ1_M', blockElems: 256, blockBytes: 56 },
  { id: 30, name: 'BF16', blockElems: 1, blockBytes: 2 },
];

const BY_ID: ReadonlyMap<number, GgufTypeInfo> = new Map(TYPES.map((t) => [t.id, t]));
const BY_NAME: ReadonlyMap<string, GgufTypeInfo> = new Map(TYPES.map((t) => [t.name, t]));

/** The type with ggml id `id`, or undefined for an id the format does not define. */
export function ggufTypeById(id: number): GgufTypeInfo | undefined {
  return BY_ID.get(id);
}

/** The type named `name` ('Q4_K'; case-sensitive, as ggml spells it), or undefined. */
export function ggufTypeByName(name: string): GgufTypeInfo | undefined {
  return BY_NAME.get(name);
}

/**
 * Bytes of a tensor of `elements` elements of type `t`, or null when `elements` is not a whole
 * number of blocks (ggml requires the first dimension to be a multiple of the block size).
 */
export function ggufTensorBytes(t: GgufTypeInfo, elements: number): number | null {
  if (!Number.isSafeInteger(elements) || elements < 0 || elements % t.blockElems !== 0) return null;
  return (elements / t.blockElems) * t.blockBytes;
}
