/**
 * Decode attention with one invocation per (row, KV head) (shaders/attention_lanes.wgsl): every
 * row's exact online softmax over its keys in registers, one dispatch per layer, no workgroup
 * memory. For small heads on CPU adapters, where split-K's 64-thread workgroup per (split, KV head,
 * row) costs a fixed ~15 µs each however short the context, so a step's attention grew with its
 * rows; here 8 (row, KV head) pairs share one SIMD instruction. A GPU wants split-K instead (one
 * thread walking a whole context leaves it idle), so only the cpu row of the kernel defaults and
 * the tuner pick this form.
 */
import { attentionParams } from './attention.js';
import { packParams, shaderSource, MAX_GRID } from './shader.js';
import type { Dispatch, DispatchBuilder } from '../gpu/dispatch.js';
import { isQuantKv, kvPrefix, kvVariant, type KvDtype } from './kv-dtype.js';

/**
 * Most f32 values of q (and as many of accumulators) one invocation keeps: heads per KV head ×
 * head_dim. Past it the registers spill (BabyLlama: 2 × 16, stories260K: 2 × 8).
 */
export const ATTENTION_LANES_MAX_STATE = 64;
/** Invocations per workgroup: one SIMD instruction's lanes on lavapipe (more workgroups for its threads). */
const WG = 8;

/** Whether the lanes form serves this head shape and cache format. */
export function supportsAttentionLanes(
  heads: number,
  kvHeads: number,
  headDim: number,
  kv: KvDtype,
): boolean {
  const nRep = heads / kvHeads;
  return (
    !isQuantKv(kv) &&
    Number.isInteger(nRep) &&
    nRep >= 1 &&
    headDim % 4 === 0 &&
    nRep * headDim <= ATTENTION_LANES_MAX_STATE
  );
}

/** The pipeline label (= cache key) of the lanes form for a head shape and cache format. */
export function attentionLanesLabel(nRep: number, headDim: number, kv: KvDtype): string {
  return kvVariant(`attention_decode_lanes_d${headDim}r${nRep}`, kv);
}

export interface AttentionLanesArgs {
  rowInfo: GPUBuffer;
  blockTable: GPUBuffer;
  q: GPUBuffer;
  kCache: GPUBuffer;
  vCache: GPUBuffer;
  kvDtype: KvDtype;
  out: GPUBuffer;
  m: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  scale: number;
  window?: number;
  softcap?: number;
  /** Split-K scratch partials: record (row, head, split 0) gets (max, sum) for calibration. */
  partials: GPUBuffer;
  /** Splits the partials are laid out for. */
  splits: number;
}

/** One dispatch: ceil(m · kvHeads / 8) workgroups of 8 invocations. */
export function attentionLanes(b: DispatchBuilder, a: AttentionLanesArgs): Dispatch {
  const nRep = a.heads / a.kvHeads;
  if (!supportsAttentionLanes(a.heads, a.kvHeads, a.headDim, a.kvDtype))
    throw new RangeError(
      `attention lanes: ${a.heads}/${a.kvHeads} heads of ${a.headDim} over a ${a.kvDtype} cache are not served`,
    );
  const groups = Math.ceil((a.m * a.kvHeads) / WG);
  if (groups > MAX_GRID) throw new RangeError(`attention lanes: ${groups} workgroups is too many`);
  const kv = a.kvDtype;
  return b.make(
    attentionLanesLabel(nRep, a.headDim, kv),
    () =>
      `${kvPrefix(kv, 'vec4')}\nconst HD4: u32 = ${a.headDim / 4}u;\nconst NREP: u32 = ${nRep}u;\nconst WG: u32 = ${WG}u;\n` +
      shaderSource('attention_lanes', 'common/attention_rows'),
    packParams([...attentionParams(a), ['u32', a.m], ['u32', a.splits]]),
    [a.rowInfo, a.blockTable, a.q, a.kCache, a.vCache, a.partials, a.out],
    [groups, 1, 1],
  );
}
