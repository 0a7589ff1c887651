/**
 * The low-rank factorization of the GPU GPTQ solve (src/kernels/gptq.ts): the factor's
 * generators by the float64 recurrence on the CPU, their upload with V's blocks near the diagonal
 * formed on the GPU, and the sweep's lazy update through them.
 */
import { type GpuContext } from '../gpu/device.js';
import { DispatchBuilder, runDispatches, type Dispatch } from '../gpu/dispatch.js';
import { BufferSet, STATUS_WORDS, type SweepBuffers } from './gptq-buffers.js';
import { gptqGemm } from './gptq-gemm.js';
import { countTokens } from './gptq-plan.js';

/**
 * Columns between two updates of the low-rank sweep's s (a multiple of every group size). Measured
 * on lavapipe, down_proj at K = 4864: updating s after every group of 32 took about half of a
 * 1.7–1.9 s sweep (each update rewrites the whole [rows, T] s for 32 columns of work); every 128
 * columns, the sweep took 1.3–1.65 s (64 and 256: within the noise of 128).
 */
export const LOW_RANK_BLOCK = 128;

/**
 * The low-rank factorization, in float64 on the CPU. With T calibration tokens, H = 2·XᵀX/T has
 * rank ≤ T, so the damped H = D + AᵀA (A = √(2/T)·X, T × n, column a_k per input feature; D = λ,
 * or 1 + λ for a dead column, whose a_k is 0). The Cholesky factor of such a matrix is
 * semiseparable: processing columns in the factorization's (reversed) order m = n−1 … 0 with
 * M = I (T × T),
 *     u = M·a_m,   V_mm = √(D_m + a_mᵀu),   h_m = u / V_mm,   M −= h_m·h_mᵀ,
 * gives V_km = a_kᵀ·h_m for every k < m (induction on the column formula of the Cholesky
 * factorization: V's column m above the diagonal is A_{<m}ᵀ times (M·a_m)/V_mm, M = I minus the
 * h·hᵀ of the columns already done). That is 2·n·T² multiply-adds instead of n³/6 — at K = 4864
 * and T = 260, 0.66·10⁹ instead of 19·10⁹ — and the sweep's lazy update becomes two thin products
 * per group through the T-vector s = Σ_{k<j0} e_k·a_k of each row: Σ_{k<j0} e_k·V_km = sᵀ·h_m.
 * M is (I + Σ_{k>m} a_k·a_kᵀ/D_k)⁻¹ (each step is a Sherman–Morrison update), positive definite
 * with eigenvalues down to about λ/‖A‖², which float64 resolves and f32 would not: the recurrence
 * stays on the CPU. The GPU gets a_k and h_m in f32 and forms V's entries from them.
 */
export interface LowRankFactor {
  /** Tokens, padded to a multiple of 8 (the padding is zeros in every vector). */
  tp: number;
  /** [n, tp] a_k, row k. */
  a: Float64Array;
  /** [n, tp] h_m, row m. */
  h: Float64Array;
  /** [n] V_mm. */
  vdiag: Float64Array;
  /** [n] 1 where H_kk = 0. */
  dead: Uint32Array;
}

export function lowRankFactor(
  batches: readonly { x: Float32Array; tokens: number }[],
  n: number,
  dampPercent: number,
): LowRankFactor {
  const tokens = countTokens(batches, n);
  const tp = Math.ceil(tokens / 8) * 8;
  const scale = Math.sqrt(2 / tokens);
  const a = new Float64Array(n * tp);
  let t0 = 0;
  for (const b of batches) {
    for (let t = 0; t < b.tokens; t++) {
      const row = t * n;
      for (let k = 0; k < n; k++) a[k * tp + t0 + t] = scale * (b.x[row + k] as number);
    }
    t0 += b.tokens;
  }
  // diag H, dead columns and λ as in quantizeGptq.
  const dead = new Uint32Array(n);
  let diagSum = 0;
  for (let k = 0; k < n; k++) {
    let s = 0;
    for (let t = 0; t < tokens; t++) s += (a[k * tp + t] as number) ** 2;
    if (!Number.isFinite(s))
      throw new RangeError(`GPTQ: Hessian diagonal ${s} at ${k} must be finite and ≥ 0`);
    if (s === 0) dead[k] = 1;
    diagSum += s === 0 ? 1 : s;
  }
  const damp = (dampPercent * diagSum) / n;
  const h = new Float64Array(n * tp);
  const vdiag = new Float64Array(n);
  // M is kept whole (both triangles) so that its products read rows contiguously, and is touched
  // once per block of 4 columns: one pass subtracts the block's h·hᵀ from a row of M and takes
  // that row's products with the next block's a (columns inside a block see the block's earlier
  // h through h·(hᵀa) instead). Same arithmetic as one column at a time, a quarter of the passes.
  const T = tokens;
  const mm = new Float64Array(T * T);
  for (let t = 0; t < T; t++) mm[t * T + t] = 1;
  const B = 4;
  const u = new Float64Array(B * T);
  // Row offsets of a block's 4 columns in a / h; a short last block repeats its last column (in
  // the products, discarded) and contributes h = 0 to M.
  const rowsOf = (top: number): [number, number, number, number] => {
    const r = (c: number) => (top - Math.min(c, top)) * tp;
    return [r(0), r(1), r(2), r(3)];
  };
  // M = I for the first block: u = a.
  {
    const [a0, a1, a2, a3] = rowsOf(n - 1);
    for (let i = 0; i < T; i++) {
      u[i] = a[a0 + i] as number;
      u[T + i] = a[a1 + i] as number;
      u[2 * T + i] = a[a2 + i] as number;
      u[3 * T + i] = a[a3 + i] as number;
    }
  }
  for (let top = n - 1; top >= 0; top -= B) {
    const bw = Math.min(B, top + 1);
    for (let c = 0; c < bw; c++) {
      const m = top - c;
      const am = m * tp;
      const uc = c * T;
      for (let c2 = 0; c2 < c; c2++) {
        const hb = (top - c2) * tp;
        let dot = 0;
        for (let j = 0; j < T; j++) dot += (h[hb + j] as number) * (a[am + j] as number);
        for (let j = 0; j < T; j++) u[uc + j] = (u[uc + j] as number) - (h[hb + j] as number) * dot;
      }
      let d = damp + (dead[m] ? 1 : 0);
      for (let j = 0; j < T; j++) d += (a[am + j] as number) * (u[uc + j] as number);
      if (!(d > 0) || !Number.isFinite(d)) {
        throw new RangeError(
          `GPTQ: the damped Hessian is not positive definite; raise dampPercent (now ${dampPercent})`,
        );
      }
      const v = Math.sqrt(d);
      vdiag[m] = v;
      for (let j = 0; j < T; j++) h[am + j] = (u[uc + j] as number) / v;
    }
    const next = top - B;
    if (next < 0) break;
    const [h0, h1, h2, h3] = rowsOf(top);
    const w1 = bw > 1 ? 1 : 0;
    const w2 = bw > 2 ? 1 : 0;
    const w3 = bw > 3 ? 1 : 0;
    const [a0, a1, a2, a3] = rowsOf(next);
    for (let i = 0; i < T; i++) {
      const mi = i * T;
      const x0 = h[h0 + i] as number;
      const x1 = w1 * (h[h1 + i] as number);
      const x2 = w2 * (h[h2 + i] as number);
      const x3 = w3 * (h[h3 + i] as number);
      let s0 = 0;
      let s1 = 0;
      let s2 = 0;
      let s3 = 0;
      for (let j = 0; j < T; j++) {
        const x =
          (mm[mi + j] as number) -
          (x0 * (h[h0 + j] as number) +
            x1 * (h[h1 + j] as number) +
            x2 * (h[h2 + j] as number) +
            x3 * (h[h3 + j] as number));
        mm[mi + j] = x;
        s0 += x * (a[a0 + j] as number);
        s1 += x * (a[a1 + j] as number);
        s2 += x * (a[a2 + j] as number);
        s3 += x * (a[a3 + j] as number);
      }
      u[i] = s0;
      u[T + i] = s1;
      u[2 * T + i] = s2;
      u[3 * T + i] = s3;
    }
  }
  return { tp, a, h, vdiag, dead };
}

/** The low-rank factor on the GPU. */
export interface LowRankBuffers {
  /** a_k, [n, tp]. */
  a: GPUBuffer;
  /** h_m, [n, tp]. */
  h: GPUBuffer;
  /** V_km for k ≤ m in the same block of LOW_RANK_BLOCK columns, [n, LOW_RANK_BLOCK]. */
  vsb: GPUBuffer;
  /** V_mm, [n]. */
  vdiag: GPUBuffer;
  /** [n] u32: 1 where H_kk = 0. */
  dead: GPUBuffer;
  /** Status: flags of gptq_quant. */
  status: GPUBuffer;
}

/** Uploads the factor and forms V's blocks near the diagonal; frees what it made if it fails. */
export async function uploadLowRankFactor(
  ctx: GpuContext,
  n: number,
  f: LowRankFactor,
): Promise<LowRankBuffers> {
  const made = new BufferSet(ctx);
  const builder = new DispatchBuilder(ctx);
  try {
    const bytes = 4 * n * f.tp;
    const sb = LOW_RANK_BLOCK;
    const bufs = await ctx.guardAllocation(`the GPTQ factor (${n}×${f.tp}, twice)`, 2 * bytes, () => ({
      a: made.create(`gptq.a[${n}]`, bytes),
      h: made.create(`gptq.h[${n}]`, bytes),
      vsb: made.create(`gptq.vblocks[${n}]`, 4 * n * sb),
      vdiag: made.create('gptq.vdiag', 4 * n),
      dead: made.create('gptq.dead', 4 * n),
      status: made.create('gptq.status', STATUS_WORDS * 4),
    }));
    ctx.device.queue.writeBuffer(bufs.a, 0, Float32Array.from(f.a));
    ctx.device.queue.writeBuffer(bufs.h, 0, Float32Array.from(f.h));
    ctx.device.queue.writeBuffer(bufs.vdiag, 0, Float32Array.from(f.vdiag));
    ctx.device.queue.writeBuffer(bufs.dead, 0, f.dead);
    ctx.device.queue.writeBuffer(bufs.status, 0, new Uint32Array([0, 0xffffffff, 0, 0]));
    // V_km = a_k·h_m for k < m inside each block of `sb` columns: the sweep's corrections within
    // a block (between two updates of s) and each group's own triangle.
    const d: Dispatch[] = [];
    for (let b0 = 0; b0 < n; b0 += sb) {
      const bw = Math.min(sb, n - b0);
      d.push(
        gptqGemm(builder, {
          a: bufs.a,
          b: bufs.h,
          c: bufs.vsb,
          na: bw,
          nb: bw,
          kend: f.tp,
          aOff: b0 * f.tp,
          aSa: f.tp,
          aSk: 1,
          bOff: b0 * f.tp,
          ldb: f.tp,
          cOff: b0 * sb,
          cSa: sb,
          cSb: 1,
          alpha: 1,
          accumulate: false,
          lower: true,
        }),
      );
    }
    runDispatches(ctx, d);
    await ctx.device.queue.onSubmittedWorkDone();
    return bufs;
  } catch (e) {
    made.destroyAll();
    throw e;
  } finally {
    builder.destroy();
  }
}

/**
 * The sweep's lazy update of the group at j0 (acc[r, m] = Σ_{k<j0} e[r, k]·V[k, m]) as s[r]·h_m,
 * s = Σ_{k<b0} e[r, k]·a_k as of the start b0 of the current block of columns (updated once per
 * block by `carryLowRankBlock`, where it is a read-modify-write of the whole [rows, T] s: per
 * group it cost more than the product), plus the block's columns before the group through the V
 * entries of the block: E[:, b0:j0]·V[b0:j0, group].
 */
export function lowRankGroupUpdate(
  builder: DispatchBuilder,
  d: Dispatch[],
  bufs: SweepBuffers,
  f: { h: GPUBuffer; vsb: GPUBuffer; n: number; tp: number },
  cr: number,
  j0: number,
  gs: number,
): void {
  const n = f.n;
  const tp = f.tp;
  const sb = LOW_RANK_BLOCK;
  const b0 = j0 - (j0 % sb);
  d.push(
    gptqGemm(builder, {
      a: f.h,
      b: bufs.s as GPUBuffer,
      c: bufs.acc,
      na: gs,
      nb: cr,
      kend: b0 > 0 ? tp : 0,
      aOff: j0 * tp,
      aSa: tp,
      aSk: 1,
      bOff: 0,
      ldb: tp,
      cOff: 0,
      cSa: 1,
      cSb: gs,
      alpha: 1,
      accumulate: false,
      lower: false,
    }),
  );
  if (j0 > b0) {
    d.push(
      gptqGemm(builder, {
        a: f.vsb,
        b: bufs.w,
        c: bufs.acc,
        na: gs,
        nb: cr,
        kend: j0 - b0,
        aOff: b0 * sb + (j0 - b0),
        aSa: 1,
        aSk: sb,
        bOff: b0,
        ldb: n,
        cOff: 0,
        cSa: 1,
        cSb: gs,
        alpha: 1,
        accumulate: true,
        lower: false,
      }),
    );
  }
}

/** s[r] += Σ_{k in the block} e[r, k]·a_k, once per block of columns (the block starting at b0). */
export function carryLowRankBlock(
  builder: DispatchBuilder,
  d: Dispatch[],
  bufs: SweepBuffers,
  f: { a: GPUBuffer; n: number; tp: number },
  cr: number,
  b0: number,
): void {
  d.push(
    gptqGemm(builder, {
      a: f.a,
      b: bufs.w,
      c: bufs.s as GPUBuffer,
      na: f.tp,
      nb: cr,
      kend: LOW_RANK_BLOCK,
      aOff: b0 * f.tp,
      aSa: 1,
      aSk: f.tp,
      bOff: b0,
      ldb: f.n,
      cOff: 0,
      cSa: 1,
      cSb: f.tp,
      alpha: 1,
      accumulate: b0 > 0,
      lower: false,
    }),
  );
}
