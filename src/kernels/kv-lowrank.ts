/**
 * kv_lowrank: GEAR's low-rank error factors of the blocks one step wrote whole, into a low-rank
 * KV cache after kv_quantize; see shaders/kv_lowrank.wgsl, kv-dtype.ts for the format and
 * kv-lowrank.ref.ts for the float64 twin.
 */
import { linearGrid, packParams, shaderSource } from './shader.js';
import { type Dispatch, type DispatchBuilder } from '../gpu/dispatch.js';
import { checkKvDtype, kvPrefix, kvQuantParams, kvVariant, type KvQuantDtype } from './kv-dtype.js';
import { KV_QUANTIZE_MAX_HEAD_DIM } from './kv-quantize.js';

export function kvLowrank(
  b: DispatchBuilder,
  a: {
    /** [m] u32: physical block · 16 + offset of each row */ slots: GPUBuffer;
    /** [ceil(m / 16)][kvHeads][16][headDim] f32: K rows at the identity slots */ kStage: GPUBuffer;
    vStage: GPUBuffer;
    /** [blocks][kvHeads]{[16][row words], factors} u32, the rows already written */ kCache: GPUBuffer;
    vCache: GPUBuffer;
    m: number;
    kvHeads: number;
    headDim: number;
    kvDtype: KvQuantDtype;
  },
): Dispatch {
  checkKvDtype(b.ctx, a.kvDtype, a.headDim);
  const { rank } = kvQuantParams(a.kvDtype);
  if (rank === 0 || rank % 2 !== 0) {
    throw new RangeError(`kv_lowrank: '${a.kvDtype}' has no low-rank part of even rank (rank ${rank})`);
  }
  if (a.headDim > KV_QUANTIZE_MAX_HEAD_DIM) {
    throw new RangeError(`kv_lowrank: head_dim ${a.headDim} is over ${KV_QUANTIZE_MAX_HEAD_DIM}`);
  }
  const { gridX, grid } = linearGrid(a.m * a.kvHeads * 2);
  return b.make(
    kvVariant('kv_lowrank', a.kvDtype),
    () => `${kvPrefix(a.kvDtype, 'scalar')}\n${shaderSource('kv_lowrank')}`,
    packParams([
      ['u32', a.m],
      ['u32', a.kvHeads],
      ['u32', a.headDim],
      ['u32', gridX],
    ]),
    [a.slots, a.kStage, a.vStage, a.kCache, a.vCache],
    grid,
  );
}
