/**
 * Kiln's int4 checkpoint format: an ordinary Hugging Face-style folder (config.json, tokenizer,
 * safetensors) whose projection matrices are stored already packed for shaders/matmul_q4.wgsl, so
 * loading one is a byte copy per buffer (no reshuffle on the CPU or GPU).
 *
 * config.json carries `quantization_config` (see `KilnQuantConfig`), and every shard's
 * `__metadata__` repeats it under `kiln.quantization`. A quantized projection `P` is stored as
 *   P.q4_words   U32 [tiles, K/32, 8, 4]       codes: u32 j of 16-byte word i of row n holds k =
 *                                               32i + 8j .. +7, low nibble first (src/quant/q4.ts)
 *   P.q4_scales  F16 [tiles, ⌈G/2⌉, 8, 2]       groups 2j and 2j+1 of row n side by side (or
 *                F32 [tiles, G, 8]              with f32 scales)
 *   P.q4_zeros   U32 [tiles, ⌈G/8⌉, 8]          asymmetric only: groups 8j..8j+7, 4 bits each
 * where tiles = ⌈N/8⌉ (rows padded with zeros to whole 8-row tiles) and G = K / group size. The
 * leading dimension is the tile, so any run of whole tiles is a contiguous byte range: a matrix
 * split across GPU buffers (maxStorageBufferBindingSize) streams each part straight from the file.
 * The projections are stored fused the way the forward pass runs them: q, k and v stacked as
 * `self_attn.qkv_proj`, gate and up stacked as `mlp.gate_up_proj` (biases keep their own names).
 * Embeddings stay in float; the LM head too unless `lm_head` is true.
 */
import { InvalidModelFileError, UnsupportedModelError } from '../errors.js';
import type { SafetensorsDtype } from '../io/dtype.js';
import { describeValue, isJsonObject } from '../io/json.js';
import { Q4_GROUP_SIZES, Q4_TILE_ROWS, Q4_WORD_K, type Q4Format, type Q4GroupSize } from './q4.js';

export const KILN_QUANT_METHOD = 'kiln';
export const KILN_Q4_LAYOUT = 'q4-tiled-v1';
/** Key of the format in each shard's `__metadata__`. */
export const KILN_QUANT_METADATA = 'kiln.quantization';

/** The quantizers of src/quant that can write a Kiln int4 folder. */
export type QuantMethod = 'rtn' | 'clip' | 'gptq';

export interface KilnQuantConfig {
  quant_method: typeof KILN_QUANT_METHOD;
  layout: typeof KILN_Q4_LAYOUT;
  bits: 4;
  group_size: Q4GroupSize;
  sym: boolean;
  scale_dtype: 'float16' | 'float32';
  /** The quantizer that produced the codes (informational). */
  method: string;
  /** Whether lm_head is quantized (embeddings never are). */
  lm_head: boolean;
}

export function kilnQuantConfig(format: Q4Format, method: string, lmHead: boolean): KilnQuantConfig {
  return {
    quant_method: KILN_QUANT_METHOD,
    layout: KILN_Q4_LAYOUT,
    bits: 4,
    group_size: format.groupSize,
    sym: format.symmetric,
    scale_dtype: format.scaleType === 'f16' ? 'float16' : 'float32',
    method,
    lm_head: lmHead,
  };
}

/** Parses a Kiln `quantization_config`; every refusal names the field and its value. */
export function parseKilnQuantConfig(
  v: unknown,
  where: string,
): { format: Q4Format; lmHead: boolean; method: string } {
  if (!isJsonObject(v)) throw new InvalidModelFileError(`${where}: quantization_config is not an object`);
  const bad = (field: string, expected: string) =>
    new UnsupportedModelError(
      `${where}: quantization_config.${field} = ${describeValue(v[field])} is not supported (expected ${expected})`,
    );
  if (v.layout !== KILN_Q4_LAYOUT) throw bad('layout', JSON.stringify(KILN_Q4_LAYOUT));
  if (v.bits !== 4) throw bad('bits', '4');
  if (!Q4_GROUP_SIZES.includes(v.group_size as Q4GroupSize))
    throw bad('group_size', Q4_GROUP_SIZES.join(', '));
  if (typeof v.sym !== 'boolean') throw bad('sym', 'true or false');
  if (v.scale_dtype !== 'float16' && v.scale_dtype !== 'float32')
    throw bad('scale_dtype', 'float16, float32');
  if (v.lm_head !== undefined && typeof v.lm_head !== 'boolean') throw bad('lm_head', 'true or false');
  return {
    format: {
      groupSize: v.group_size as Q4GroupSize,
      symmetric: v.sym,
      scaleType: v.scale_dtype === 'float16' ? 'f16' : 'f32',
    },
    lmHead: v.lm_head === true,
    method: typeof v.method === 'string' ? v.method : 'unknown',
  };
}

export interface Q4TensorSpec {
  name: string;
  dtype: SafetensorsDtype;
  shape: number[];
  /** Bytes of one 8-row tile (the leading dimension). */
  tileBytes: number;
}

/** The tensors of a quantized [rows, cols] projection `prefix`, in the layout described above. */
export function q4TensorSpecs(prefix: string, rows: number, cols: number, format: Q4Format): Q4TensorSpec[] {
  const tiles = Math.ceil(rows / Q4_TILE_ROWS);
  const kw = cols / Q4_WORD_K;
  const groups = cols / format.groupSize;
  const specs: Q4TensorSpec[] = [
    { name: `${prefix}.q4_words`, dtype: 'U32', shape: [tiles, kw, 8, 4], tileBytes: kw * 8 * 16 },
    format.scaleType === 'f16'
      ? {
          name: `${prefix}.q4_scales`,
          dtype: 'F16',
          shape: [tiles, Math.ceil(groups / 2), 8, 2],
          tileBytes: Math.ceil(groups / 2) * 8 * 4,
        }
      : { name: `${prefix}.q4_scales`, dtype: 'F32', shape: [tiles, groups, 8], tileBytes: groups * 8 * 4 },
  ];
  if (!format.symmetric) {
    specs.push({
      name: `${prefix}.q4_zeros`,
      dtype: 'U32',
      shape: [tiles, Math.ceil(groups / 8), 8],
      tileBytes: Math.ceil(groups / 8) * 8 * 4,
    });
  }
  return specs;
}

/** Names of the fused projections a Kiln int4 folder stores for layer i. */
export function fusedProjectionNames(i: number) {
  const p = `model.layers.${i}`;
  return {
    qkv: `${p}.self_attn.qkv_proj`,
    o: `${p}.self_attn.o_proj`,
    gateUp: `${p}.mlp.gate_up_proj`,
    down: `${p}.mlp.down_proj`,
  };
}

export const LM_HEAD_PREFIX = 'lm_head';
