/**
 * recycle_topk: Token Recycling's adjacency table updated from a step's logits on the GPU (each
 * logit row's top-k ids become the table row of that row's input token); see
 * shaders/recycle_topk.wgsl, and shaders/recycle_topk_lanes.wgsl (one invocation per row) for a few
 * rows of a small vocabulary.
 */
import { MAX_GRID, packParams, shaderSource } from './shader.js';
import { type Dispatch, type DispatchBuilder } from '../gpu/dispatch.js';

/** Most candidates per table row (the kernel keeps this many per thread). */
export const RECYCLE_MAX_K = 8;
/** A table entry with no candidate (never written, or fewer counted logits than k). */
export const RECYCLE_NONE = 0xffffffff;

/** recycle_topk_lanes' workgroup size: one SIMD instruction on lavapipe. */
const LANES_WG = 8;

/**
 * The shapes that take recycle_topk_lanes (one invocation per logit row, the same table rows): a
 * step's few rows (at most 32) over a small vocabulary (at most 1024 ids), as argmax_lanes.
 * Measured on lavapipe (GPU ms per dispatch, best of 4 alternating rounds of 10, k 8, load ~4):
 * 105 ids at 1 / 4 / 16 rows 0.029 / 0.079 / 0.284 with a workgroup per row, 0.018 / 0.024 /
 * 0.030 here; 512 ids 0.039 / 0.102 / 0.434 against 0.024 / 0.026 / 0.052; 1024 ids 0.049 /
 * 0.159 / 0.608 against 0.024 / 0.031 / 0.069.
 */
export function recycleTopkLanes(rows: number, n: number): boolean {
  return rows <= 32 && n <= 1024;
}

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
    /** Force the one-invocation-per-row form (true) or the workgroup per row (false); default by shape. */
    lanes?: boolean;
  },
): Dispatch {
  if (a.rows > MAX_GRID) throw new RangeError(`recycle_topk: ${a.rows} rows exceed one dispatch`);
  if (!(Number.isInteger(a.k) && a.k >= 1 && a.k <= RECYCLE_MAX_K)) {
    throw new RangeError(`recycle_topk: k must be an integer from 1 to ${RECYCLE_MAX_K}, got ${a.k}`);
  }
  if (a.lanes ?? recycleTopkLanes(a.rows, a.n))
    return b.make(
      'recycle_topk_lanes',
      () => shaderSource('recycle_topk_lanes'),
      packParams([
        ['u32', a.n],
        ['u32', a.k],
        ['u32', a.rows],
      ]),
      [a.logits, a.ids, a.logitRows, a.table],
      [Math.ceil(a.rows / LANES_WG), 1, 1],
    );
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
