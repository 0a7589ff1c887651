/** residual_add: x += delta (the unfused baseline of rmsnorm_fused); see residual_add.wgsl beside this file. */
import { linearGrid, packParams } from '../../src/kernels/shader.js';
import type { Dispatch, DispatchBuilder } from '../../src/gpu/dispatch.js';
import { baselineSource } from './source.js';

export function residualAdd(
  b: DispatchBuilder,
  a: { /** updated in place */ x: GPUBuffer; delta: GPUBuffer; count: number },
): Dispatch {
  const { gridX, grid } = linearGrid(a.count);
  return b.make(
    'residual_add',
    () => baselineSource('residual_add'),
    packParams([
      ['u32', a.count],
      ['u32', gridX],
    ]),
    [a.x, a.delta],
    grid,
  );
}
