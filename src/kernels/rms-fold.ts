/**
 * RMSNorm folded into the prologue of the matmul that reads its output (shaders/common/
 * rms_fold.wgsl): the `_rms` variants of the one-row GEMM tile (matmul_gemm, TM = 1) and of
 * matmul_q4 (MT = 1, subgroup X) read the raw residual row and norm each x[k] as they load it, so
 * a decode step skips the rmsnorm dispatch before qkv, gate/up and the LM head (the graph folds
 * only into the float GEMM: src/kernels/linear.ts says why not into matmul_q4).
 *
 * Exactness: the normed value is (x · inv) · w[k] with inv = inverseSqrt(ms + eps), the same f32
 * expression as shaders/rmsnorm.wgsl; only the f32 sum of squares runs in another order (per
 * subgroup lane strided by the subgroup width w, then a subgroup sum, vs rmsnorm's 64 strided
 * partials added in sequence). Each order's relative error is at most γ_n = n·u/(1 − n·u) (u = 2⁻²⁴)
 * with n ≤ ⌈K/w⌉ + w (fold) or ⌈K/64⌉ + 64 (rmsnorm), so the two mean squares differ by at most
 * their sum, and through the square root each normed x differs relatively by at most half of it
 * plus a few ulps of the inverse square root and the two products: for K = 4096 and w ≥ 8, about
 * (520 + 128)/2 · 2⁻²⁴ + 4 · 2⁻²³ ≈ 2.0e-5 worst case (typically √n times less). The kernels then
 * compute the same products as the unfused path.
 */
export interface RmsFold {
  /** [k] f32: the norm weight (with Gemma's (1 + w) already applied at load). */
  weight: GPUBuffer;
  eps: number;
}

/** The variant-name suffix of a kernel with the RMSNorm folded in. */
export const RMS_FOLD_SUFFIX = '_rms';

/** The prologue fragment: the folded norm, or the plain one (X already normed). */
export function rmsFragment(folded: boolean) {
  return folded ? ('common/rms_fold' as const) : ('common/rms_none' as const);
}

/** The const that places the norm weight's binding after a kernel's own. */
export function rmsBindingConst(binding: number): string {
  return `const RMS_BINDING: u32 = ${binding}u;`;
}
