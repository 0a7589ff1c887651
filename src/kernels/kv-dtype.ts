/**
 * Element formats of the paged KV cache. Attention computes in f32 whatever the format; the cache
 * stores K and V as:
 * - 'f32', or 'f16' where the adapter has shader-f16 (each value rounded once, to nearest);
 * - 'int8', 'int4', 'int2': every token row of one KV head (head_dim values) quantized on its own,
 *   asymmetric (code = round((x - min) / scale), 2^bits - 1 levels over the row's range), with
 *   (scale, min) as one f16 pair. Per token, for keys too: a row is quantized the moment it is
 *   written, so no f16 window is needed; the outlier channels that make per-token keys lossy
 *   (KIVI) are what GEAR's sparse part catches (below).
 * - 'gear4', 'gear2': GEAR's quantization plus its sparse part: the KV_OUTLIERS largest |x| of
 *   each row are left out of the row's range and stored as (channel, f16 residual) so that code +
 *   residual gives them back to f16 precision.
 * - 'int4lr', 'int2lr', 'gear4lr', 'gear2lr': the same rows plus GEAR's low-rank part, per
 *   16-token block and KV head: E ≈ A·B with A 16 x KV_RANK and B KV_RANK x head_dim (f16), E
 *   the block's quantization error after the outliers (kv_lowrank, power iteration), computed by
 *   the step that writes the block's last row, from its f32 rows (a block filled across steps
 *   keeps them in a lane of the recent window, src/engine/kv/window.ts, until then); a query adds
 *   A·B only for blocks before its own one (rows after it are its future). Ablation formats: see
 *   README.
 * Quantized rows are u32 words in the paged layout [block][kv_head]{[16][row words], factors}:
 * the packed codes (element d at word d·bits/32, bits (d·bits) % 32, padded to a whole word),
 * then the (scale, min) word, then the outlier words (channel in the low 16 bits, residual f16
 * above; channel 0xffff for none); after the 16 rows of a (block, KV head) its factor words (low-
 * rank formats only): A as [16][KV_RANK] f16, then B as [KV_RANK][head_dim] f16, zero while the
 * block has none. Every kernel that reads or writes the cache is prefixed with the
 * format's fragment (shaders/common/kv_*.wgsl): `alias KvCell` for the bindings and the loads
 * kv_k1/kv_v1 (one element) and kv_k4/kv_v4 (4 channels) by token row, and split-K attention's
 * kv_k_row + kv_k4r and kv_v_blk + kv_v4b, which read a compressed row's (scale, min) and
 * outliers once per row and leave the low-rank term to the kernel, which applies it per block
 * (keys: B·q per block and query head, then A[t]·(B·q) per key, from kv_fac / kv_k_b4 /
 * kv_k_af; values: Σ p·A per block, then a rank-2 update with B, from kv_fac / kv_v_af /
 * kv_v_b); quantized formats are written by kv_quantize from rope_kv_write's f32 rows. A
 * format's pipeline labels end in `_kv<format>` (none for f32).
 */
import { UnsupportedModelError } from '../errors.js';
import type { GpuContext } from '../gpu/device.js';
import { WGSL, type ShaderName } from './wgsl.gen.js';

export const KV_DTYPES = [
  'f32',
  'f16',
  'int8',
  'int4',
  'int2',
  'gear4',
  'gear2',
  'int4lr',
  'int2lr',
  'gear4lr',
  'gear2lr',
] as const;
export type KvDtype = (typeof KV_DTYPES)[number];
export type KvFloatDtype = 'f32' | 'f16';
export type KvQuantDtype = Exclude<KvDtype, KvFloatDtype>;

/** Outlier entries per token row of the GEAR formats (2 of 64 channels: ~3%, GEAR's s is 2%). */
export const KV_OUTLIERS = 2;

export function isQuantKv(dtype: KvDtype): dtype is KvQuantDtype {
  return dtype !== 'f32' && dtype !== 'f16';
}

/**
 * Rank of the low-rank formats' per-block error factors. 2 (GEAR uses 2-4 per head over the whole
 * context): a block is only 16 tokens, and the factors cost KV_RANK · (16 + head_dim) f16 per
 * block and KV head, 20 bytes per token per KV head of K (and of V) at head_dim 64.
 */
export const KV_RANK = 2;

/** Bits per code, outliers per row and low-rank factors per block of a quantized format. */
export function kvQuantParams(dtype: KvQuantDtype): { bits: 8 | 4 | 2; outliers: number; rank: number } {
  switch (dtype) {
    case 'int8':
      return { bits: 8, outliers: 0, rank: 0 };
    case 'int4':
      return { bits: 4, outliers: 0, rank: 0 };
    case 'int2':
      return { bits: 2, outliers: 0, rank: 0 };
    case 'gear4':
      return { bits: 4, outliers: KV_OUTLIERS, rank: 0 };
    case 'gear2':
      return { bits: 2, outliers: KV_OUTLIERS, rank: 0 };
    case 'int4lr':
      return { bits: 4, outliers: 0, rank: KV_RANK };
    case 'int2lr':
      return { bits: 2, outliers: 0, rank: KV_RANK };
    case 'gear4lr':
      return { bits: 4, outliers: KV_OUTLIERS, rank: KV_RANK };
    case 'gear2lr':
      return { bits: 2, outliers: KV_OUTLIERS, rank: KV_RANK };
  }
}

/** Words of one (block, KV head)'s low-rank factors: A 16 x rank and B rank x headDim, f16. */
export function kvFactorWords(rank: number, headDim: number): number {
  return (rank * (16 + headDim)) / 2;
}

/** Words of packed codes in one quantized row of `headDim` values. */
export function kvCodeWords(bits: number, headDim: number): number {
  return Math.ceil((headDim * bits) / 32);
}

/** Bytes of one token row (one KV head's head_dim values) of K (or V) in a `dtype` cache. */
export function kvRowBytes(dtype: KvDtype, headDim: number): number {
  if (dtype === 'f32') return 4 * headDim;
  if (dtype === 'f16') return 2 * headDim;
  const { bits, outliers } = kvQuantParams(dtype);
  return 4 * (kvCodeWords(bits, headDim) + 1 + outliers);
}

/**
 * Bytes of one (block, KV head) of K (or V): its 16 token rows and, in a low-rank format, the
 * block's factors.
 */
export function kvGroupBytes(dtype: KvDtype, headDim: number): number {
  const rows = 16 * kvRowBytes(dtype, headDim);
  return isQuantKv(dtype) ? rows + 4 * kvFactorWords(kvQuantParams(dtype).rank, headDim) : rows;
}

/**
 * The WGSL prefix of a kernel reading or writing a `dtype` cache: the format's fragment (first:
 * the f16 one opens with `enable f16`). `vec4` asks for the float formats' vec4 cells (the split-K
 * decode kernel's view); quantized cells are u32 words in both views.
 */
export function kvPrefix(dtype: KvDtype, view: 'scalar' | 'vec4'): string {
  if (!isQuantKv(dtype)) {
    const name: ShaderName = view === 'vec4' ? `common/kv4_${dtype}` : `common/kv_${dtype}`;
    return WGSL[name];
  }
  const { bits, outliers, rank } = kvQuantParams(dtype);
  return `const KV_BITS: u32 = ${bits}u;\nconst KV_OUTLIERS: u32 = ${outliers}u;\nconst KV_RANK: u32 = ${rank}u;\n${WGSL['common/kv_quant']}`;
}

/** The float formats' scalar fragment alone (the baselines that only move f32/f16 data). */
export function kvFragment(dtype: KvFloatDtype) {
  return `common/kv_${dtype}` as const;
}

/** Bytes of one K or V element of a float cache. */
export function kvElementBytes(dtype: KvFloatDtype): number {
  return dtype === 'f16' ? 2 : 4;
}

/** The pipeline label of a KV kernel's variant for `dtype`: `label` itself for f32. */
export function kvVariant(label: string, dtype: KvDtype): string {
  return dtype === 'f32' ? label : `${label}_kv${dtype}`;
}

/**
 * Throws unless the device and the head shape can hold a `dtype` cache: f16 needs shader-f16;
 * the quantized formats are read 4 channels at a time (head_dim a multiple of 4) and store a
 * channel index in 16 bits.
 */
export function checkKvDtype(ctx: GpuContext, dtype: KvDtype, headDim?: number): void {
  if (dtype === 'f16' && !ctx.adapter.shaderF16) {
    throw new RangeError('an f16 KV cache needs the shader-f16 feature, which this adapter lacks');
  }
  if (isQuantKv(dtype) && headDim !== undefined && headDim % 4 !== 0) {
    throw new UnsupportedModelError(
      `kvCache '${dtype}' needs head_dim to be a multiple of 4, got ${headDim}; use 'f16' or 'f32'`,
    );
  }
}
