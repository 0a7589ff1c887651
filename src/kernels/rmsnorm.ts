/** rmsnorm: y[r] = w ⊙ x[rows[r]] / sqrt(mean(x[rows[r]]²) + eps); see shaders/rmsnorm.wgsl. */
import { activationFragment, checkActivationFormat, type ActivationFormat } from './activation.js';
import {
  linearGrid,
  MAX_GRID,
  packParams,
  shaderSource,
  type Dispatch,
  type DispatchBuilder,
} from './dispatch.js';

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
  },
): Dispatch {
  if (a.m > MAX_GRID) throw new RangeError(`rmsnorm: ${a.m} rows exceed one dispatch`);
  const out = a.out ?? 'f32';
  checkActivationFormat(b.ctx, out);
  return b.make(
    out === 'f16' ? 'rmsnorm_f16out' : 'rmsnorm',
    () => shaderSource('rmsnorm', activationFragment(out)),
    packParams([
      ['u32', a.hidden],
      ['f32', a.eps],
    ]),
    [a.x, a.weight, a.rows, a.y],
    [a.m, 1, 1],
  );
}

/** rmsnorm_fused: x += delta, then y = rmsnorm(x) · w, in one pass; see shaders/rmsnorm_fused.wgsl. */
export function rmsnormFused(
  b: DispatchBuilder,
  a: {
    /** [m, hidden] f32, updated in place */ x: GPUBuffer;
    /** [m, hidden] f32 */ delta: GPUBuffer;
    /** [hidden] f32 */ weight: GPUBuffer;
    /** [m, hidden] f32 */ y: GPUBuffer;
    m: number;
    hidden: number;
    eps: number;
  },
): Dispatch {
  if (a.m > MAX_GRID) throw new RangeError(`rmsnorm_fused: ${a.m} rows exceed one dispatch`);
  return b.make(
    'rmsnorm_fused',
    () => shaderSource('rmsnorm_fused'),
    packParams([
      ['u32', a.hidden],
      ['f32', a.eps],
    ]),
    [a.x, a.delta, a.weight, a.y],
    [a.m, 1, 1],
  );
}

/** residual_add: x += delta (the unfused baseline of rmsnorm_fused); see shaders/residual_add.wgsl. */
export function residualAdd(
  b: DispatchBuilder,
  a: { /** updated in place */ x: GPUBuffer; delta: GPUBuffer; count: number },
): Dispatch {
  const { gridX, grid } = linearGrid(a.count);
  return b.make(
    'residual_add',
    () => shaderSource('residual_add'),
    packParams([
      ['u32', a.count],
      ['u32', gridX],
    ]),
    [a.x, a.delta],
    grid,
  );
}
