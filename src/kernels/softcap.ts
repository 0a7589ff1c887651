/** softcap: x = cap · tanh(x / cap) in place (Gemma 2's final logits); see shaders/softcap.wgsl. */
import { linearGrid, packParams, shaderSource } from './shader.js';
import { type Dispatch, type DispatchBuilder } from '../gpu/dispatch.js';

export function softcap(
  b: DispatchBuilder,
  a: { /** [count] f32, capped in place */ x: GPUBuffer; count: number; cap: number },
): Dispatch {
  if (!(a.cap > 0)) throw new RangeError(`softcap: cap ${a.cap} must be positive`);
  const { gridX, grid } = linearGrid(a.count);
  return b.make(
    'softcap',
    () => shaderSource('softcap'),
    packParams([
      ['u32', a.count],
      ['f32', a.cap],
      ['u32', gridX],
    ]),
    [a.x],
    grid,
  );
}
