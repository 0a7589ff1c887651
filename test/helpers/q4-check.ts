/**
 * The int4 matmul kernels' error bound and checks (matmul_q4 and matmul_q4_gemv share the format,
 * the dequantization and, up to the order of their sums, the arithmetic).
 */
import { expect } from 'vitest';
import type { Q4Format, Q4GroupSize, Q4Matrix } from '../../src/quant/q4.js';

const u = 2 ** -24;
const gamma = (n: number) => (n * u) / (1 - n * u);

/**
 * Per-element tolerance, from the kernel's summation order (f32 throughout; X is scaled by 16^-j,
 * which is exact, and the codes q·16^j are exact integers in f32). Per group the kernel forms
 * d = Σ q·x either as a vec4 of multiply-add chains (2 per u32, so GS/4 roundings on a product's
 * path, then a 2-level tree) or as 8-element dots added per u32 (at most 4 + 1 + GS/8 roundings),
 * then acc += s·d + (−s·z)·Σx, and acc runs over the K/GS groups in turn. Σx is summed either at
 * staging (GS/4 sequential vec4 adds, then a 2-level tree) or, on the subgroup path, as a subgroup
 * sum of per-lane 4-element sums added per word (at most 2 + 7 + GS/32 roundings, within GS/4 + 3
 * for every group size). So every product passes through at most
 * D = GS/4 + 3 + 2 + K/GS + 4 roundings (the 4 covering s·d, the zero term and their adds), and
 * |y − y_exact| ≤ γ_D · Σ_g s_g·(Σ q·|x| + z·Σ|x|) (the two halves of s·Σq·x − s·z·Σx, each
 * bounded by its magnitude sum). Bias and residual adds cost 2 more roundings of |acc| + |bias| +
 * |y0|. The reference (float64 over `dequantize`'s f32 weights) differs from the exact Σ (q − z)·s·x
 * by at most u·Σ|w·x| (one f32 rounding per weight).
 *
 * The f16 dequant (`folded`) subtracts the zero point in f16, exactly (1024 + q − (1024 + z), both
 * integers in [1024, 1264]), and converts the exact integer (q − z)·16^j to f32: the products
 * (q − z)·x are then formed and summed in f32 in the same order as above, but the group term is
 * only acc += s·d (no zero term). So every product passes through at most D' = GS/4 + 3 + 2 +
 * K/GS roundings (d as above, s·d, the add into acc, the later groups' adds), and
 * |y − y_exact| ≤ γ_D' · Σ_g s_g·Σ|q − z|·|x|, which the f16 path is held to (tighter than the
 * f32 path's: Σ|q − z||x| ≤ Σ(q + z)|x| and D' < D).
 *
 * `extraDepth` adds roundings a kernel's own order puts on a path: matmul_q4_gemv forms the group
 * term as s·d − (s·z)·Σx (one more rounding, s·z) and adds its KS slices' partial sums in turn
 * (KS − 1 more).
 */
export function bound(
  q: Q4Matrix,
  x: Float32Array,
  m: number,
  extra?: { bias?: Float32Array; y0?: Float32Array; folded?: boolean; extraDepth?: number },
): Float64Array {
  const { rows: n, cols: k } = q;
  const gs = q.format.groupSize;
  const groups = k / gs;
  const folded = extra?.folded ?? false;
  const depth = (folded ? gs / 4 + 3 + 2 + groups : gs / 4 + 3 + 2 + groups + 4) + (extra?.extraDepth ?? 0);
  const out = new Float64Array(m * n);
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < n; j++) {
      let mag = 0;
      let wx = 0;
      for (let g = 0; g < groups; g++) {
        const s = q.scales[j * groups + g] as number;
        const z = q.zeros[j * groups + g] as number;
        let qx = 0;
        let ax = 0;
        let dx = 0;
        for (let t = g * gs; t < (g + 1) * gs; t++) {
          const xv = Math.abs(x[i * k + t] as number);
          const c = q.codes[j * k + t] as number;
          qx += c * xv;
          ax += xv;
          dx += Math.abs(c - z) * xv;
        }
        mag += folded ? s * dx : s * (qx + z * ax);
        wx += s * dx;
      }
      const lin = Math.abs(extra?.bias?.[j] ?? 0) + Math.abs(extra?.y0?.[i * n + j] ?? 0);
      out[i * n + j] = gamma(depth) * mag + u * wx + gamma(2) * (mag + lin);
    }
  }
  return out;
}

export function expectWithin(actual: Float32Array, expected: Float64Array, tol: Float64Array): void {
  let bad = '';
  let count = 0;
  for (let i = 0; i < expected.length; i++) {
    const err = Math.abs((actual[i] as number) - (expected[i] as number));
    if (!(err <= (tol[i] as number))) {
      if (count++ < 4) bad += ` [${i}] got ${actual[i]} want ${expected[i]} (tol ${tol[i]});`;
    }
  }
  if (count) expect.fail(`${count} elements out of bound:${bad}`);
}

/**
 * MARLIN's acceptance metric, mean|C − C_ref| / mean|C_ref| < 1e-3: a whole-output check that
 * catches a systematically wrong group or row even when each element is small.
 */
export function marlinError(actual: Float32Array, expected: Float64Array): number {
  let num = 0;
  let den = 0;
  for (let i = 0; i < expected.length; i++) {
    num += Math.abs((actual[i] as number) - (expected[i] as number));
    den += Math.abs(expected[i] as number);
  }
  return num / den;
}

export const FORMATS: Q4Format[] = [];
for (const groupSize of [32, 64, 128] as Q4GroupSize[]) {
  for (const symmetric of [true, false]) {
    for (const scaleType of ['f32', 'f16'] as const) FORMATS.push({ groupSize, symmetric, scaleType });
  }
}
export const fmtName = (f: Q4Format) => `g${f.groupSize} ${f.symmetric ? 'sym' : 'asym'} ${f.scaleType}`;
