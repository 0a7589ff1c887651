/** attention: causal GQA attention of each query row over the paged KV cache; see shaders/attention.wgsl. */
import { UnsupportedModelError } from '../errors.js';
import { MAX_GRID, packParams, shaderSource, type ParamField } from './shader.js';
import { type Dispatch, type DispatchBuilder } from '../gpu/dispatch.js';
import { checkKvDtype, kvPrefix, kvVariant, type KvDtype } from './kv-dtype.js';

/** The kernel keeps q of one head in workgroup memory and 4 output dims per thread. */
export const ATTENTION_MAX_HEAD_DIM = 256;

/** The arguments of `attention` and of the tiled `attentionPrefill` (attention-prefill.ts). */
export interface AttentionArgs {
  /** [m] vec4<u32> (row-info.ts: position, block-table offset, tree base, tree mask) */
  rowInfo: GPUBuffer;
  /** u32 physical block ids */ blockTable: GPUBuffer;
  /** [m, heads·headDim] f32 */ q: GPUBuffer;
  /** [blocks][kvHeads][16] rows of headDim kvDtype values (kv-dtype.ts) */ kCache: GPUBuffer;
  vCache: GPUBuffer;
  /** [m, heads·headDim] f32 */ out: GPUBuffer;
  m: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  scale: number;
  /**
   * Sliding window of this layer (ModelSpec.layerWindows): a row at position i sees keys
   * i - window < j <= i; 0 (the default) for full causal attention.
   */
  window?: number;
  /** > 0: scores soft-capped to softcap · tanh(score / softcap) (Gemma 2). */
  softcap?: number;
  /** Format of the cache (default f32; f16 needs shader-f16). */
  kvDtype?: KvDtype;
}

export function attention(b: DispatchBuilder, a: AttentionArgs): Dispatch {
  if (a.headDim > ATTENTION_MAX_HEAD_DIM) {
    throw new UnsupportedModelError(
      `head_dim ${a.headDim} is over the attention kernel's ${ATTENTION_MAX_HEAD_DIM}`,
    );
  }
  if (a.m > MAX_GRID || a.heads > MAX_GRID)
    throw new RangeError(`attention: grid ${a.heads}x${a.m} too large`);
  const kv = a.kvDtype ?? 'f32';
  checkKvDtype(b.ctx, kv, a.headDim);
  return b.make(
    kvVariant('attention', kv),
    () => `${kvPrefix(kv, 'scalar')}\n${shaderSource('attention', 'common/attention_rows')}`,
    packParams(attentionParams(a)),
    [a.rowInfo, a.blockTable, a.q, a.kCache, a.vCache, a.out],
    [a.heads, a.m, 1],
  );
}

/**
 * The uniforms the attention kernels open with (attention_prefill appends its row count,
 * attention_lanes its row count and splits).
 */
export function attentionParams(
  a: Pick<AttentionArgs, 'heads' | 'kvHeads' | 'headDim' | 'scale' | 'window' | 'softcap'>,
): ParamField[] {
  return [
    ['u32', a.heads],
    ['u32', a.kvHeads],
    ['u32', a.headDim],
    ['f32', a.scale],
    ['u32', a.window ?? 0],
    ['f32', a.softcap ?? 0],
  ];
}
