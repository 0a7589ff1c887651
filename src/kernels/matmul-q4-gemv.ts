/**
 * matmul_q4_gemv: the int4 matmul for one row of X (decode), see shaders/matmul_q4_gemv.wgsl. Each
 * thread owns `tn` weight rows; the `ks` slices of a workgroup split K between them and merge in
 * workgroup memory (a GPU wants more threads than a decode matmul has rows). The variant name
 * (pipeline label and cache key) carries every compile-time choice, e.g.
 * `matmul_q4_gemv_g32_sym_f16s_t4_w16_sg` (format, rows per thread, threads, subgroup X) or `matmul_q4_gemv_g32_sym_f16s_t1_w128_k8` (8 K slices, X loaded directly).
 */
import type { GpuContext } from '../gpu/device.js';
import type { Q4Format } from '../quant/q4.js';
import { hoistEnables, MAX_GRID, packParams, shaderSource } from './shader.js';
import { type Dispatch, type DispatchBuilder } from '../gpu/dispatch.js';
import type { Q4GpuWeight } from './q4-weight.js';

/** The compile-time shape of a matmul_q4_gemv variant. */
export interface Q4Gemv {
  /** Weight rows per thread. */
  tn: 1 | 2 | 4 | 8;
  /** Threads per workgroup. */
  wg: 8 | 16 | 32 | 64 | 128 | 256;
  /** Slices of K per workgroup (default 1). */
  ks?: 1 | 2 | 4 | 8 | 16;
}

export interface MatmulQ4GemvArgs {
  x: GPUBuffer;
  weight: Q4GpuWeight;
  y: GPUBuffer;
  bias?: GPUBuffer | undefined;
  accumulate?: boolean | undefined;
  placeholder: GPUBuffer;
  shape: Q4Gemv;
  /** X through subgroup broadcasts (needs subgroups of 8+ lanes) instead of direct loads. */
  subgroups: boolean;
}

function variantName(f: Q4Format, s: Required<Q4Gemv>, sg: boolean): string {
  const sym = f.symmetric ? 'sym' : 'asym';
  const parts = [`t${s.tn}`, `w${s.wg}`];
  if (s.ks !== 1) parts.push(`k${s.ks}`);
  if (sg) parts.push('sg');
  return `matmul_q4_gemv_g${f.groupSize}_${sym}_${f.scaleType}s_${parts.join('_')}`;
}

function variantSource(f: Q4Format, s: Required<Q4Gemv>, sg: boolean): string {
  const consts = [
    `const WG: u32 = ${s.wg}u;`,
    `const KS: u32 = ${s.ks}u;`,
    `const TN: u32 = ${s.tn}u;`,
    `const GS: u32 = ${f.groupSize}u;`,
    `const ASYM: bool = ${f.symmetric ? 'false' : 'true'};`,
    `const F16S: bool = ${f.scaleType === 'f16' ? 'true' : 'false'};`,
  ];
  return hoistEnables([
    shaderSource(sg ? 'common/q4v_x_subgroup' : 'common/q4v_x_direct'),
    shaderSource(s.ks === 1 ? 'common/q4v_k_whole' : 'common/q4v_k_split'),
    consts.join('\n'),
    shaderSource('matmul_q4_gemv'),
  ]);
}

/** Checks a gemv shape against the device; returns it with defaults filled in. */
export function checkQ4Gemv(ctx: GpuContext, shape: Q4Gemv, sg: boolean): Required<Q4Gemv> {
  const s: Required<Q4Gemv> = { ks: 1, ...shape };
  if (![1, 2, 4, 8].includes(s.tn))
    throw new RangeError(`matmul_q4_gemv: ${s.tn} rows per thread (1, 2, 4, 8)`);
  if (![8, 16, 32, 64, 128, 256].includes(s.wg) || s.wg > ctx.limits.maxComputeInvocationsPerWorkgroup)
    throw new RangeError(`matmul_q4_gemv: ${s.wg} threads per workgroup (8..256, within the device's limit)`);
  if (![1, 2, 4, 8, 16].includes(s.ks))
    throw new RangeError(`matmul_q4_gemv: ${s.ks} K slices (1, 2, 4, 8, 16)`);
  const rt = s.wg / s.ks;
  if (rt < 8)
    throw new RangeError(`matmul_q4_gemv: ${s.wg} threads in ${s.ks} K slices leave fewer than 8 per slice`);
  // Subgroup operations need subgroup-uniform loops, and the slices' loops differ.
  if (sg && s.ks > 1) throw new RangeError('matmul_q4_gemv: K slices load X directly (subgroups: false)');
  return s;
}

export function matmulQ4Gemv(b: DispatchBuilder, a: MatmulQ4GemvArgs): Dispatch[] {
  const w = a.weight;
  const f = w.format;
  const s = checkQ4Gemv(b.ctx, a.shape, a.subgroups);
  const variant = variantName(f, s, a.subgroups);
  const rowsPerGroup = (s.wg / s.ks) * s.tn;
  const flags = (a.bias ? 1 : 0) | (a.accumulate ? 2 : 0);
  return w.parts.map((part) => {
    if (!f.symmetric && !part.zeros) throw new RangeError(`${w.name}: asymmetric int4 part without zeros`);
    const tiles = Math.ceil(part.rows / rowsPerGroup);
    const gridX = Math.min(tiles, MAX_GRID);
    const params = packParams([
      ['u32', part.rows],
      ['u32', w.cols],
      ['u32', w.rows],
      ['u32', part.rowStart],
      ['u32', gridX],
      ['u32', flags],
    ]);
    return b.make(
      variant,
      () => variantSource(f, s, a.subgroups),
      params,
      [part.words, part.scales, part.zeros ?? a.placeholder, a.x, a.y, a.bias ?? a.placeholder],
      [gridX, Math.ceil(tiles / gridX), 1],
    );
  });
}
