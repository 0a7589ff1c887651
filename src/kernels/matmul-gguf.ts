/**
 * matmul_gguf: Y[m, n] (+)= X[m, :] · W[n, :] (+ bias[n]) with W kept in a GGUF block format on the
 * GPU (layout: src/quant/gguf-pack.ts; kernel: shaders/matmul_gguf.wgsl plus the format's
 * fragment shaders/common/gguf_<type>.wgsl). One kernel serves decode (M = 1) and the batched GEMM
 * (MT rows of X per workgroup, every decoded weight used MT times). One dispatch per weight part.
 * The variant name (pipeline label, cache key, benchmark row) carries every compile-time choice,
 * e.g. `matmul_gguf_q4_k_m1r4`: format, MT, R (and `_w<threads>` off the default 64).
 */
import type { GgufKernelType } from '../quant/gguf-pack.js';
import { chooseQ4Tiling } from './matmul-q4.js';
import { hoistEnables, MAX_GRID, packParams, shaderSource } from './shader.js';
import type { Dispatch, DispatchBuilder } from '../gpu/dispatch.js';
import type { ShaderName } from './wgsl.gen.js';

export interface GgufWeightPart {
  /** The block format of this part's rows (ggml's name). */
  type: GgufKernelType;
  /** The words plane (PackedGguf.words). */
  words: GPUBuffer;
  /** The d plane, for formats that have one (PackedGguf.dplane). */
  dplane?: GPUBuffer | undefined;
  /** First row of the matrix stored in this part. */
  rowStart: number;
  rows: number;
}

/**
 * A GGUF block weight on the GPU: [rows, cols], split by rows into parts. Parts may differ in
 * format: a fused projection stacks tensors as the file stores them (Q4_K_M files keep q and k in
 * Q4_K and v in Q6_K), each part dispatched with its own variant into its own columns of Y.
 */
export interface GgufGpuWeight {
  kind: 'gguf';
  name: string;
  rows: number;
  cols: number;
  parts: GgufWeightPart[];
}

export type GgufRowsPerGroup = 1 | 4 | 8;
export type GgufRowsPerThread = 1 | 2 | 4;
export type GgufWorkgroupSize = 32 | 64 | 128;

export interface MatmulGgufArgs {
  /** [m, weight.cols] f32 */
  x: GPUBuffer;
  weight: GgufGpuWeight;
  /** [m, weight.rows] f32 */
  y: GPUBuffer;
  m: number;
  /** [weight.rows] f32 */
  bias?: GPUBuffer | undefined;
  /** Add into y instead of overwriting it (fuses the residual add). */
  accumulate?: boolean;
  /** Bound where there is no bias or no d plane (bindings cannot be empty). */
  placeholder: GPUBuffer;
  /** Override the shape-based choice (benchmarks, tuner). */
  rowsPerGroup?: GgufRowsPerGroup;
  rowsPerThread?: GgufRowsPerThread;
  workgroupSize?: GgufWorkgroupSize;
}

/** The variant fields a caller may force for a shape class. */
export type GgufVariant = Partial<Pick<MatmulGgufArgs, 'rowsPerGroup' | 'rowsPerThread' | 'workgroupSize'>>;

const WG = 64;
/**
 * MT = 1 for decode, else 4; R = the most rows per thread that still leaves enough workgroups. The
 * int4 kernel's rule (chooseQ4Tiling), for the same reasons: one thread per row, X read per chunk,
 * the same 64-thread workgroups.
 */
export function chooseGgufTiling(
  m: number,
  n: number,
): { rowsPerGroup: GgufRowsPerGroup; rowsPerThread: GgufRowsPerThread } {
  return chooseQ4Tiling(m, n);
}

/**
 * The fragments that decode `type`'s blocks: shaders/common/gguf_<type>.wgsl, after the scale-pair
 * decoding Q4_K and Q5_K share.
 */
export function ggufFragments(type: GgufKernelType): ShaderName[] {
  const own = `common/gguf_${type.toLowerCase()}` as ShaderName;
  return type === 'Q4_K' || type === 'Q5_K' ? ['common/gguf_k_scales', own] : [own];
}

export function ggufVariantName(type: GgufKernelType, mt: number, r: number, wg = WG): string {
  return `matmul_gguf_${type.toLowerCase()}_m${mt}r${r}${wg === WG ? '' : `_w${wg}`}`;
}

function variantSource(type: GgufKernelType, mt: number, r: number, wg: number): string {
  const consts = [`const WG: u32 = ${wg}u;`, `const R: u32 = ${r}u;`, `const MT: u32 = ${mt}u;`];
  return hoistEnables([
    consts.join('\n'),
    shaderSource('matmul_gguf', 'common/gguf_block', ...ggufFragments(type)),
  ]);
}

export function matmulGguf(b: DispatchBuilder, a: MatmulGgufArgs): Dispatch[] {
  const w = a.weight;
  if (!Number.isInteger(a.m) || a.m < 1) throw new RangeError(`matmul_gguf: m = ${a.m}`);
  const tiling = chooseGgufTiling(a.m, w.rows);
  const mt = a.rowsPerGroup ?? tiling.rowsPerGroup;
  const r = a.rowsPerThread ?? tiling.rowsPerThread;
  const wg = a.workgroupSize ?? WG;
  if (![1, 4, 8].includes(mt) || ![1, 2, 4].includes(r) || ![32, 64, 128].includes(wg)) {
    throw new RangeError(`matmul_gguf: MT ${mt} (1, 4, 8), R ${r} (1, 2, 4), ${wg} threads (32, 64, 128)`);
  }
  const zGroups = Math.ceil(a.m / mt);
  if (zGroups > MAX_GRID) throw new RangeError(`matmul_gguf: ${a.m} rows exceed one dispatch`);
  const flags = (a.bias ? 1 : 0) | (a.accumulate ? 2 : 0);
  return w.parts.map((part) => {
    const variant = ggufVariantName(part.type, mt, r, wg);
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
    ]);
    return b.make(
      variant,
      () => variantSource(part.type, mt, r, wg),
      params,
      [part.words, part.dplane ?? a.placeholder, a.x, a.y, a.bias ?? a.placeholder],
      [gridX, Math.ceil(tiles / gridX), zGroups],
    );
  });
}
