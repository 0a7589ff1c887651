/** kv_write: scatters k/v rows into the paged KV cache at their slots; see kv_write.wgsl beside this file. */
import { linearGrid, packParams } from '../../src/kernels/shader.js';
import { baselineSource } from './source.js';
import { type Dispatch, type DispatchBuilder } from '../../src/gpu/dispatch.js';
import { checkKvDtype, kvFragment, kvVariant } from '../../src/kernels/kv-dtype.js';

export function kvWrite(
  b: DispatchBuilder,
  a: {
    /** [m] u32: physical block · 16 + offset */ slots: GPUBuffer;
    /** [m, kvHeads·headDim] f32 */ k: GPUBuffer;
    v: GPUBuffer;
    /** [blocks][kvHeads][16][headDim] kvDtype */ kCache: GPUBuffer;
    vCache: GPUBuffer;
    m: number;
    kvHeads: number;
    headDim: number;
    /** Element type of the cache (default f32; f16 needs shader-f16). */
    kvDtype?: 'f32' | 'f16';
  },
): Dispatch {
  const kv = a.kvDtype ?? 'f32';
  checkKvDtype(b.ctx, kv);
  const { gridX, grid } = linearGrid(a.m * a.kvHeads * a.headDim);
  return b.make(
    kvVariant('kv_write', kv),
    () => baselineSource('kv_write', kvFragment(kv)),
    packParams([
      ['u32', a.m],
      ['u32', a.kvHeads],
      ['u32', a.headDim],
      ['u32', gridX],
    ]),
    [a.slots, a.k, a.v, a.kCache, a.vCache],
    grid,
  );
}
