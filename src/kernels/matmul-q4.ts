/**
 * matmul_q4: Y[m, n] (+)= X[m, :] · W[n, :] (+ bias[n]) with W in the int4 group-wise format of
 * src/quant/q4.ts; see shaders/matmul_q4.wgsl. One dispatch per weight part; each writes its own
 * column range of Y. The variant name (pipeline label and cache key) carries every compile-time
 * choice, e.g. `matmul_q4_g128_sym_f16s_m1r4_xc256_sg_h`: group size, zero points, scale type, MT,
 * R, the staged chunk, the subgroup X path (`_sg`) and the f16 dequant (`_h`); shapes travel in
 * the uniform.
 */
import type { GpuContext } from '../gpu/device.js';
import type { Q4Format } from '../quant/q4.js';
import { hoistEnables, MAX_GRID, packParams, shaderSource } from './shader.js';
import { type Dispatch, type DispatchBuilder } from '../gpu/dispatch.js';
import { matmulQ4Gemv, type Q4Gemv } from './matmul-q4-gemv.js';
import type { Q4GpuWeight } from './q4-weight.js';
import { RMS_FOLD_SUFFIX, rmsBindingConst, rmsFragment, type RmsFold } from './rms-fold.js';

export type { Q4GpuWeight, Q4WeightPart } from './q4-weight.js';

/** Rows of X per workgroup (MT in the shader). */
export type Q4RowsPerGroup = 1 | 4 | 8;
/** Output rows per thread (R in the shader). */
export type Q4RowsPerThread = 1 | 2 | 4;

export interface MatmulQ4Args {
  /** [m, weight.cols] f32 */
  x: GPUBuffer;
  weight: Q4GpuWeight;
  /** [m, weight.rows] f32 */
  y: GPUBuffer;
  m: number;
  /** [weight.rows] f32 */
  bias?: GPUBuffer | undefined;
  /** Add into y instead of overwriting it (fuses the residual add). */
  accumulate?: boolean;
  /** Bound when there is no bias or no zero points (bindings cannot be empty). */
  placeholder: GPUBuffer;
  /** Override the variant choice (benchmarks, tuner); defaults from `chooseQ4Tiling`. */
  rowsPerGroup?: Q4RowsPerGroup;
  rowsPerThread?: Q4RowsPerThread;
  /**
   * Without subgroups: bytes of workgroup memory for the staged X (both ping-pong halves and the
   * group sums); at most the device's maxComputeWorkgroupStorageSize. Default 16 KiB, which keeps
   * the X chunk in a CPU core's L1 next to the weight stream.
   */
  workgroupBytes?: number;
  /**
   * Read X straight from `x` and broadcast it across subgroup lanes (no workgroup memory, no
   * barrier) instead of staging it. Default: when `q4SubgroupsUsable`.
   */
  subgroups?: boolean;
  /**
   * How codes become numbers: 'f32' (shift, mask, u32 → f32 convert; any adapter) or 'f16' (the
   * "0x6400 magic": AND, OR and one f16 subtraction that also applies the zero point, exactly; the
   * products and sums stay f32, so both compute the same exact sum and differ only in where f32
   * rounds). 'f16' needs the shader-f16 feature (refused otherwise), and its variant name ends in
   * `_h`. Default: DEFAULT_Q4_DEQUANT.
   */
  dequant?: Q4Dequant;
  /** Threads per workgroup (default 64; the variant name gains `_w<threads>` otherwise). */
  workgroupSize?: Q4WorkgroupSize;
  /**
   * M = 1 only: run matmul_q4_gemv with this shape instead (rowsPerGroup, rowsPerThread,
   * workgroupBytes, dequant and workgroupSize do not apply; `subgroups` picks its X path).
   */
  gemv?: Q4Gemv;
  /**
   * Norm X's rows first (x is then the raw residual stream): the RMSNorm folded into the prologue
   * (src/kernels/rms-fold.ts). Only where `q4FoldsNorm` says the kernel can.
   */
  norm?: RmsFold | undefined;
}

export type Q4WorkgroupSize = 16 | 32 | 64 | 128;

/** The variant fields of MatmulQ4Args a caller may force (the tuner's choice for a shape class). */
export type Q4Variant = Partial<
  Pick<
    MatmulQ4Args,
    'rowsPerGroup' | 'rowsPerThread' | 'subgroups' | 'workgroupBytes' | 'dequant' | 'workgroupSize' | 'gemv'
  >
>;

/** Dequantization arithmetic of matmul_q4 (see `MatmulQ4Args.dequant`). */
export type Q4Dequant = 'f32' | 'f16';

/**
 * The default dequant: 'f32', the faster one on the adapter measured (lavapipe, x86 without f16
 * arithmetic). There the f16 dequant was slower at every Llama-3.2-1B MLP shape, g32 sym f16
 * scales, best median of 10 alternating rounds (f32 vs f16 ms): gate_up 16384×2048 M=1 11.7 vs
 * 24.0, M=16 212 vs 304; down 2048×8192 M=1 10.0 vs 14.1, M=16 63 vs 100 (see the header of
 * shaders/matmul_q4.wgsl). 'f16' is opt-in, for adapters with native f16 ALUs (not measured).
 */
export const DEFAULT_Q4_DEQUANT: Q4Dequant = 'f32';

const WG = 64;

/**
 * Whether the subgroup X path can run: the `subgroups` feature and subgroups of at least 8 lanes
 * (lanes 0..7 of each subgroup hold the 8 vec4s of X that one weight word multiplies).
 */
export function q4SubgroupsUsable(ctx: GpuContext): boolean {
  // adapterInfo (and its subgroup sizes) is recent; an older implementation may lack either.
  const info = ctx.device.adapterInfo as GPUAdapterInfo | undefined;
  return ctx.device.features.has('subgroups') && (info?.subgroupMinSize ?? 0) >= 8;
}

const DEFAULT_WORKGROUP_BYTES = 16384;
/** K per loop chunk of the subgroup path, in vec4s (1024 k: a multiple of every group size). */
const SUBGROUP_CHUNK_VEC4S = 256;

/** Aim for at least this many workgroups per dispatch, so that every core (or SM) gets work. */
const MIN_GROUPS = 8;

/**
 * The tiling for m rows of X and n output rows: MT = 1 for a single row (decode), else 4 (M is
 * padded only that far; MT = 8 is available but measured slower); R = the most rows per thread
 * (up to 4: X is fetched once per word and used for R rows) that still leaves MIN_GROUPS
 * workgroups. Measured on lavapipe (subgroup path): M = 4 and M = 16 ran fastest at MT = 4, R = 4
 * (vs MT = 4, R = 2 and MT = 8, R = 1 or 2).
 */
export function chooseQ4Tiling(
  m: number,
  n: number,
): { rowsPerGroup: Q4RowsPerGroup; rowsPerThread: Q4RowsPerThread } {
  const rowsPerGroup: Q4RowsPerGroup = m <= 1 ? 1 : 4;
  for (const r of [4, 2, 1] as const) {
    if (Math.ceil(n / (WG * r)) >= MIN_GROUPS) return { rowsPerGroup, rowsPerThread: r };
  }
  return { rowsPerGroup, rowsPerThread: 1 };
}

/**
 * vec4s of one X row per staged chunk: the largest power of two (≥ the group's GS/4, so a chunk
 * holds whole groups) whose two halves plus group sums fit in `bytes`.
 */
export function q4ChunkVec4s(format: Q4Format, rowsPerGroup: number, bytes: number): number {
  const gv = format.groupSize / 4;
  const need = (xc: number) => 2 * rowsPerGroup * (xc * 16 + (xc / gv) * 4);
  if (need(gv) > bytes) {
    throw new RangeError(
      `matmul_q4: ${bytes} bytes of workgroup memory cannot hold ${rowsPerGroup} rows of one ${format.groupSize}-group`,
    );
  }
  let xc = gv;
  while (need(xc * 2) <= bytes) xc *= 2;
  return xc;
}

/**
 * Whether matmul_q4 with these choices runs the RMSNorm prologue: one row of X per workgroup
 * (MT = 1, the M = 1 default) on the subgroup X path, not the gemv kernel.
 */
export function q4FoldsNorm(ctx: GpuContext, m: number, v: Q4Variant | undefined): boolean {
  if (v?.gemv) return false;
  if (!(v?.subgroups ?? q4SubgroupsUsable(ctx)) || !q4SubgroupsUsable(ctx)) return false;
  return (v?.rowsPerGroup ?? chooseQ4Tiling(m, 1).rowsPerGroup) === 1;
}

interface Q4Shape {
  mt: number;
  r: number;
  xc: number;
  sg: boolean;
  dq: Q4Dequant;
  wg: number;
  rms: boolean;
}

function variantName(f: Q4Format, v: Q4Shape): string {
  const sym = f.symmetric ? 'sym' : 'asym';
  const rms = v.rms ? RMS_FOLD_SUFFIX : '';
  const suffix = `${v.sg ? '_sg' : ''}${v.dq === 'f16' ? '_h' : ''}${v.wg === WG ? '' : `_w${v.wg}`}${rms}`;
  return `matmul_q4_g${f.groupSize}_${sym}_${f.scaleType}s_m${v.mt}r${v.r}_xc${v.xc}${suffix}`;
}

function variantSource(f: Q4Format, { mt, r, xc, sg, dq, wg, rms }: Q4Shape): string {
  const consts = [
    `const WG: u32 = ${wg}u;`,
    `const R: u32 = ${r}u;`,
    `const MT: u32 = ${mt}u;`,
    `const GS: u32 = ${f.groupSize}u;`,
    `const ASYM: bool = ${f.symmetric ? 'false' : 'true'};`,
    `const F16S: bool = ${f.scaleType === 'f16' ? 'true' : 'false'};`,
    `const XC: u32 = ${xc}u;`,
    ...(rms ? [rmsBindingConst(7)] : []),
  ];
  return hoistEnables([
    shaderSource(sg ? 'common/q4_x_subgroup' : 'common/q4_x_plain'),
    shaderSource(dq === 'f16' ? 'common/q4_dequant_f16' : 'common/q4_dequant_f32'),
    shaderSource(rmsFragment(rms)),
    consts.join('\n'),
    shaderSource('matmul_q4'),
  ]);
}

export function matmulQ4(b: DispatchBuilder, a: MatmulQ4Args): Dispatch[] {
  const w = a.weight;
  const f = w.format;
  if (!Number.isInteger(a.m) || a.m < 1) throw new RangeError(`matmul_q4: m = ${a.m}`);
  const dq = a.dequant ?? DEFAULT_Q4_DEQUANT;
  if (dq !== 'f32' && dq !== 'f16') throw new RangeError(`matmul_q4: dequant ${String(dq)} (f32, f16)`);
  if (dq === 'f16' && !b.ctx.device.features.has('shader-f16')) {
    throw new RangeError(
      "matmul_q4: dequant 'f16' needs the shader-f16 feature, which this device lacks; use dequant 'f32'",
    );
  }
  if (w.cols % f.groupSize !== 0) {
    throw new RangeError(`matmul_q4: K (${w.cols}) is not a multiple of the group size (${f.groupSize})`);
  }
  if (
    a.norm &&
    (a.gemv ||
      !(a.subgroups ?? q4SubgroupsUsable(b.ctx)) ||
      (a.rowsPerGroup ?? chooseQ4Tiling(a.m, 1).rowsPerGroup) !== 1)
  )
    throw new RangeError(
      'matmul_q4: a folded RMSNorm needs one row of X per workgroup on the subgroup X path',
    );
  if (a.gemv) {
    if (a.m !== 1) throw new RangeError(`matmul_q4: the gemv path takes one row of X, not ${a.m}`);
    const sg = a.subgroups ?? q4SubgroupsUsable(b.ctx);
    if (sg && !q4SubgroupsUsable(b.ctx))
      throw new RangeError('matmul_q4: this device has no subgroups of 8+ lanes');
    return matmulQ4Gemv(b, { ...a, shape: a.gemv, subgroups: sg });
  }
  const tiling = chooseQ4Tiling(a.m, w.rows);
  const mt = a.rowsPerGroup ?? tiling.rowsPerGroup;
  const r = a.rowsPerThread ?? tiling.rowsPerThread;
  // Callers outside TypeScript could pass anything; each value is a compiled variant.
  if (![1, 4, 8].includes(mt) || ![1, 2, 4].includes(r)) {
    throw new RangeError(`matmul_q4: rows per group ${mt} (1, 4, 8) or rows per thread ${r} (1, 2, 4)`);
  }
  const limit = b.ctx.limits.maxComputeWorkgroupStorageSize;
  const bytes = a.workgroupBytes ?? Math.min(DEFAULT_WORKGROUP_BYTES, limit);
  if (bytes > limit) {
    throw new RangeError(`matmul_q4: ${bytes} bytes of workgroup memory exceed the device's ${limit}`);
  }
  const sg = a.subgroups ?? q4SubgroupsUsable(b.ctx);
  if (sg && !q4SubgroupsUsable(b.ctx))
    throw new RangeError('matmul_q4: this device has no subgroups of 8+ lanes');
  const wg = a.workgroupSize ?? WG;
  if (![16, 32, 64, 128].includes(wg)) throw new RangeError(`matmul_q4: ${wg} threads (16, 32, 64, 128)`);
  // The subgroup path reads X directly, so its "chunk" is only a loop split and uses no memory.
  const xc = sg ? SUBGROUP_CHUNK_VEC4S : q4ChunkVec4s(f, mt, bytes);
  const norm = a.norm;
  const shape: Q4Shape = { mt, r, xc, sg, dq, wg, rms: !!norm };
  const variant = variantName(f, shape);
  const zGroups = Math.ceil(a.m / mt);
  if (zGroups > MAX_GRID) throw new RangeError(`${variant}: ${a.m} rows exceed one dispatch`);
  const flags = (a.bias ? 1 : 0) | (a.accumulate ? 2 : 0);
  return w.parts.map((part) => {
    if (!f.symmetric && !part.zeros) throw new RangeError(`${w.name}: asymmetric int4 part without zeros`);
    const tiles = Math.ceil(part.rows / (wg * r));
    const gridX = Math.min(tiles, MAX_GRID);
    const params = packParams([
      ['u32', a.m],
      ['u32', part.rows],
      ['u32', w.cols],
      ['u32', w.rows],
      ['u32', part.rowStart],
      ['u32', gridX],
      ['u32', flags],
      ['u32', f.groupSize / 4],
      ['f32', norm?.eps ?? 0],
    ]);
    return b.make(
      variant,
      () => variantSource(f, shape),
      params,
      [
        part.words,
        part.scales,
        part.zeros ?? a.placeholder,
        a.x,
        a.y,
        a.bias ?? a.placeholder,
        ...(norm ? [norm.weight] : []),
      ],
      [gridX, Math.ceil(tiles / gridX), zGroups],
    );
  });
}
