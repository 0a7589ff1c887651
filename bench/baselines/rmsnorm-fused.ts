/**
 * rmsnorm_fused: x += delta, then y = rmsnorm(x) · w, in one pass; see rmsnorm_fused.wgsl beside
 * this file. A benchmark baseline: the forward pass adds residuals in the matmul epilogue instead.
 */
import { MAX_GRID, packParams } from '../../src/kernels/shader.js';
import type { Dispatch, DispatchBuilder } from '../../src/gpu/dispatch.js';
import { baselineSource } from './source.js';

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
    () => baselineSource('rmsnorm_fused'),
    packParams([
      ['u32', a.hidden],
      ['f32', a.eps],
    ]),
    [a.x, a.delta, a.weight, a.y],
    [a.m, 1, 1],
  );
}
