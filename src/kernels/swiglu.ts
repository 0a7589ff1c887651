/** swiglu: gate = silu(gate) ⊙ up, in place; see shaders/swiglu.wgsl. */
import { linearGrid, packParams, shaderSource, type Dispatch, type DispatchBuilder } from './dispatch.js';

export function swiglu(b: DispatchBuilder, a: { gate: GPUBuffer; up: GPUBuffer; count: number }): Dispatch {
  const { gridX, grid } = linearGrid(a.count);
  return b.make(
    'swiglu',
    () => shaderSource('swiglu'),
    packParams([
      ['u32', a.count],
      ['u32', gridX],
    ]),
    [a.gate, a.up],
    grid,
  );
}
