/**
 * attention_prefill: the attention of a step's rows (a prefill chunk and whatever is batched with
 * it) in tiles of 16 query rows per workgroup; see shaders/attention_prefill.wgsl. The same keys,
 * masks and arithmetic as `attention` (attention.ts), which stays for head dims this kernel's vec4
 * loads cannot take.
 */
import { MAX_GRID, packParams, shaderSource } from './shader.js';
import { type Dispatch, type DispatchBuilder } from '../gpu/dispatch.js';
import { checkKvDtype, kvPrefix, kvVariant } from './kv-dtype.js';
import { attentionParams, type AttentionArgs } from './attention.js';

/** Query rows per workgroup. */
export const ATTENTION_PREFILL_ROWS = 16;

/** Whether the tiled kernel takes this head shape (4-channel loads, 4 channel groups of 16 lanes). */
export function supportsAttentionPrefill(headDim: number): boolean {
  return headDim % 4 === 0 && headDim <= 256;
}

export function attentionPrefill(b: DispatchBuilder, a: AttentionArgs): Dispatch {
  if (!supportsAttentionPrefill(a.headDim)) {
    throw new RangeError(`attention_prefill: head_dim ${a.headDim} is not a multiple of 4 up to 256`);
  }
  const tiles = Math.ceil(a.m / ATTENTION_PREFILL_ROWS);
  if (tiles > MAX_GRID || a.heads > MAX_GRID)
    throw new RangeError(`attention_prefill: grid ${a.heads}x${tiles} too large`);
  const kv = a.kvDtype ?? 'f32';
  checkKvDtype(b.ctx, kv, a.headDim);
  return b.make(
    kvVariant('attention_prefill', kv),
    () => `${kvPrefix(kv, 'vec4')}\n${shaderSource('attention_prefill', 'common/attention_rows')}`,
    packParams([...attentionParams(a), ['u32', a.m]]),
    [a.rowInfo, a.blockTable, a.q, a.kCache, a.vCache, a.out],
    [a.heads, tiles, 1],
  );
}
