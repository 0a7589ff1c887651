/**
 * RMSNorm folded into the prologue of the matmul that reads its output (shaders/common/
 * rms_fold.wgsl): the `_rms` variants of the one-row GEMM tile (matmul_gemm, TM = 1) and of
 * matmul_q4 (MT = 1, subgroup X) read the raw residual row and norm each x[k] as they load it, so
 * a decode step skips the rmsnorm dispatch before qkv, gate/up and the LM head (the graph folds
 * only into the float GEMM: src/kernels/linear.ts says why not into matmul_q4).
 *
 * Exactness: bit-equal to rmsnorm followed by the unfused kernel. The normed value is
 * (x · inv) · w[k] with inv = inverseSqrt(ms + eps), the same f32 expression as
 * shaders/rmsnorm.wgsl, and the sum of squares runs in rmsnorm's order (its 64 strided partials,
 * added in sequence; the fold computes them across subgroup lanes and adds them through shuffles).
 * This matters beyond rounding: a row decoded alone folds and the same row in a batch does not,
 * and with a quantized KV cache a last-bit difference in K or V can flip a quantization step and
 * then a greedy id, so any other order makes batched output differ from solo output.
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
