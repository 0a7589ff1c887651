/**
 * recycle_draft: a chain of guesses per logit row from Token Recycling's table, on the GPU; see
 * shaders/recycle_draft.wgsl.
 */
import { packParams, shaderSource } from './shader.js';
import { type Dispatch, type DispatchBuilder } from '../gpu/dispatch.js';

export function recycleDraft(
  b: DispatchBuilder,
  a: {
    /** [rows] u32 the id each logit row chose */ ids: GPUBuffer;
    /** [n, k] u32 (recycle_topk's) */ table: GPUBuffer;
    /** [rows, depth] u32 */ drafts: GPUBuffer;
    rows: number;
    n: number;
    k: number;
    depth: number;
  },
): Dispatch {
  return b.make(
    'recycle_draft',
    () => shaderSource('recycle_draft'),
    packParams([
      ['u32', a.n],
      ['u32', a.k],
      ['u32', a.rows],
      ['u32', a.depth],
    ]),
    [a.ids, a.table, a.drafts],
    [Math.ceil(a.rows / 64), 1, 1],
  );
}
