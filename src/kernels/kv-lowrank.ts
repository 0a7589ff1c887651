/**
 * kv_lowrank: GEAR's low-rank error factors of the blocks whose last row a step writes, into a
 * low-rank KV cache after kv_quantize, from the step's rows and the recent window's lane of the
 * block's earlier rows (src/engine/kv/window.ts assigns lanes); see shaders/kv_lowrank.wgsl,
 * kv-dtype.ts for the format and kv-lowrank.ref.ts for the float64 twin.
 */
import { linearGrid, packParams, shaderSource } from './shader.js';
import { type Dispatch, type DispatchBuilder } from '../gpu/dispatch.js';
import { checkKvDtype, kvPrefix, kvQuantParams, kvVariant } from './kv-dtype.js';
import { KV_QUANTIZE_MAX_HEAD_DIM, type KvStoreArgs } from './kv-quantize.js';

export interface KvLowrankArgs extends KvStoreArgs {
  /** [m] u32: each row's lane of the window, 0xffffffff for none */ lanes: GPUBuffer;
  /** [lanes][K, V][kvHeads][16][headDim] f32: the layer's recent window */ window: GPUBuffer;
}

/** `a.kCache`/`a.vCache` hold the rows kv_quantize already wrote; the factors go after them. */
export function kvLowrank(b: DispatchBuilder, a: KvLowrankArgs): Dispatch {
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
    [a.slots, a.kStage, a.vStage, a.kCache, a.vCache, a.lanes, a.window],
    grid,
  );
}
