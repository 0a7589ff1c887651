/**
 * GPTQ (Frantar et al., "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
 * Transformers", 2022) into Kiln's int4 format (q4.ts): columns are quantized left to right and the
 * error of each is compensated on the columns not yet quantized, so that the layer's output error
 * ‖X·Wᵀ − X·Ŵᵀ‖² over the calibration inputs X, not the weight error, is what gets minimised. The
 * rows of W are independent problems sharing H = 2·XᵀX/n.
 *
 * The paper's form: with U the upper Cholesky factor of H⁻¹ (H⁻¹ = UᵀU), column j is quantized
 * from its current value w̃_j, ε_j = (w̃_j − q_j)/U_jj, and every later column m gets
 * w̃_m −= ε_j·U_jm. Unrolled, w − q = ε·U (w the original weights), so ε = (w − q)·V with V = U⁻¹,
 * which is upper triangular with H = V·Vᵀ. That gives the same result from V alone:
 *     w̃_j = w_j + (Σ_{k<j} e_k·V_kj) / V_jj,   e_k = w_k − q_k,
 * and V is the Cholesky factor of H taken from the bottom-right corner (that of J·H·J, J reversing
 * the order), one factorization instead of the paper's three (Cholesky, inverse, Cholesky of the
 * inverse). At K = 4864 (an MLP down projection) each is K³/6 multiply-adds, the bulk of the work.
 *
 * Lazy batches: the sum over k < j is split at the start b0 of the block holding j. The part over
 * k < b0 is one matrix product E[:, <b0]·V[<b0, block] for all rows at once (cache-tiled); the part
 * inside the block is done per row as each e_k becomes known. Group parameters are chosen when a
 * group's first column j0 is reached, from the group's weights as the paper's right-looking update
 * has left them by then (compensated for every column before j0): in this form that is
 * w_G + a_G·V_GG⁻¹ with a_m = Σ_{k<j0} e_k·V_km, a triangular solve of the group's size per row.
 *
 * No act-order: our groups are contiguous in K, and quantizing columns out of order would need a
 * permutation the format cannot carry (or static groups fixed before any compensation).
 */
import { checkQ4Shape, type Q4Format, type Q4Matrix } from './q4.js';
import { clipRatios, roundHalfUp, searchGroupParams } from './clip.js';

export interface GptqOptions {
  /** Added to H's diagonal, as a fraction of its mean diagonal (default 0.01), for stability. */
  dampPercent?: number;
  /** Columns per lazy batch (default 128; rounded up to a multiple of the group size). */
  blockSize?: number;
  /** Not supported (see the file comment); only false is accepted. */
  actOrder?: false;
  /**
   * Choose each group's scale and zero point with the clipping search of clip.ts instead of the
   * RTN rule, on the group's compensated weights and weighting column m by V_mm² (the factor by
   * which its own rounding error enters the output error: ‖X(W − Ŵ)ᵀ‖² = Σ_rows ‖ε‖², ε_m =
   * V_mm·(w̃_m − q_m)). Default false.
   */
  clip?: boolean;
  /** Clipping grid when `clip` (default 20, see quantizeClip). */
  grid?: number;
}

/**
 * out[oBase + i·ldo + j] += alpha · Σ_{k∈[k0,k1)} a[aBase + i·lda + k] · b[bBase + j·ldb + k] for
 * i < m, j < nn (only j < i + 4 − i % 4 when `lower`: the lower triangle plus a few entries just
 * above the diagonal, which the caller overwrites).
 * Tiled so a KT×JT slab of b stays in L2 while every row of a streams past it, and register-blocked
 * 4 rows × 2 columns: 6 loads per 8 multiply-adds, the best a scalar JIT can keep in registers.
 */
function gemmNT(
  out: Float64Array,
  oBase: number,
  ldo: number,
  a: Float64Array,
  aBase: number,
  lda: number,
  b: Float64Array,
  bBase: number,
  ldb: number,
  m: number,
  nn: number,
  k0: number,
  k1: number,
  alpha: number,
  lower: boolean,
): void {
  const KT = 256;
  const JT = 64;
  for (let kt = k0; kt < k1; kt += KT) {
    const ke = Math.min(k1, kt + KT);
    const kl = ke - kt;
    for (let jt = 0; jt < nn; jt += JT) {
      const je = Math.min(nn, jt + JT);
      let i = lower ? jt - (jt % 4) : 0;
      for (; i + 4 <= m; i += 4) {
        const jEnd = lower ? Math.min(je, i + 4) : je;
        const a0 = aBase + i * lda + kt;
        const a1 = a0 + lda;
        const a2 = a1 + lda;
        const a3 = a2 + lda;
        let j = jt;
        for (; j + 2 <= jEnd; j += 2) {
          const b0 = bBase + j * ldb + kt;
          const b1 = b0 + ldb;
          let s00 = 0;
          let s01 = 0;
          let s10 = 0;
          let s11 = 0;
          let s20 = 0;
          let s21 = 0;
          let s30 = 0;
          let s31 = 0;
          for (let k = 0; k < kl; k++) {
            const x0 = b[b0 + k] as number;
            const x1 = b[b1 + k] as number;
            const y0 = a[a0 + k] as number;
            const y1 = a[a1 + k] as number;
            const y2 = a[a2 + k] as number;
            const y3 = a[a3 + k] as number;
            s00 += y0 * x0;
            s01 += y0 * x1;
            s10 += y1 * x0;
            s11 += y1 * x1;
            s20 += y2 * x0;
            s21 += y2 * x1;
            s30 += y3 * x0;
            s31 += y3 * x1;
          }
          const o = oBase + i * ldo + j;
          out[o] = (out[o] as number) + alpha * s00;
          out[o + 1] = (out[o + 1] as number) + alpha * s01;
          out[o + ldo] = (out[o + ldo] as number) + alpha * s10;
          out[o + ldo + 1] = (out[o + ldo + 1] as number) + alpha * s11;
          out[o + 2 * ldo] = (out[o + 2 * ldo] as number) + alpha * s20;
          out[o + 2 * ldo + 1] = (out[o + 2 * ldo + 1] as number) + alpha * s21;
          out[o + 3 * ldo] = (out[o + 3 * ldo] as number) + alpha * s30;
          out[o + 3 * ldo + 1] = (out[o + 3 * ldo + 1] as number) + alpha * s31;
        }
        for (; j < jEnd; j++) {
          const b0 = bBase + j * ldb + kt;
          let s0 = 0;
          let s1 = 0;
          let s2 = 0;
          let s3 = 0;
          for (let k = 0; k < kl; k++) {
            const x0 = b[b0 + k] as number;
            s0 += (a[a0 + k] as number) * x0;
            s1 += (a[a1 + k] as number) * x0;
            s2 += (a[a2 + k] as number) * x0;
            s3 += (a[a3 + k] as number) * x0;
          }
          const o = oBase + i * ldo + j;
          out[o] = (out[o] as number) + alpha * s0;
          out[o + ldo] = (out[o + ldo] as number) + alpha * s1;
          out[o + 2 * ldo] = (out[o + 2 * ldo] as number) + alpha * s2;
          out[o + 3 * ldo] = (out[o + 3 * ldo] as number) + alpha * s3;
        }
      }
      for (; i < m; i++) {
        const jEnd = lower ? Math.min(je, i + 1) : je;
        const a0 = aBase + i * lda + kt;
        for (let j = jt; j < jEnd; j++) {
          const b0 = bBase + j * ldb + kt;
          let s = 0;
          for (let k = 0; k < kl; k++) s += (a[a0 + k] as number) * (b[b0 + k] as number);
          const o = oBase + i * ldo + j;
          out[o] = (out[o] as number) + alpha * s;
        }
      }
    }
  }
}

/**
 * In-place Cholesky factorization A = L·Lᵀ of a symmetric positive definite n×n row-major matrix,
 * reading and writing only the lower triangle. Blocked left-looking: each panel of NB columns is
 * copied out, updated with all the columns before it in one `gemmNT` (the n³/6 bulk, reading L in
 * long contiguous row segments and writing only the panel), factored, and copied back. Returns
 * false when a pivot is not positive.
 */
function choleskyLower(a: Float64Array, n: number): boolean {
  const NB = 128;
  const p = new Float64Array(n * Math.min(NB, n));
  for (let p0 = 0; p0 < n; p0 += NB) {
    const w = Math.min(NB, n - p0);
    const m = n - p0;
    // p[i][c] = A[p0 + i][p0 + c] (lower part), then minus Σ_{k<p0} L[p0+i][k]·L[p0+c][k].
    for (let i = 0; i < m; i++) {
      const ai = (p0 + i) * n + p0;
      const ce = Math.min(w, i + 1);
      for (let c = 0; c < ce; c++) p[i * w + c] = a[ai + c] as number;
    }
    if (p0 > 0) gemmNT(p, 0, w, a, p0 * n, n, a, p0 * n, n, m, w, 0, p0, -1, false);
    // The panel's diagonal block, unblocked.
    for (let j = 0; j < w; j++) {
      const rj = j * w;
      let d = p[rj + j] as number;
      for (let k = 0; k < j; k++) d -= (p[rj + k] as number) * (p[rj + k] as number);
      if (!(d > 0)) return false;
      const ljj = Math.sqrt(d);
      p[rj + j] = ljj;
      for (let i = j + 1; i < w; i++) {
        const ri = i * w;
        let s = p[ri + j] as number;
        for (let k = 0; k < j; k++) s -= (p[ri + k] as number) * (p[rj + k] as number);
        p[ri + j] = s / ljj;
      }
    }
    // The rows below it: L[i, panel] = p[i]·L_pp⁻ᵀ, four rows at a time so the four substitutions'
    // dependency chains overlap (one row alone waits on each add's latency).
    let i = w;
    for (; i + 4 <= m; i += 4) {
      const r0 = i * w;
      const r1 = r0 + w;
      const r2 = r1 + w;
      const r3 = r2 + w;
      for (let j = 0; j < w; j++) {
        const rj = j * w;
        let s0 = p[r0 + j] as number;
        let s1 = p[r1 + j] as number;
        let s2 = p[r2 + j] as number;
        let s3 = p[r3 + j] as number;
        for (let k = 0; k < j; k++) {
          const l = p[rj + k] as number;
          s0 -= (p[r0 + k] as number) * l;
          s1 -= (p[r1 + k] as number) * l;
          s2 -= (p[r2 + k] as number) * l;
          s3 -= (p[r3 + k] as number) * l;
        }
        const d = p[rj + j] as number;
        p[r0 + j] = s0 / d;
        p[r1 + j] = s1 / d;
        p[r2 + j] = s2 / d;
        p[r3 + j] = s3 / d;
      }
    }
    for (; i < m; i++) {
      const ri = i * w;
      for (let j = 0; j < w; j++) {
        const rj = j * w;
        let s = p[ri + j] as number;
        for (let k = 0; k < j; k++) s -= (p[ri + k] as number) * (p[rj + k] as number);
        p[ri + j] = s / (p[rj + j] as number);
      }
    }
    for (let i = 0; i < m; i++) {
      const ai = (p0 + i) * n + p0;
      const ce = Math.min(w, i + 1);
      for (let c = 0; c < ce; c++) a[ai + c] = p[i * w + c] as number;
    }
  }
  return true;
}

/**
 * Adds 2·xᵀx of a row-major [rowsOfX, cols] batch of a matrix's inputs (one token per row) to the
 * full symmetric cols×cols matrix h, and returns rowsOfX: dividing the sum over all batches by the
 * total count gives GPTQ's H = 2·XᵀX/n. quantizeGptq does not need that division (its damping is
 * relative to H's own diagonal and the result is invariant to scaling H), but a normalised H is
 * comparable across calibration sets.
 */
export function accumulateHessian(h: Float64Array, x: Float32Array, rowsOfX: number, cols: number): number {
  if (!Number.isInteger(rowsOfX) || rowsOfX < 1 || !Number.isInteger(cols) || cols < 1) {
    throw new RangeError(`activations shape [${rowsOfX}, ${cols}] must be positive integers`);
  }
  if (x.length !== rowsOfX * cols) {
    throw new RangeError(`activations: ${x.length} values for a [${rowsOfX}, ${cols}] batch`);
  }
  if (h.length !== cols * cols) {
    throw new RangeError(`Hessian: ${h.length} values for ${cols}×${cols}`);
  }
  // xᵀ in chunks of tokens, so each product reads contiguous memory on both sides.
  const CHUNK = 256;
  const xt = new Float64Array(cols * Math.min(CHUNK, rowsOfX));
  for (let r0 = 0; r0 < rowsOfX; r0 += CHUNK) {
    const w = Math.min(CHUNK, rowsOfX - r0);
    for (let r = 0; r < w; r++) {
      const base = (r0 + r) * cols;
      for (let k = 0; k < cols; k++) xt[k * w + r] = x[base + k] as number;
    }
    gemmNT(h, 0, cols, xt, 0, w, xt, 0, w, cols, cols, 0, w, 2, true);
  }
  for (let i = 0; i < cols; i++) {
    for (let j = i + 1; j < cols; j++) h[i * cols + j] = h[j * cols + i] as number;
  }
  return rowsOfX;
}

/**
 * GPTQ quantization of a row-major [rows, cols] matrix into the format of `quantizeRtn`, given
 * H = 2·XᵀX/n (cols×cols, symmetric; see `accumulateHessian`) of the matrix's calibration inputs.
 * As in the paper: a column no input ever reaches (H_kk = 0) gets H_kk = 1 and weight 0 (it does
 * not affect the output, and a zero keeps it out of its group's range), then λ = dampPercent ·
 * mean(diag H) is added to the diagonal. Throws when H + λI is not positive definite (raise
 * dampPercent). `hessian` is not modified.
 */
export function quantizeGptq(
  values: Float32Array,
  rows: number,
  cols: number,
  format: Q4Format,
  hessian: Float64Array,
  opts: GptqOptions = {},
): Q4Matrix {
  checkQ4Shape(rows, cols, format);
  if (values.length !== rows * cols) {
    throw new RangeError(`int4 quantize: ${values.length} values for a [${rows}, ${cols}] matrix`);
  }
  if (hessian.length !== cols * cols) {
    throw new RangeError(`GPTQ: Hessian has ${hessian.length} values, expected ${cols}×${cols}`);
  }
  if ((opts.actOrder as boolean | undefined) === true) {
    throw new RangeError('GPTQ act-order is not supported: int4 groups must be contiguous in K');
  }
  const dampPercent = opts.dampPercent ?? 0.01;
  if (!(dampPercent >= 0) || !Number.isFinite(dampPercent)) {
    throw new RangeError(`GPTQ dampPercent ${dampPercent} must be finite and ≥ 0`);
  }
  const gs = format.groupSize;
  const requested = opts.blockSize ?? 128;
  if (!Number.isInteger(requested) || requested < 1) {
    throw new RangeError(`GPTQ blockSize ${requested} must be a positive integer`);
  }
  // Whole groups per block, so a group's compensated weights are all reachable when it starts.
  const bs = Math.min(cols, Math.ceil(requested / gs) * gs);
  const ratios = clipRatios(opts.clip ? (opts.grid ?? 20) : 1);
  const n = cols;

  // R = J·H·J (reversed order), symmetrised from both triangles; dead columns fixed; damped.
  const f = new Float64Array(n * n);
  const dead = new Uint8Array(n);
  let diagSum = 0;
  for (let i = 0; i < n; i++) {
    const hii = hessian[i * n + i] as number;
    if (!Number.isFinite(hii) || hii < 0) {
      throw new RangeError(`GPTQ: Hessian diagonal ${hii} at ${i} must be finite and ≥ 0`);
    }
    if (hii === 0) dead[i] = 1;
    diagSum += hii === 0 ? 1 : hii;
  }
  const damp = (dampPercent * diagSum) / n;
  for (let a = 0; a < n; a++) {
    const i = n - 1 - a;
    for (let b = 0; b < a; b++) {
      const j = n - 1 - b;
      const v = 0.5 * ((hessian[i * n + j] as number) + (hessian[j * n + i] as number));
      if (!Number.isFinite(v)) throw new RangeError(`GPTQ: non-finite Hessian entry at ${i}, ${j}`);
      f[a * n + b] = v;
    }
    f[a * n + a] = (dead[i] ? 1 : (hessian[i * n + i] as number)) + damp;
  }
  if (!choleskyLower(f, n)) {
    throw new RangeError(
      `GPTQ: the damped Hessian is not positive definite; raise dampPercent (now ${dampPercent})`,
    );
  }
  // L' = chol(J·H·J) gives V = J·L'·J (upper, H = V·Vᵀ). Store Vt = Vᵀ (lower, row m holds V_km for
  // k ≤ m, contiguous for the dot products below): Vt[m][k] = L'[n−1−k][n−1−m], an in-place
  // reflection across the anti-diagonal.
  for (let a = 0; a < n; a++) {
    for (let b = 0; b <= a; b++) {
      const a2 = n - 1 - b;
      const b2 = n - 1 - a;
      if (a * n + b < a2 * n + b2) {
        const t = f[a * n + b] as number;
        f[a * n + b] = f[a2 * n + b2] as number;
        f[a2 * n + b2] = t;
      }
    }
  }
  const vt = f;

  const groups = cols / gs;
  const codes = new Uint8Array(rows * cols);
  const scales = new Float32Array(rows * groups);
  const zeros = new Uint8Array(rows * groups);
  const w = new Float64Array(rows * n);
  for (let i = 0; i < rows * n; i++) {
    const v = values[i] as number;
    if (!Number.isFinite(v)) {
      throw new RangeError(`int4 quantize: non-finite value at row ${Math.floor(i / n)}, col ${i % n}`);
    }
    w[i] = dead[i % n] ? 0 : v;
  }
  const e = new Float64Array(rows * n);
  const acc = new Float64Array(rows * bs);
  const cur = new Float64Array(gs);
  const x = new Float64Array(gs);
  const cw = new Float64Array(n);
  for (let m = 0; m < n; m++) cw[m] = (vt[m * n + m] as number) ** 2;
  const res = new Float64Array(3);

  for (let b0 = 0; b0 < n; b0 += bs) {
    const b1 = Math.min(n, b0 + bs);
    const bw = b1 - b0;
    // Lazy batch: acc[r][m − b0] = Σ_{k<b0} e[r][k]·V_km for the whole block at once.
    acc.fill(0);
    if (b0 > 0) gemmNT(acc, 0, bw, e, 0, n, vt, b0 * n, n, rows, bw, 0, b0, 1, false);
    for (let r = 0; r < rows; r++) {
      const wr = r * n;
      const ar = r * bw - b0;
      for (let j0 = b0; j0 < b1; j0 += gs) {
        const g = j0 / gs;
        // a_m for the group: add the contributions of the block's earlier groups.
        if (j0 > b0) {
          for (let m = j0; m < j0 + gs; m++) {
            const vm = m * n;
            // Two partial sums: this loop is latency-bound otherwise (j0 − b0 is even).
            let s0 = 0;
            let s1 = 0;
            for (let k = b0; k < j0; k += 2) {
              s0 += (e[wr + k] as number) * (vt[vm + k] as number);
              s1 += (e[wr + k + 1] as number) * (vt[vm + k + 1] as number);
            }
            acc[ar + m] = (acc[ar + m] as number) + s0 + s1;
          }
        }
        // The group as compensated so far: w_G + x with x·V_GG = a_G (forward substitution).
        for (let m = j0; m < j0 + gs; m++) {
          const vm = m * n;
          let s = acc[ar + m] as number;
          for (let k = j0; k < m; k++) s -= (x[k - j0] as number) * (vt[vm + k] as number);
          const xm = s / (vt[vm + m] as number);
          x[m - j0] = xm;
          cur[m - j0] = (w[wr + m] as number) + xm;
        }
        searchGroupParams(cur, 0, cw, j0, gs, format, ratios, res);
        const sc = res[0] as number;
        const z = res[1] as number;
        scales[r * groups + g] = sc;
        zeros[r * groups + g] = z;
        // Column by column: compensate with the group's own earlier errors, round, record e.
        for (let m = j0; m < j0 + gs; m++) {
          const vm = m * n;
          let s = acc[ar + m] as number;
          for (let k = j0; k < m; k++) s += (e[wr + k] as number) * (vt[vm + k] as number);
          const wm = w[wr + m] as number;
          const wt = wm + s / (vt[vm + m] as number);
          let q = sc > 0 ? roundHalfUp(wt / sc) + z : z;
          q = q < 0 ? 0 : q > 15 ? 15 : q;
          codes[wr + m] = q;
          e[wr + m] = wm - Math.fround((q - z) * sc);
        }
      }
    }
  }
  return { rows, cols, format, codes, scales, zeros };
}
