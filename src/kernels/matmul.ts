/**
 * Y[m, n] (+)= X[m, :] · W[n, :] (+ bias[n]) over the tiled weight layout, by one of two kernels:
 * - matmul_{f32,f16,bf16}_m{MT}r{R}x{XV}[_xf16][_swiglu|_geglu]: the flat GEMM / GEMV of
 *   shaders/matmul.wgsl (decode-shaped M: X padded to 1, 4 or 8 rows, staged in workgroup memory);
 * - matmul_{f32,f16,bf16}_gemm_t{TM}x{TN}[_w{WG}][_xf16][_swiglu|_geglu]: the register-blocked GEMM of
 *   shaders/matmul_gemm.wgsl for large M (prefill chunks), each thread a TM × TN block of Y, X
 *   broadcast across subgroup lanes (needs subgroups of at least 8 lanes); WG threads per
 *   workgroup when not the default 64. TM = 1 (one row of X per thread) and other thread counts
 *   are the tuner's (src/tuner/space.ts): the shape rules below never pick them.
 * One dispatch per weight part; each writes its own column range of Y. The path and variant are
 * chosen from the shape class (or forced by `variant`), and the variant name is the pipeline's
 * cache key and label.
 */
import { GpuDeviceError } from '../errors.js';
import type { GpuContext } from '../gpu/device.js';
import { activationFragment, checkActivationFormat, type ActivationFormat } from './activation.js';
import { hoistEnables, MAX_GRID, packParams, shaderSource } from './shader.js';
import { type Dispatch, type DispatchBuilder } from '../gpu/dispatch.js';
import { weightFragment, wordsPerRow, type GpuWeight } from './tiled.js';
import { RMS_FOLD_SUFFIX, rmsBindingConst, rmsFragment, type RmsFold } from './rms-fold.js';

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
  variant?: MatmulVariant;
  /** The gate's activation of a SWIGLU-fused weight: silu (SwiGLU, default) or tanh-GELU (GeGLU). */
  gate?: GateActivation;
  /**
   * Norm X's rows first (x is then the raw f32 residual stream): the RMSNorm folded into the
   * prologue (src/kernels/rms-fold.ts). Only where `matmulFoldsNorm` says the kernel can.
   */
  norm?: RmsFold | undefined;
}

/** The activation of the gated MLP's gate: silu (SwiGLU) or the tanh approximation of GELU (GeGLU). */
export type GateActivation = 'silu' | 'gelu-tanh';

/** The variant suffix of a fused gate/up weight's epilogue. */
function gateSuffix(w: Pick<GpuWeight, 'fused'>, gate: GateActivation): string {
  if (w.fused !== 'swiglu') return '';
  return gate === 'gelu-tanh' ? '_geglu' : '_swiglu';
}

/**
 * A forced matmul variant. `mt` / `r` pick the flat kernel's tiling (and, given without `path`,
 * the flat kernel); `path: 'gemm'` picks the large-M GEMM, with `tm` / `tn` its tile. Fields left
 * out are chosen from the shape.
 */
export interface MatmulVariant {
  path?: MatmulPath;
  /** Flat kernel: rows of X per dispatch tile. */
  mt?: MatmulRowsPerDispatch;
  /** Flat kernel: output rows per thread. */
  r?: MatmulRowsPerThread;
  /** GEMM: rows of X per thread (and workgroup). */
  tm?: GemmRowsOfX;
  /** GEMM: weight rows per thread (even for a SWIGLU-fused weight: gate/up pairs). */
  tn?: GemmRowsPerThread;
  /** GEMM: threads per workgroup (default 64). */
  wg?: GemmWorkgroupSize;
}

export type MatmulPath = 'flat' | 'gemm';
export type MatmulRowsPerDispatch = 1 | 4 | 8;
export type MatmulRowsPerThread = 1 | 2 | 4;
export type GemmRowsOfX = 1 | 4 | 8 | 16;
export type GemmRowsPerThread = 2 | 4 | 8;
export type GemmWorkgroupSize = 16 | 32 | 64 | 128;

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
  gate: GateActivation = 'silu',
): string {
  const x = xFormat === 'f16' ? '_xf16' : '';
  return `matmul_${w.format}_m${mt}r${r}x${xv}${x}${gateSuffix(w, gate)}`;
}

/**
 * Whether the GEMM can run here: the `subgroups` feature and subgroups of at least 8 lanes (lanes
 * 0..7 of each subgroup broadcast the 8 values of X of one step).
 */
export function gemmUsable(ctx: GpuContext): boolean {
  // adapterInfo (and its subgroup sizes) is recent; an older implementation may lack either.
  const info = ctx.device.adapterInfo as GPUAdapterInfo | undefined;
  return ctx.device.features.has('subgroups') && (info?.subgroupMinSize ?? 0) >= 8;
}

/**
 * Rows of X from which `matmul` takes the GEMM (where `gemmUsable`). Measured on lavapipe (2 shared
 * cores under other load; GPU timestamps, alternating rounds, best of 3–4; llama-3.2-1b o_proj and
 * gate_up, qwen2.5-0.5b qkv and down, bf16 and f32 weights), flat kernel → GEMM:
 * - M = 64 and 256, all eight layer shapes (16-row tile): bf16 2.5–3.6×, f32 2.2–3.2× faster (e.g.
 *   llama gate_up M = 256 bf16 3719 → 1181 ms, f32 8366 → 2717 ms; qwen o_proj bf16 M = 64
 *   35.5 → 11.0 ms);
 * - M = 8–16: 1.5–3.8× faster; M = 2–4 (4-row tile): 1.1–2.5× faster on every shape measured;
 * - M = 1: even (0.93–2.3×, mostly within the noise), so decode keeps the flat GEMV it was tuned
 *   with.
 */
export const GEMM_MIN_M = 2;

/** The kernel for m rows of X: a forced path, else the GEMM from GEMM_MIN_M rows where usable. */
export function pickMatmulPath(ctx: GpuContext, m: number, variant?: MatmulVariant): MatmulPath {
  const forced =
    variant?.path ??
    (variant?.mt !== undefined || variant?.r !== undefined
      ? 'flat'
      : variant?.tm !== undefined || variant?.tn !== undefined || variant?.wg !== undefined
        ? 'gemm'
        : undefined);
  if (forced === 'gemm' && !gemmUsable(ctx))
    throw new RangeError('the matmul GEMM needs subgroups of at least 8 lanes, which this device lacks');
  if (forced) return forced;
  return m >= GEMM_MIN_M && gemmUsable(ctx) ? 'gemm' : 'flat';
}

/**
 * GEMM rows of X per workgroup: the smallest tile that holds M, up to 16. Measured on lavapipe
 * (llama-3.2-1b and qwen2.5-0.5b layers, M = 64 and 256): 16 and 8 rows were even with bf16 weights
 * (each ahead on half the shapes, 0.7–1.4×) and 16 was 1.1–1.7× faster with f32 weights (two
 * weight loads per step of 8 k, so their reuse counts more); at M = 2 and 4, a 4-row tile beat the
 * 8-row one on 13 of 16 (shape, M) pairs.
 */
export function pickGemmRowsOfX(m: number): GemmRowsOfX {
  return m <= 4 ? 4 : m <= 8 ? 8 : 16;
}

/**
 * Fewest GEMM workgroups (M tiles × N groups) to aim for. Small on purpose: measured on lavapipe
 * (2 cores; M = 16 and 32; llama-3.2-1b o_proj, qwen2.5-0.5b qkv, o_proj and down; bf16 and f32;
 * 4 alternating rounds), 8 weight rows per thread was the fastest in 9 of 16 cases even with only
 * 2 workgroups (qwen o_proj at M = 16), 4 rows in 6 (all four qwen qkv ones: 1152 rows leave a
 * quarter of the last 8-row group idle; but at M = 256, 8 rows won there too) and 2 rows once, by 4%.
 * A GPU with many cores needs more workgroups than small M gives at any tile (split-K would help).
 */
const MIN_GEMM_GROUPS = 2;

/** GEMM weight rows per thread: the most (8, 4, 2) that still leaves MIN_GEMM_GROUPS workgroups. */
export function pickGemmRowsPerThread(mTiles: number, rows: number, swiglu: boolean): GemmRowsPerThread {
  for (const tn of [8, 4] as const) {
    const perThread = swiglu ? tn / 2 : tn;
    if (mTiles * Math.ceil(rows / (WG * perThread)) >= MIN_GEMM_GROUPS) return tn;
  }
  return 2;
}

export function gemmVariantName(
  w: Pick<GpuWeight, 'format' | 'fused'>,
  tm: GemmRowsOfX,
  tn: GemmRowsPerThread,
  xFormat: ActivationFormat = 'f32',
  wg: GemmWorkgroupSize = WG,
  gate: GateActivation = 'silu',
  norm = false,
): string {
  const x = xFormat === 'f16' ? '_xf16' : '';
  const threads = wg === WG ? '' : `_w${wg}`;
  const rms = norm ? RMS_FOLD_SUFFIX : '';
  return `matmul_${w.format}_gemm_t${tm}x${tn}${threads}${x}${gateSuffix(w, gate)}${rms}`;
}

/**
 * Whether this matmul (shape, forced variant, X format) runs a kernel with the RMSNorm prologue:
 * the GEMM with one row of X per workgroup (TM = 1, what the CPU adapters' defaults pick at M = 1)
 * reading f32 X.
 */
export function matmulFoldsNorm(
  ctx: GpuContext,
  m: number,
  variant: MatmulVariant | undefined,
  xFormat: ActivationFormat = 'f32',
): boolean {
  if (xFormat !== 'f32' || pickMatmulPath(ctx, m, variant) !== 'gemm') return false;
  return (variant?.tm ?? pickGemmRowsOfX(m)) === 1;
}

function gemmSource(
  w: GpuWeight,
  tm: number,
  tn: number,
  wg: number,
  xFormat: ActivationFormat,
  gate: GateActivation,
  norm: RmsFold | undefined,
): string {
  const consts = [
    `const TM: u32 = ${tm}u;`,
    `const TN: u32 = ${tn}u;`,
    `const WG: u32 = ${wg}u;`,
    `const SWIGLU: bool = ${w.fused === 'swiglu' ? 'true' : 'false'};`,
    `const GELU: bool = ${gate === 'gelu-tanh' ? 'true' : 'false'};`,
    ...(norm ? [rmsBindingConst(5)] : []),
  ];
  return hoistEnables([
    shaderSource(
      'common/broadcast8',
      'common/tiled',
      activationFragment(xFormat),
      weightFragment(w.format),
      'common/matmul_epilogue',
      rmsFragment(!!norm),
    ),
    consts.join('\n'),
    shaderSource('matmul_gemm'),
  ]);
}

export function matmul(b: DispatchBuilder, a: MatmulArgs): Dispatch[] {
  const xFormat = a.xFormat ?? 'f32';
  checkActivationFormat(b.ctx, xFormat);
  if (a.accumulate && a.weight.fused === 'swiglu')
    throw new RangeError('a SWIGLU-fused matmul cannot accumulate');
  if (a.norm && !matmulFoldsNorm(b.ctx, a.m, a.variant, xFormat))
    throw new RangeError(
      'matmul: a folded RMSNorm needs the GEMM with one row of X per tile (tm 1) and f32 X',
    );
  return pickMatmulPath(b.ctx, a.m, a.variant) === 'gemm'
    ? matmulGemm(b, a, xFormat)
    : matmulFlat(b, a, xFormat);
}

/**
 * The uniform both matmul kernels read (struct Params in shaders/common/matmul_epilogue.wgsl): shapes, this part's rows, the grid width that linearizes workgroup ids, flags.
 */
function partParams(a: MatmulArgs, part: GpuWeight['parts'][number], grid: number): ArrayBuffer {
  return packParams([
    ['u32', a.m],
    ['u32', a.weight.cols],
    ['u32', wordsPerRow(a.weight.cols, a.weight.format)],
    ['u32', part.rows],
    ['u32', a.weight.rows],
    ['u32', part.rowStart],
    ['u32', grid],
    ['u32', (a.bias ? 1 : 0) | (a.accumulate ? 2 : 0)],
    ['f32', a.norm?.eps ?? 0],
  ]);
}

function matmulGemm(b: DispatchBuilder, a: MatmulArgs, xFormat: ActivationFormat): Dispatch[] {
  const swiglu = a.weight.fused === 'swiglu';
  const tm = a.variant?.tm ?? pickGemmRowsOfX(a.m);
  const mTiles = Math.ceil(a.m / tm);
  const maxPartRows = Math.max(...a.weight.parts.map((p) => p.rows));
  const tn = a.variant?.tn ?? pickGemmRowsPerThread(mTiles, maxPartRows, swiglu);
  // Callers outside TypeScript could pass anything; each value is a compiled variant.
  const wg = a.variant?.wg ?? WG;
  if (![1, 4, 8, 16].includes(tm) || ![2, 4, 8].includes(tn) || ![16, 32, 64, 128].includes(wg))
    throw new RangeError(
      `matmul GEMM: tile ${tm}x${tn}, ${wg} threads (rows of X 1, 4, 8, 16; rows per thread 2, 4, 8; threads 16, 32, 64, 128)`,
    );
  const gate = a.gate ?? 'silu';
  const norm = a.norm;
  const variant = gemmVariantName(a.weight, tm, tn, xFormat, wg, gate, !!norm);
  if (mTiles > MAX_GRID) throw new GpuDeviceError(`${variant}: ${a.m} rows exceed one dispatch`);
  const perThread = swiglu ? tn / 2 : tn;
  return a.weight.parts.map((part) => {
    const groups = Math.ceil(part.rows / (wg * perThread));
    const gridY = Math.min(groups, MAX_GRID);
    const params = partParams(a, part, gridY);
    return b.make(
      variant,
      () => gemmSource(a.weight, tm, tn, wg, xFormat, gate, norm),
      params,
      [part.buffer, a.x, a.y, a.bias ?? a.placeholder, ...(norm ? [norm.weight] : [])],
      // M tiles fastest: the workgroups that read the same weight rows run back to back.
      [mTiles, gridY, Math.ceil(groups / gridY)],
    );
  });
}

function matmulFlat(b: DispatchBuilder, a: MatmulArgs, xFormat: ActivationFormat): Dispatch[] {
  const swiglu = a.weight.fused === 'swiglu';
  const mt = a.variant?.mt ?? pickRowsPerDispatch(a.m);
  const maxPartRows = Math.max(...a.weight.parts.map((p) => p.rows));
  const r = a.variant?.r ?? pickRowsPerThread(maxPartRows, swiglu);
  if (swiglu && r === 1) throw new RangeError('a SWIGLU-fused matmul needs an even rows-per-thread');
  const xv = stagedVec4s(b.ctx, mt, a.weight.cols);
  const gate = a.gate ?? 'silu';
  const variant = matmulVariantName(a.weight, mt, r, xv, xFormat, gate);
  const zGroups = Math.ceil(a.m / mt);
  if (zGroups > MAX_GRID) throw new GpuDeviceError(`${variant}: ${a.m} rows exceed one dispatch`);
  const perThread = swiglu ? r / 2 : r;
  const constants = { MT: mt, R: r, XV: xv, SWIGLU: swiglu ? 1 : 0, GELU: gate === 'gelu-tanh' ? 1 : 0 };
  return a.weight.parts.map((part) => {
    const groups = Math.ceil(part.rows / (WG * perThread));
    const gridX = Math.min(groups, MAX_GRID);
    const params = partParams(a, part, gridX);
    return b.make(
      variant,
      () =>
        shaderSource(
          'matmul',
          activationFragment(xFormat),
          weightFragment(a.weight.format),
          'common/tiled',
          'common/matmul_epilogue',
        ),
      params,
      [part.buffer, a.x, a.y, a.bias ?? a.placeholder],
      [gridX, Math.ceil(groups / gridX), zGroups],
      constants,
    );
  });
}
