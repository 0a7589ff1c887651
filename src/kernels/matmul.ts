/**
 * matmul_{f32,f16,bf16}: Y[m, n] (+)= X[m, :] · W[n, :] (+ bias[n]); see shaders/matmul.wgsl.
 * One dispatch per weight part; each writes its own column range of Y.
 */
import { GpuDeviceError } from '../errors.js';
import { MAX_GRID, packParams, shaderSource, type Dispatch, type DispatchBuilder } from './dispatch.js';
import { weightFragment, type GpuWeight } from './weight.js';

export interface MatmulArgs {
  /** [m, weight.cols] f32 */
  x: GPUBuffer;
  weight: GpuWeight;
  /** [m, weight.rows] f32 */
  y: GPUBuffer;
  m: number;
  /** [weight.rows] f32 */
  bias?: GPUBuffer | undefined;
  /** Add into y instead of overwriting it (fuses the residual add). */
  accumulate?: boolean;
  /** Bound when there is no bias (bindings cannot be empty). */
  placeholder: GPUBuffer;
}

/** Rows of X per workgroup (TM in the shader). */
const ROWS_PER_GROUP = 8;
/** Output columns per workgroup (TN in the shader). */
const COLS_PER_GROUP = 8;

function matmulVariant(w: GpuWeight): string {
  return `matmul_${w.format}`;
}

export function matmul(b: DispatchBuilder, a: MatmulArgs): Dispatch[] {
  const variant = matmulVariant(a.weight);
  const zGroups = Math.ceil(a.m / ROWS_PER_GROUP);
  if (zGroups > MAX_GRID) throw new GpuDeviceError(`${variant}: ${a.m} rows exceed one dispatch`);
  const flags = (a.bias ? 1 : 0) | (a.accumulate ? 2 : 0);
  return a.weight.parts.map((part) => {
    const groups = Math.ceil(part.rows / COLS_PER_GROUP);
    const gridX = Math.min(groups, MAX_GRID);
    const params = packParams([
      ['u32', a.m],
      ['u32', a.weight.cols],
      ['u32', part.rows],
      ['u32', a.weight.rows],
      ['u32', part.rowStart],
      ['u32', gridX],
      ['u32', flags],
      ['u32', 0],
    ]);
    return b.make(
      variant,
      () => shaderSource('matmul', weightFragment(a.weight.format)),
      params,
      [part.buffer, a.x, a.y, a.bias ?? a.placeholder],
      [gridX, Math.ceil(groups / gridX), zGroups],
    );
  });
}
