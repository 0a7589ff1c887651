/**
 * rmsnorm: y[r] = w ⊙ x[rows[r]] / sqrt(mean(x[rows[r]]²) + eps), or with `add` y[r] += that
 * (rmsnorm_add); see shaders/rmsnorm.wgsl.
 */
import { activationFragment, checkActivationFormat, type ActivationFormat } from './activation.js';
import { MAX_GRID, packParams, shaderSource } from './shader.js';
import { type Dispatch, type DispatchBuilder } from '../gpu/dispatch.js';

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
    /** Element type of y: 'f16' (needs shader-f16) is the output cast for a matmul reading f16 X. */
    out?: ActivationFormat;
    /** Add the normed rows to y (an f32 residual stream) instead of storing them. */
    add?: boolean;
  },
): Dispatch {
  if (a.m > MAX_GRID) throw new RangeError(`rmsnorm: ${a.m} rows exceed one dispatch`);
  const out = a.out ?? 'f32';
  checkActivationFormat(b.ctx, out);
  if (a.add && out !== 'f32') throw new RangeError('rmsnorm_add adds into an f32 residual stream');
  return b.make(
    a.add ? 'rmsnorm_add' : out === 'f16' ? 'rmsnorm_f16out' : 'rmsnorm',
    () => shaderSource('rmsnorm', activationFragment(out)),
    packParams([
      ['u32', a.hidden],
      ['f32', a.eps],
    ]),
    [a.x, a.weight, a.rows, a.y],
    [a.m, 1, 1],
    a.add ? { ADD: 1 } : undefined,
  );
}
