/** rmsnorm: y[r] = w ⊙ x[rows[r]] / sqrt(mean(x[rows[r]]²) + eps); see shaders/rmsnorm.wgsl. */
import { MAX_GRID, packParams, shaderSource, type Dispatch, type DispatchBuilder } from './dispatch.js';

export function rmsnorm(
  b: DispatchBuilder,
  a: {
    /** [*, hidden] f32 */ x: GPUBuffer;
    /** [hidden] f32 */ weight: GPUBuffer;
    /** [m] u32: the input row of each output row */ rows: GPUBuffer;
    /** [m, hidden] f32 */ y: GPUBuffer;
    m: number;
    hidden: number;
    eps: number;
  },
): Dispatch {
  if (a.m > MAX_GRID) throw new RangeError(`rmsnorm: ${a.m} rows exceed one dispatch`);
  return b.make(
    'rmsnorm',
    () => shaderSource('rmsnorm'),
    packParams([
      ['u32', a.hidden],
      ['f32', a.eps],
    ]),
    [a.x, a.weight, a.rows, a.y],
    [a.m, 1, 1],
  );
}
