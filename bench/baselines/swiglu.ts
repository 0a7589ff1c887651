/** swiglu: gate = silu(gate) ⊙ up, in place; see swiglu.wgsl beside this file. */
import { linearGrid, packParams } from '../../src/kernels/shader.js';
import { baselineSource } from './source.js';
import { type Dispatch, type DispatchBuilder } from '../../src/gpu/dispatch.js';

export function swiglu(b: DispatchBuilder, a: { gate: GPUBuffer; up: GPUBuffer; count: number }): Dispatch {
  const { gridX, grid } = linearGrid(a.count);
  return b.make(
    'swiglu',
    () => baselineSource('swiglu'),
    packParams([
      ['u32', a.count],
      ['u32', gridX],
    ]),
    [a.gate, a.up],
    grid,
  );
}
