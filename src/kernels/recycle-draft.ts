/**
 * recycle_draft: a token tree of guesses per logit row from Token Recycling's table, on the GPU;
 * see shaders/recycle_draft.wgsl.
 */
import { packParams, shaderSource } from './shader.js';
import { type Dispatch, type DispatchBuilder } from '../gpu/dispatch.js';

/** A tree shape's words for recycle_draft's `shape` binding: (parent + 1) | rank << 16 per node. */
export function packTreeShape(parents: readonly number[], ranks: readonly number[]): Uint32Array {
  parents.forEach((p, i) => {
    if (!(Number.isInteger(p) && p >= -1 && p < i)) throw new RangeError(`tree node ${i}: parent ${p}`);
  });
  return Uint32Array.from(parents, (p, i) => (p + 1) | ((ranks[i] as number) << 16));
}

export function recycleDraft(
  b: DispatchBuilder,
  a: {
    /** [rows] u32 the id each logit row chose */ ids: GPUBuffer;
    /** [n, k] u32 (recycle_topk's) */ table: GPUBuffer;
    /** [rows, nodes] u32 */ drafts: GPUBuffer;
    /** [nodes] u32 from packTreeShape */ shape: GPUBuffer;
    rows: number;
    n: number;
    k: number;
    nodes: number;
  },
): Dispatch {
  return b.make(
    'recycle_draft',
    () => shaderSource('recycle_draft'),
    packParams([
      ['u32', a.n],
      ['u32', a.k],
      ['u32', a.rows],
      ['u32', a.nodes],
    ]),
    [a.ids, a.table, a.drafts, a.shape],
    [Math.ceil(a.rows / 64), 1, 1],
  );
}
