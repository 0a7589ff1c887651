/**
 * rmsnorm: y[r] = w ⊙ x[rows[r]] / sqrt(mean(x[rows[r]]²) + eps), or with `add` y[r] += that
 * (rmsnorm_add); see shaders/rmsnorm.wgsl, and shaders/rmsnorm_lanes.wgsl (one invocation per row,
 * the same bits) for a few narrow rows.
 */
import { activationFragment, checkActivationFormat, type ActivationFormat } from './activation.js';
import { MAX_GRID, packParams, shaderSource } from './shader.js';
import { type Dispatch, type DispatchBuilder } from '../gpu/dispatch.js';

/** rmsnorm_lanes' workgroup size (shaders/rmsnorm_lanes.wgsl): one SIMD instruction on lavapipe. */
const LANES_WG = 8;

/**
 * The shapes that take rmsnorm_lanes: a decode step's few rows (at most 32, split-K attention's
 * steps) of a small model (hidden <= 256), where one thread's serial pass over the row is short on
 * any adapter. Measured on lavapipe (GPU ms per dispatch, best of 4 alternating rounds of 10):
 * hidden 128 at 1 / 4 / 16 rows 0.019 / 0.027 / 0.071 with a workgroup per row, 0.016 / 0.016 /
 * 0.020 here; hidden 896 0.022 / 0.036 / 0.081 against 0.024 / 0.025 / 0.045.
 */
export function rmsnormLanes(m: number, hidden: number): boolean {
  return m <= 32 && hidden <= 256;
}

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
    /** Force the one-invocation-per-row form (true) or the workgroup per row (false); default by shape. */
    lanes?: boolean;
  },
): Dispatch {
  if (a.m > MAX_GRID) throw new RangeError(`rmsnorm: ${a.m} rows exceed one dispatch`);
  const out = a.out ?? 'f32';
  checkActivationFormat(b.ctx, out);
  if (a.add && out !== 'f32') throw new RangeError('rmsnorm_add adds into an f32 residual stream');
  const name = a.add ? 'rmsnorm_add' : out === 'f16' ? 'rmsnorm_f16out' : 'rmsnorm';
  if (a.lanes ?? rmsnormLanes(a.m, a.hidden)) {
    const groups = Math.ceil(a.m / LANES_WG);
    return b.make(
      name.replace('rmsnorm', 'rmsnorm_lanes'),
      () => shaderSource('rmsnorm_lanes', activationFragment(out)),
      packParams([
        ['u32', a.hidden],
        ['f32', a.eps],
        ['u32', a.m],
      ]),
      [a.x, a.weight, a.rows, a.y],
      [groups, 1, 1],
      a.add ? { ADD: 1 } : undefined,
    );
  }
  return b.make(
    name,
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
