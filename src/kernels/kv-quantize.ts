/**
 * kv_quantize: one step's f32 K/V rows (rope_kv_write's output over the identity slots) into a
 * quantized paged KV cache; see shaders/kv_quantize.wgsl and kv-dtype.ts for the format.
 */
import { linearGrid, packParams, shaderSource } from './shader.js';
import { type Dispatch, type DispatchBuilder } from '../gpu/dispatch.js';
import { checkKvDtype, kvPrefix, kvQuantParams, kvVariant, type KvQuantDtype } from './kv-dtype.js';

/** The kernel keeps one row in private memory. */
export const KV_QUANTIZE_MAX_HEAD_DIM = 256;

/** One step's staged K/V rows and the quantized cache they go into (kv_quantize, kv_lowrank). */
export interface KvStoreArgs {
  /** [m] u32: physical block · 16 + offset of each row */ slots: GPUBuffer;
  /** [ceil(m / 16)][kvHeads][16][headDim] f32: K rows at the identity slots */ kStage: GPUBuffer;
  vStage: GPUBuffer;
  /** [blocks][kvHeads]{[16][row words], low-rank factors if the format has them} u32 */ kCache: GPUBuffer;
  vCache: GPUBuffer;
  m: number;
  kvHeads: number;
  headDim: number;
  kvDtype: KvQuantDtype;
}

export function kvQuantize(b: DispatchBuilder, a: KvStoreArgs): Dispatch {
  checkKvDtype(b.ctx, a.kvDtype, a.headDim);
  if (a.headDim > KV_QUANTIZE_MAX_HEAD_DIM) {
    throw new RangeError(`kv_quantize: head_dim ${a.headDim} is over ${KV_QUANTIZE_MAX_HEAD_DIM}`);
  }
  if (kvQuantParams(a.kvDtype).outliers > 4) throw new RangeError('kv_quantize: at most 4 outliers per row');
  const { gridX, grid } = linearGrid(a.m * a.kvHeads * 2);
  return b.make(
    kvVariant('kv_quantize', a.kvDtype),
    () => `${kvPrefix(a.kvDtype, 'scalar')}\n${shaderSource('kv_quantize')}`,
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
