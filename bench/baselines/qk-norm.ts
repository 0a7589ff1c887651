/**
 * qk_norm: per-head RMSNorm of q and k, in place in the fused qkv rows; see qk_norm.wgsl beside
 * this file. The engine folds it into rope_kv_write (rope_kv_write_qknorm); this unfused pair is
 * the baseline the fused kernel is tested and timed against.
 */
import { MAX_GRID, packParams } from '../../src/kernels/shader.js';
import { baselineSource } from './source.js';
import { type Dispatch, type DispatchBuilder } from '../../src/gpu/dispatch.js';

export function qkNorm(
  b: DispatchBuilder,
  a: {
    /** [m, (heads + 2·kvHeads)·headDim] f32, normalized in place (q and k heads) */ qkv: GPUBuffer;
    /** [headDim] f32 */ qWeight: GPUBuffer;
    /** [headDim] f32 */ kWeight: GPUBuffer;
    m: number;
    heads: number;
    kvHeads: number;
    headDim: number;
    eps: number;
  },
): Dispatch {
  const slots = a.heads + a.kvHeads;
  if (a.m > MAX_GRID || slots > MAX_GRID) throw new RangeError(`qk_norm: grid ${slots}x${a.m} too large`);
  return b.make(
    'qk_norm',
    () => baselineSource('qk_norm'),
    packParams([
      ['u32', a.heads],
      ['u32', a.kvHeads],
      ['u32', a.headDim],
      ['f32', a.eps],
    ]),
    [a.qkv, a.qWeight, a.kWeight],
    [slots, a.m, 1],
  );
}
