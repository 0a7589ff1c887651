/**
 * recycle_topk: Token Recycling's adjacency table updated from a step's logits on the GPU (each
 * logit row's top-k ids become the table row of that row's input token); see
 * shaders/recycle_topk.wgsl.
 */
import { MAX_GRID, packParams, shaderSource } from './shader.js';
import { type Dispatch, type DispatchBuilder } from '../gpu/dispatch.js';

/** Most candidates per table row (the kernel keeps this many per thread). */
export const RECYCLE_MAX_K = 8;
/** A table entry with no candidate (never written, or fewer counted logits than k). */
export const RECYCLE_NONE = 0xffffffff;

export function recycleTopk(
  b: DispatchBuilder,
  a: {
    /** [rows, n] f32 */ logits: GPUBuffer;
    /** [m] u32 the step's input token of each row */ ids: GPUBuffer;
    /** [rows] u32 the row whose logits each logit row is */ logitRows: GPUBuffer;
    /** [n, k] u32 */ table: GPUBuffer;
    rows: number;
    n: number;
    k: number;
  },
): Dispatch {
  if (a.rows > MAX_GRID) throw new RangeError(`recycle_topk: ${a.rows} rows exceed one dispatch`);
  if (!(Number.isInteger(a.k) && a.k >= 1 && a.k <= RECYCLE_MAX_K)) {
    throw new RangeError(`recycle_topk: k must be an integer from 1 to ${RECYCLE_MAX_K}, got ${a.k}`);
  }
  return b.make(
    'recycle_topk',
    () => shaderSource('recycle_topk'),
    packParams([
      ['u32', a.n],
      ['u32', a.k],
      ['u32', a.rows],
    ]),
    [a.logits, a.ids, a.logitRows, a.table],
    [a.rows, 1, 1],
  );
}
