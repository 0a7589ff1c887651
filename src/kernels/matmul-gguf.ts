/**
 * matmul_gguf: Y[m, n] (+)= X[m, :] · W[n, :] (+ bias[n]) with W kept in a GGUF block format on the
 * GPU (layout: src/quant/gguf-pack.ts): shaders/matmul_gguf_vec4.wgsl with one fragment per format,
 * shaders/common/gguf_vec4_<type>.wgsl (16-byte weight loads; X broadcast through subgroups where
 * the adapter has subgroups of 8+ lanes, else loaded by every lane: the same result, bit for bit).
 * It serves decode (MT = 1: one row of X per workgroup) and the batched GEMM (MT rows of X per workgroup, every decoded weight used MT times). One dispatch
 * per weight part. The variant name (pipeline label, cache key, benchmark row) carries every
 * compile-time choice, e.g. `matmul_gguf_vec4_q4_k_m1r4_sg`: kernel, format, MT, R, X through
 * subgroups (`_sg`) and `_w<threads>` off the default 64.
 */
import { ggufBlockLayout, type GgufKernelType } from '../quant/gguf-pack.js';
import { chooseQ4Tiling, q4SubgroupsUsable } from './matmul-q4.js';
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
  /** The h plane, for formats that have one (PackedGguf.hplane). */
  hplane?: GPUBuffer | undefined;
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
export type GgufWorkgroupSize = 16 | 32 | 64 | 128;

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
  /** Bound where there is no bias, d plane or h plane (bindings cannot be empty). */
  placeholder: GPUBuffer;
  /** Override the shape-based choice (benchmarks, tuner). */
  rowsPerGroup?: GgufRowsPerGroup;
  rowsPerThread?: GgufRowsPerThread;
  workgroupSize?: GgufWorkgroupSize;
  /**
   * Read X's 8 vec4s per 32-element step one per lane and broadcast them across subgroup lanes,
   * instead of every lane loading all 8. Default: when `q4SubgroupsUsable` (the same need:
   * subgroups of 8+ lanes).
   */
  subgroups?: boolean;
}

/** The variant fields a caller may force for a shape class. */
export type GgufVariant = Partial<
  Pick<MatmulGgufArgs, 'rowsPerGroup' | 'rowsPerThread' | 'workgroupSize' | 'subgroups'>
>;

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

export function ggufVariantName(type: GgufKernelType, mt: number, r: number, wg = WG, sg = false): string {
  const w = wg === WG ? '' : `_w${wg}`;
  return `matmul_gguf_vec4_${type.toLowerCase()}_m${mt}r${r}${sg ? '_sg' : ''}${w}`;
}

function variantSource(type: GgufKernelType, mt: number, r: number, wg: number, sg: boolean): string {
  const consts = [`const WG: u32 = ${wg}u;`, `const R: u32 = ${r}u;`, `const MT: u32 = ${mt}u;`];
  if (!ggufBlockLayout(type).vec4) throw new Error(`matmul_gguf: ${type} blocks do not tile by 16 bytes`);
  const own = `common/gguf_vec4_${type.toLowerCase()}` as ShaderName;
  const fragments: ShaderName[] = [
    sg ? 'common/gguf_x_subgroup' : 'common/gguf_x_direct',
    ...ggufSharedFragments(type),
    own,
  ];
  return hoistEnables([consts.join('\n'), shaderSource('matmul_gguf_vec4', ...fragments)]);
}

export function matmulGguf(b: DispatchBuilder, a: MatmulGgufArgs): Dispatch[] {
  const w = a.weight;
  if (!Number.isInteger(a.m) || a.m < 1) throw new RangeError(`matmul_gguf: m = ${a.m}`);
  const tiling = chooseGgufTiling(a.m, w.rows);
  const mt = a.rowsPerGroup ?? tiling.rowsPerGroup;
  const r = a.rowsPerThread ?? tiling.rowsPerThread;
  const wg = a.workgroupSize ?? WG;
  if (![1, 4, 8].includes(mt) || ![1, 2, 4].includes(r) || ![16, 32, 64, 128].includes(wg)) {
    throw new RangeError(
      `matmul_gguf: MT ${mt} (1, 4, 8), R ${r} (1, 2, 4), ${wg} threads (16, 32, 64, 128)`,
    );
  }
  const sgOk = q4SubgroupsUsable(b.ctx);
  const sg = a.subgroups ?? sgOk;
  if (sg && !sgOk) throw new RangeError('matmul_gguf: this device has no subgroups of 8+ lanes');
  const zGroups = Math.ceil(a.m / mt);
  if (zGroups > MAX_GRID) throw new RangeError(`matmul_gguf: ${a.m} rows exceed one dispatch`);
  const flags = (a.bias ? 1 : 0) | (a.accumulate ? 2 : 0);
  return w.parts.map((part) => {
    const variant = ggufVariantName(part.type, mt, r, wg, sg);
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
      () => variantSource(part.type, mt, r, wg, sg),
      params,
      [
        part.words,
        part.dplane ?? a.placeholder,
        a.x,
        a.y,
        a.bias ?? a.placeholder,
        part.hplane ?? a.placeholder,
      ],
      [gridX, Math.ceil(tiles / gridX), zGroups],
    );
  });
}

/** The fragments a format's own fragment builds on, in embed_gguf and matmul_gguf_vec4 alike. */
export function ggufSharedFragments(type: GgufKernelType): ShaderName[] {
  if (type === 'Q4_K' || type === 'Q5_K') return ['common/gguf_k_pairs'];
  if (type === 'IQ4_NL' || type === 'IQ4_XS') return ['common/gguf_iq4_levels'];
  return [];
}
