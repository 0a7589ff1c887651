/**
 * matmul_{f32,f16,bf16}_m{MT}r{R}x{XV}[_swiglu]: Y[m, n] (+)= X[m, :] · W[n, :] (+ bias[n]), the flat
 * GEMM / GEMV of shaders/matmul.wgsl. One dispatch per weight part; each writes its own column
 * range of Y. The variant (rows of X per dispatch MT, rows per thread R, staged X chunk XV) is
 * chosen from the shape class, and its name is the pipeline's cache key and label.
 */
import { GpuDeviceError } from '../errors.js';
import type { GpuContext } from '../gpu/device.js';
import { activationFragment, checkActivationFormat, type ActivationFormat } from './activation.js';
import { MAX_GRID, packParams, shaderSource, type Dispatch, type DispatchBuilder } from './dispatch.js';
import { weightFragment, wordsPerRow, type GpuWeight } from './weight.js';

export interface MatmulArgs {
  /** [m, weight.cols] f32 */
  x: GPUBuffer;
  weight: GpuWeight;
  /** [m, weight.rows] f32 */
  y: GPUBuffer;
  m: number;
  /** [weight.rows] f32 ([2 · units] for a SWIGLU-fused weight: gate bias, then up bias) */
  bias?: GPUBuffer | undefined;
  /** Add into y instead of overwriting it (fuses the residual add). */
  accumulate?: boolean;
  /** Bound when there is no bias (bindings cannot be empty). */
  placeholder: GPUBuffer;
  /** Element type of x: 'f16' (needs shader-f16) reads X written by an f16 output cast. */
  xFormat?: ActivationFormat;
  /** Force a variant (benchmarks and tests); by default chosen from the shape. */
  variant?: { mt?: MatmulRowsPerDispatch; r?: MatmulRowsPerThread };
}

export type MatmulRowsPerDispatch = 1 | 4 | 8;
export type MatmulRowsPerThread = 1 | 2 | 4;

const WG = 64;
/**
 * Prefer more rows per thread (each weight word's X reuse, fewer workgroups to launch) while a
 * dispatch keeps at least this many workgroups. Measured on lavapipe, R = 1 was never the fastest
 * at decode shapes; on a GPU, small matrices are under-occupied at any R (split-K would be the fix).
 * The kernel tuner refines this per adapter.
 */
const MIN_GROUPS = 4;

/** Rows of X per dispatch tile: decode steps get exactly 1; bigger steps pad to 4 or 8. */
export function pickRowsPerDispatch(m: number): MatmulRowsPerDispatch {
  return m <= 1 ? 1 : m <= 4 ? 4 : 8;
}

/** Rows per thread: the most that still leaves MIN_GROUPS workgroups (SWIGLU needs an even R). */
export function pickRowsPerThread(rows: number, swiglu: boolean): MatmulRowsPerThread {
  for (const r of [4, 2, 1] as const) {
    const perThread = swiglu ? r / 2 : r;
    if (perThread >= 1 && Math.ceil(rows / (WG * perThread)) >= MIN_GROUPS) return r;
  }
  return swiglu ? 2 : 1;
}

/**
 * vec4s of X staged per row and chunk (XV): half the workgroup memory the device allows (two
 * buffers, capped at 32 KiB so a chunk stays cache-sized), and no more than the power of two that
 * holds a whole row of X. The cap matters for small K: WebGPU zero-initialises workgroup memory at
 * every workgroup's start, and 32 KiB of zeroing cost more than a 128 x 128 GEMV on lavapipe. So XV
 * is a shape class of K (a power of two), and part of the variant name.
 */
export function stagedVec4s(ctx: GpuContext, mt: number, k: number): number {
  const budget = Math.min(ctx.limits.maxComputeWorkgroupStorageSize, 32768);
  let v = Math.floor(budget / (2 * mt * 16));
  v -= v % 2;
  const row = 2 ** Math.ceil(Math.log2(Math.max(8, Math.ceil(k / 4))));
  return Math.max(2, Math.min(v, row));
}

export function matmulVariantName(
  w: Pick<GpuWeight, 'format' | 'fused'>,
  mt: MatmulRowsPerDispatch,
  r: MatmulRowsPerThread,
  xv: number,
  xFormat: ActivationFormat = 'f32',
): string {
  const x = xFormat === 'f16' ? '_xf16' : '';
  return `matmul_${w.format}_m${mt}r${r}x${xv}${x}${w.fused === 'swiglu' ? '_swiglu' : ''}`;
}

export function matmul(b: DispatchBuilder, a: MatmulArgs): Dispatch[] {
  const swiglu = a.weight.fused === 'swiglu';
  const mt = a.variant?.mt ?? pickRowsPerDispatch(a.m);
  const maxPartRows = Math.max(...a.weight.parts.map((p) => p.rows));
  const r = a.variant?.r ?? pickRowsPerThread(maxPartRows, swiglu);
  if (swiglu && r === 1) throw new RangeError('a SWIGLU-fused matmul needs an even rows-per-thread');
  const xv = stagedVec4s(b.ctx, mt, a.weight.cols);
  const xFormat = a.xFormat ?? 'f32';
  checkActivationFormat(b.ctx, xFormat);
  const variant = matmulVariantName(a.weight, mt, r, xv, xFormat);
  const zGroups = Math.ceil(a.m / mt);
  if (zGroups > MAX_GRID) throw new GpuDeviceError(`${variant}: ${a.m} rows exceed one dispatch`);
  if (a.accumulate && swiglu) throw new RangeError('a SWIGLU-fused matmul cannot accumulate');
  const flags = (a.bias ? 1 : 0) | (a.accumulate ? 2 : 0);
  const kw = wordsPerRow(a.weight.cols, a.weight.format);
  const perThread = swiglu ? r / 2 : r;
  const constants = { MT: mt, R: r, XV: xv, SWIGLU: swiglu ? 1 : 0 };
  return a.weight.parts.map((part) => {
    const groups = Math.ceil(part.rows / (WG * perThread));
    const gridX = Math.min(groups, MAX_GRID);
    const params = packParams([
      ['u32', a.m],
      ['u32', a.weight.cols],
      ['u32', kw],
      ['u32', part.rows],
      ['u32', a.weight.rows],
      ['u32', part.rowStart],
      ['u32', gridX],
      ['u32', flags],
    ]);
    return b.make(
      variant,
      () =>
        shaderSource('matmul', activationFragment(xFormat), weightFragment(a.weight.format), 'common/tiled'),
      params,
      [part.buffer, a.x, a.y, a.bias ?? a.placeholder],
      [gridX, Math.ceil(groups / gridX), zGroups],
      constants,
    );
  });
}
