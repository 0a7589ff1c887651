/**
 * gptq_gemm (shaders/gptq_gemm.wgsl): the GPU GPTQ solve's strided product C (+)= alpha·A·B over
 * k < kend, used for the Hessian, the Cholesky panel updates, the low-rank factor's blocks and
 * the sweep's lazy updates.
 */
import { type DispatchBuilder, type Dispatch } from '../gpu/dispatch.js';
import { hoistEnables, MAX_GRID, packParams, shaderSource } from './shader.js';

/**
 * gptq_gemm's tile: TM A indices per workgroup (broadcast through subgroups), TN B rows per thread.
 * Measured on lavapipe (2 cores, under other load; GMAC/s on a Cholesky panel update 64 × 2432 ×
 * 2432 and a sweep update 32 × 896 × 2432): TM × TN = 16 × 2: 2.9–3.3 / 2.2–2.3; 16 × 4: 2.7 / 2.0;
 * 16 × 8: 1.8 / 1.5; 8 × 2–8: 1.4–1.6 / 1.2; 32 × 2: 2.1 / 2.1; 4 × 4: 1.0 / 0.8. More A reuse pays
 * until the broadcast values (TM · 8 per step) and accumulators no longer fit in registers.
 * Loading A with uniform addresses instead (no subgroups) measured 4× slower at every tile.
 */
const GEMM_TM = 16;
const GEMM_TN = 2;
const WG = 64;

/** Arguments of one gptq_gemm (see shaders/gptq_gemm.wgsl); strides may be negative. */
export interface GptqGemmArgs {
  a: GPUBuffer;
  b: GPUBuffer;
  c: GPUBuffer;
  na: number;
  nb: number;
  kend: number;
  aOff: number;
  aSa: number;
  aSk: number;
  bOff: number;
  ldb: number;
  cOff: number;
  cSa: number;
  cSb: number;
  alpha: number;
  accumulate: boolean;
  lower: boolean;
}

/** A stride or offset as the kernel's wrapping u32 (negative: its two's complement). */
export const u32 = (v: number): number => {
  if (!Number.isInteger(v) || v < -0x80000000 || v > 0xffffffff)
    throw new RangeError(`gptq_gemm: index ${v}`);
  return v >>> 0;
};

export function gptqGemm(b: DispatchBuilder, g: GptqGemmArgs): Dispatch {
  if (g.kend % 8 !== 0 || g.bOff % 4 !== 0 || g.ldb % 4 !== 0) {
    throw new RangeError(`gptq_gemm: k end ${g.kend}, B offset ${g.bOff} and stride ${g.ldb} must align`);
  }
  const variant = `gptq_gemm_t${GEMM_TM}x${GEMM_TN}`;
  const groups = Math.ceil(g.nb / (WG * GEMM_TN));
  const gridY = Math.min(groups, MAX_GRID);
  const gridX = Math.ceil(g.na / GEMM_TM);
  if (gridX > MAX_GRID) throw new RangeError(`gptq_gemm: ${g.na} A indices exceed one dispatch`);
  const params = packParams([
    ['u32', g.na],
    ['u32', g.nb],
    ['u32', g.kend],
    ['u32', (g.accumulate ? 1 : 0) | (g.lower ? 2 : 0)],
    ['u32', u32(g.aOff)],
    ['u32', u32(g.aSa)],
    ['u32', u32(g.aSk)],
    ['u32', g.bOff],
    ['u32', g.ldb],
    ['u32', u32(g.cOff)],
    ['u32', u32(g.cSa)],
    ['u32', u32(g.cSb)],
    ['f32', g.alpha],
    ['u32', gridY],
  ]);
  const code = () =>
    hoistEnables([
      `const TM: u32 = ${GEMM_TM}u;`,
      `const TN: u32 = ${GEMM_TN}u;`,
      shaderSource('gptq_gemm', 'common/broadcast8'),
    ]);
  return b.make(variant, code, params, [g.a, g.b, g.c], [gridX, gridY, Math.ceil(groups / gridY)]);
}
