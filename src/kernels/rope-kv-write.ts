/**
 * rope_kv_write: RoPE on q and k plus the KV-cache write, fused after the q/k/v projection; see
 * shaders/rope_kv_write.wgsl. With `qkNorm`, the variant rope_kv_write_qknorm first RMS-normalizes
 * every q and k head (shaders/rope_kv_write_qknorm.wgsl), in place of a separate qk_norm dispatch.
 */
import { linearGrid, MAX_GRID, packParams, shaderSource } from './shader.js';
import { type Dispatch, type DispatchBuilder } from '../gpu/dispatch.js';
import { checkKvDtype, kvFragment, kvVariant } from './kv-dtype.js';

export function ropeKvWrite(
  b: DispatchBuilder,
  a: {
    /** [m] vec2<u32> (position, block-table offset) */ rowInfo: GPUBuffer;
    /** [m] u32: physical block · 16 + offset */ slots: GPUBuffer;
    /** [positions][rotaryDim / 2] vec2<f32> (cos, sin), from ropeTable */ table: GPUBuffer;
    /** [m, (heads + 2·kvHeads)·headDim] f32: the fused projection's output */ qkv: GPUBuffer;
    /** [m, heads·headDim] f32 */ q: GPUBuffer;
    /** [blocks][kvHeads][16][headDim] kvDtype */ kCache: GPUBuffer;
    vCache: GPUBuffer;
    m: number;
    heads: number;
    kvHeads: number;
    headDim: number;
    /** Leading elements of each q/k head that rotate (default headDim; 0: none). */
    rotaryDim?: number;
    /**
     * Element type of the cache (default f32; f16 needs shader-f16). A quantized cache is written
     * by kv_quantize from this kernel's f32 rows at the identity slots.
     */
    kvDtype?: 'f32' | 'f16';
    /** Per-head RMSNorm of q and k before RoPE ((1 + w) weights pre-added): the fused variant. */
    qkNorm?: {
      /** [headDim] f32 */ qWeight: GPUBuffer;
      /** [headDim] f32 */ kWeight: GPUBuffer;
      eps: number;
    };
  },
): Dispatch {
  if (a.headDim % 2 !== 0) throw new RangeError(`rope_kv_write: head_dim ${a.headDim} is odd`);
  const rot = a.rotaryDim ?? a.headDim;
  if (rot % 2 !== 0 || rot < 0 || rot > a.headDim)
    throw new RangeError(`rope_kv_write: rotary dim ${rot} (an even number up to head_dim ${a.headDim})`);
  const kv = a.kvDtype ?? 'f32';
  checkKvDtype(b.ctx, kv);
  const buffers = [a.rowInfo, a.slots, a.table, a.qkv, a.q, a.kCache, a.vCache];
  const norm = a.qkNorm;
  if (norm) {
    const headSlots = a.heads + 2 * a.kvHeads;
    if (a.m > MAX_GRID || headSlots > MAX_GRID)
      throw new RangeError(`rope_kv_write_qknorm: grid ${headSlots}x${a.m} too large`);
    return b.make(
      kvVariant('rope_kv_write_qknorm', kv),
      () => shaderSource('rope_kv_write_qknorm', kvFragment(kv)),
      packParams([
        ['u32', a.heads],
        ['u32', a.kvHeads],
        ['u32', a.headDim],
        ['u32', rot],
        ['f32', norm.eps],
      ]),
      [...buffers, norm.qWeight, norm.kWeight],
      [headSlots, a.m, 1],
    );
  }
  const { gridX, grid } = linearGrid((a.m * (a.heads + 2 * a.kvHeads) * a.headDim) / 2);
  return b.make(
    kvVariant('rope_kv_write', kv),
    () => shaderSource('rope_kv_write', kvFragment(kv)),
    packParams([
      ['u32', a.m],
      ['u32', a.heads],
      ['u32', a.kvHeads],
      ['u32', a.headDim],
      ['u32', gridX],
      ['u32', rot],
    ]),
    buffers,
    grid,
  );
}
