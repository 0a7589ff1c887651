/**
 * gptq_damp (shaders/gptq_damp.wgsl): marks H's dead columns and adds the damping to the diagonal
 * of R = J·H·J before the dense factorization, flagging a bad diagonal in the status buffer.
 */
import { type DispatchBuilder, type Dispatch } from '../gpu/dispatch.js';
import { packParams, shaderSource } from './shader.js';

export function gptqDamp(
  b: DispatchBuilder,
  a: {
    /** [n, n] f32: R, lower triangle */ r: GPUBuffer;
    /** [n] u32: set to 1 where H_kk = 0 */ dead: GPUBuffer;
    /** the solve's status words (see gptq-buffers.ts) */ status: GPUBuffer;
    n: number;
    /** a fraction of H's mean diagonal */ dampPercent: number;
  },
): Dispatch {
  return b.make(
    'gptq_damp',
    () => shaderSource('gptq_damp'),
    packParams([
      ['u32', a.n],
      ['f32', a.dampPercent],
    ]),
    [a.r, a.dead, a.status],
    [1, 1, 1],
  );
}
