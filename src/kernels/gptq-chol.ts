/**
 * gptq_chol (shaders/gptq_chol.wgsl): one panel of the dense, blocked left-looking Cholesky
 * factorization R = L·Lᵀ: mode 0 factors the panel's diagonal block, mode 1 solves the rows below
 * it, each adding the panel's update from the earlier columns (a gptq_gemm) first.
 */
import { type DispatchBuilder, type Dispatch } from '../gpu/dispatch.js';
import { packParams, shaderSource } from './shader.js';

/** Panel width of the factorization (gptq_chol's workgroup-memory block is 64 × 64 f32). */
export const PANEL = 64;

export function gptqChol(
  b: DispatchBuilder,
  a: {
    /** [n, n] f32: R in, L out (lower triangle) */ l: GPUBuffer;
    /** [n − p0, PANEL] f32: −L[p0:, <p0]·L[panel, <p0]ᵀ */ upd: GPUBuffer;
    /** the solve's status words (see gptq-buffers.ts) */ status: GPUBuffer;
    n: number;
    /** first column of the panel */ p0: number;
    /** panel width (PANEL, or what is left at the end) */ w: number;
    /** 0: factor the diagonal block; 1: solve the rows below it */ mode: number;
    groups: number;
  },
): Dispatch {
  return b.make(
    'gptq_chol',
    () => shaderSource('gptq_chol'),
    packParams([
      ['u32', a.n],
      ['u32', a.p0],
      ['u32', a.w],
      ['u32', a.p0 > 0 ? 1 : 0],
      ['u32', a.mode],
    ]),
    [a.l, a.upd, a.status],
    [a.groups, 1, 1],
  );
}
