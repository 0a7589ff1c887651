/**
 * argmax: one id per logits row, lowest index on ties; see shaders/argmax.wgsl, and
 * shaders/argmax_lanes.wgsl (one invocation per row, the same ids) for a few short rows.
 */
import { MAX_GRID, packParams, shaderSource } from './shader.js';
import { type Dispatch, type DispatchBuilder } from '../gpu/dispatch.js';

/** argmax_lanes' workgroup size: one SIMD instruction on lavapipe. */
const LANES_WG = 8;

/**
 * The shapes that take argmax_lanes: a decode step's few rows (at most 32) of a small vocabulary
 * (at most 1024 ids: BabyLlama's 105, stories260K's 512), one thread's serial pass short on any
 * adapter. Measured on lavapipe (GPU ms per dispatch, best of 4 alternating rounds of 10, load ~5):
 * 105 ids at 1 / 4 / 16 rows 0.024 / 0.055 / 0.264 with a workgroup per row, 0.013 / 0.013 /
 * 0.015 here; 512 ids 0.027 / 0.055 / 0.186 against 0.015 / 0.015 / 0.022; at 4096 ids one row
 * was already slower here (0.035 against 0.027).
 */
export function argmaxLanes(rows: number, n: number): boolean {
  return rows <= 32 && n <= 1024;
}

export function argmax(
  b: DispatchBuilder,
  a: {
    /** [rows, n] f32 */ logits: GPUBuffer;
    /** [rows] u32 */ ids: GPUBuffer;
    rows: number;
    n: number;
    /** Force the one-invocation-per-row form (true) or the workgroup per row (false); default by shape. */
    lanes?: boolean;
  },
): Dispatch {
  if (a.rows > MAX_GRID) throw new RangeError(`argmax: ${a.rows} rows exceed one dispatch`);
  if (a.lanes ?? argmaxLanes(a.rows, a.n))
    return b.make(
      'argmax_lanes',
      () => shaderSource('argmax_lanes'),
      packParams([
        ['u32', a.n],
        ['u32', a.rows],
      ]),
      [a.logits, a.ids],
      [Math.ceil(a.rows / LANES_WG), 1, 1],
    );
  return b.make(
    'argmax',
    () => shaderSource('argmax'),
    packParams([['u32', a.n]]),
    [a.logits, a.ids],
    [a.rows, 1, 1],
  );
}
