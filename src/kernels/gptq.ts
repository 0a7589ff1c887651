/**
 * The GPU GPTQ solver (`GptqGpuSolver`, `quantizeGptqGpu`): the factorization's choice and the
 * column sweep. Its parts: gptq-plan.ts (options, device limits, which factorization),
 * gptq-dense.ts and gptq-low-rank.ts (the two factorizations and their lazy updates),
 * gptq-buffers.ts, and one wrapper per kernel (gptq-gemm.ts, gptq-damp.ts, gptq-chol.ts,
 * gptq-quant.ts).
 *
 * GPTQ on the GPU, in f32: the algorithm and output format of `quantizeGptq` (src/quant/gptq-solver.ts,
 * the float64 reference; its file comment derives the V form used here: with H = V·Vᵀ, V upper
 * triangular, i.e. V = U⁻¹ for the paper's upper Cholesky factor U of H⁻¹, column m of a row is
 * quantized from w̃_m = w_m + (Σ_{k<m} e_k·V_km) / V_mm, e = w − ŵ).
 *
 * Measured first, on lavapipe (2 cores), a Qwen2.5-0.5B layer with 260 calibration tokens: the CPU
 * solver spent 32–40 s per layer, 25–32 s of it on down_proj (K = 4864), almost all in the K³/6
 * factorization and the rows·K²/2 lazy updates, and 4 s on down_proj's Hessian. Dense matrix
 * products on lavapipe run at 2–3·10⁹ multiply-adds/s, so even on the GPU the dense solve of that
 * one matrix (19·10⁹ + 11·10⁹) costs 10+ s. The cure is algorithmic: H = 2·XᵀX/T has rank ≤ T,
 * and with T ≪ K its factor has a compact form (see `lowRankFactor` in gptq-low-rank.ts), 2·K·T² to build and
 * 2·rows·K·T to sweep with, 10× less work at that shape. So there are two factorizations, and
 * `planGptqGpu` takes the cheaper one that fits (`kiln quantize` at 0.5B shapes on lavapipe: low
 * rank for down_proj, dense for K = 896; on a hardware GPU, dense wherever it fits):
 *   - dense, on the GPU: H = 2·XᵀX/T (gptq_gemm, written straight into R = J·H·J, the reversed
 *     order, lower triangle; or a float64 H from the caller), dead columns and damping on its
 *     diagonal (gptq_damp), then R = L·Lᵀ blocked left-looking in panels of 64 columns (a
 *     gptq_gemm subtracts every earlier column from the panel, gptq_chol factors its diagonal
 *     block and solves the rows below). V = J·L·J: one factorization instead of the paper's three
 *     (Cholesky, inverse, Cholesky of the inverse), and the inverse is never formed;
 *   - low rank, from the activations: the factor's generators in float64 on the CPU (2·K·T² = 0.66·10⁹
 *     at K = 4864, about 1 s), V's entries near the diagonal from them on the GPU.
 * Then per matrix, one group of columns at a time for every row at once: the lazy batched update
 * Σ_{k<j0} e_k·V_km of the group's columns (dense: one gptq_gemm over all earlier columns; low
 * rank: two thin ones, see `lowRankGroupUpdate`), and gptq_quant, one thread per row, which chooses the
 * group's scale and zero point, quantizes its columns and propagates the error within it. The lazy
 * batch is the group itself, so a group's parameters need nothing from inside a batch. All of a
 * matrix goes into one command buffer, with no readback in between; codes, scales and zero points
 * are read back once, with a status word that carries every failure.
 *
 * Semantics kept from the CPU solver: group parameters by round-to-nearest on the compensated
 * weights (the `clip` search stays CPU-only), dead columns zeroed, damping relative to H's mean
 * diagonal, no act-order (groups are contiguous in K), the same errors. Results differ from the
 * float64 solver only by rounding (f32 factor and sums), which can flip a code at a rounding tie;
 * test/kernels/gptq.test.ts bounds that and the output error against the reference.
 *
 * Needs subgroups of at least 8 lanes (gptq_gemm and gptq_quant broadcast through them, as the
 * matmul GEMM does) and, for the dense factorization, the K×K factor in one storage buffer (4·K²
 * bytes); `gptqGpuUnsupported` says when a device cannot, and `kiln quantize` then falls back to
 * the CPU solver. Rows are split into chunks that fit.
 */
import { DeviceMemoryError } from '../errors.js';
import { type GpuContext } from '../gpu/device.js';
import { DispatchBuilder, runDispatches, type Dispatch } from '../gpu/dispatch.js';
import { checkQ4Shape, type Q4Format, type Q4Matrix } from '../quant/q4.js';
import { bindLimit, BufferSet, STATUS_WORDS, throwOnStatus } from './gptq-buffers.js';
import { denseGroupUpdate, factorDense } from './gptq-dense.js';
import {
  carryLowRankBlock,
  LOW_RANK_BLOCK,
  lowRankFactor,
  lowRankGroupUpdate,
  uploadLowRankFactor,
} from './gptq-low-rank.js';
import {
  checkOptions,
  countTokens,
  gptqGpuUnsupported,
  planGptqGpu,
  type GptqFactorization,
  type GptqGpuOptions,
  type GptqHessianSource,
} from './gptq-plan.js';
import { gptqQuant, MAX_GROUP, unpackGptqQuant } from './gptq-quant.js';

/**
 * The factored Hessian of one input on the GPU, ready to quantize any number of [rows, cols]
 * matrices that read that input. Free it with `destroy`.
 */
export class GptqGpuSolver {
  private destroyed = false;

  private constructor(
    private readonly ctx: GpuContext,
    readonly cols: number,
    readonly factorization: GptqFactorization,
    /** Dense: the factor L of R = J·H·J (lower triangle), n × n. Low rank: a_k, [n, tp]. */
    private readonly main: GPUBuffer,
    /** Low rank: h_m, [n, tp]. */
    private readonly hg: GPUBuffer | null,
    /** Low rank: V_km for k ≤ m in the same block of LOW_RANK_BLOCK columns, [n, LOW_RANK_BLOCK]. */
    private readonly vsb: GPUBuffer | null,
    /** Low rank: V_mm, [n]. */
    private readonly vdiag: GPUBuffer | null,
    /** [cols] u32: 1 where H_kk = 0. */
    private readonly dead: GPUBuffer,
    /** Status: flags of gptq_damp, gptq_chol and gptq_quant. */
    private readonly status: GPUBuffer,
    /** Low rank: tokens padded to a multiple of 8. */
    private readonly tp: number,
  ) {}

  /**
   * Builds and factors the damped Hessian (the dense factorization queued on the GPU, its failures
   * surfacing in `quantize`; the low-rank one on the CPU). Throws DeviceMemoryError when the device
   * cannot hold it (see `gptqGpuUnsupported`), RangeError for bad inputs as the CPU solver does.
   */
  static async create(
    ctx: GpuContext,
    cols: number,
    source: GptqHessianSource,
    opts: GptqGpuOptions = {},
  ): Promise<GptqGpuSolver> {
    const dampPercent = checkOptions(opts);
    if (!Number.isInteger(cols) || cols < 1 || cols % 8 !== 0) {
      throw new RangeError(`GPTQ: K = ${cols} must be a positive multiple of 8`);
    }
    const n = cols;
    const tokens = 'hessian' in source ? null : countTokens(source.activations, n);
    if (opts.factorization === 'lowRank' && tokens === null) {
      throw new RangeError('GPTQ: the low-rank factorization needs the activations, not H');
    }
    let kind: GptqFactorization;
    if (opts.factorization) {
      const unsupported = gptqGpuUnsupported(ctx, n, opts.factorization === 'lowRank' ? tokens : null);
      if (unsupported) throw new DeviceMemoryError(unsupported);
      kind = opts.factorization;
    } else {
      const plan = planGptqGpu(ctx, n, tokens, opts.rows ?? n);
      if ('reason' in plan) throw new DeviceMemoryError(plan.reason);
      kind = plan.factorization;
    }
    if (kind === 'lowRank' && !('hessian' in source)) {
      const f = lowRankFactor(source.activations, n, dampPercent);
      const b = await uploadLowRankFactor(ctx, n, f);
      return new GptqGpuSolver(ctx, n, 'lowRank', b.a, b.h, b.vsb, b.vdiag, b.dead, b.status, f.tp);
    }
    const b = await factorDense(ctx, n, source, dampPercent);
    return new GptqGpuSolver(ctx, n, 'dense', b.l, null, null, null, b.dead, b.status, 0);
  }

  /**
   * GPTQ of a row-major [rows, cols] matrix in `format` with this Hessian: the format of
   * `quantizeGptq`, equal to it up to f32 rounding. Throws as the CPU solver does (non-finite
   * weights, a Hessian that is not positive definite after damping, an f16 scale overflow).
   */
  async quantize(
    values: Float32Array,
    rows: number,
    format: Q4Format,
    /** Rows per pass (tests; by default as many as one buffer of the device holds). */
    chunkRows?: number,
  ): Promise<Q4Matrix> {
    if (this.destroyed) throw new RangeError('GPTQ: the GPU solver was destroyed');
    const n = this.cols;
    checkQ4Shape(rows, n, format);
    if (values.length !== rows * n) {
      throw new RangeError(`int4 quantize: ${values.length} values for a [${rows}, ${n}] matrix`);
    }
    for (let i = 0; i < values.length; i++) {
      if (!Number.isFinite(values[i] as number)) {
        throw new RangeError(`int4 quantize: non-finite value at row ${Math.floor(i / n)}, col ${i % n}`);
      }
    }
    const gs = format.groupSize;
    if (gs > MAX_GROUP) throw new RangeError(`GPTQ on the GPU: group size ${gs} above ${MAX_GROUP}`);
    const groups = n / gs;
    const ctx = this.ctx;
    const low = this.factorization === 'lowRank';
    const tp = this.tp;
    const out: Q4Matrix = {
      rows,
      cols: n,
      format,
      codes: new Uint8Array(rows * n),
      scales: new Float32Array(rows * groups),
      zeros: new Uint8Array(rows * groups),
    };
    const rowsPerChunk = Math.max(
      1,
      Math.min(rows, chunkRows ?? Math.floor(bindLimit(ctx) / (4 * Math.max(n, tp)))),
    );
    const made = new BufferSet(ctx);
    try {
      const bufs = await ctx.guardAllocation(
        `GPTQ buffers for ${rowsPerChunk} rows of ${n}`,
        rowsPerChunk * (4 * n + 4 * gs + n / 2 + 8 * groups + 4 * tp),
        () => ({
          w: made.create('gptq.weights', 4 * rowsPerChunk * n),
          acc: made.create('gptq.acc', 4 * rowsPerChunk * gs),
          codes: made.create('gptq.codes', (rowsPerChunk * n) / 2),
          qp: made.create('gptq.params', 8 * rowsPerChunk * groups),
          s: low ? made.create('gptq.s', 4 * rowsPerChunk * tp) : null,
        }),
      );
      for (let r0 = 0; r0 < rows; r0 += rowsPerChunk) {
        const cr = Math.min(rowsPerChunk, rows - r0);
        ctx.device.queue.writeBuffer(bufs.w, 0, values.subarray(r0 * n, (r0 + cr) * n));
        const builder = new DispatchBuilder(ctx);
        try {
          const d: Dispatch[] = [];
          for (let j0 = 0; j0 < n; j0 += gs) {
            if (low) {
              const f = { h: this.hg as GPUBuffer, vsb: this.vsb as GPUBuffer, n, tp };
              lowRankGroupUpdate(builder, d, bufs, f, cr, j0, gs);
            } else {
              denseGroupUpdate(builder, d, bufs, this.main, n, cr, j0, gs);
            }
            // V_km and V_mm as gptq_quant reads them: L[n−1−k, n−1−m] (dense), or the low-rank
            // blocks at k·B + m − b0 (block start b0, width B) and vdiag[m].
            const b0 = j0 - (j0 % LOW_RANK_BLOCK);
            d.push(
              gptqQuant(builder, {
                w: bufs.w,
                v: low ? (this.vsb as GPUBuffer) : this.main,
                acc: bufs.acc,
                codes: bufs.codes,
                qp: bufs.qp,
                dead: this.dead,
                status: this.status,
                vd: low ? (this.vdiag as GPUBuffer) : this.main,
                format,
                rows: cr,
                n,
                j0,
                rowStart: r0,
                vOff: low ? -b0 : (n - 1) * n + (n - 1),
                vSk: low ? LOW_RANK_BLOCK : -n,
                vSm: low ? 1 : -1,
                dOff: low ? 0 : (n - 1) * (n + 1),
                dSk: low ? 1 : -(n + 1),
              }),
            );
            if (low && (j0 + gs) % LOW_RANK_BLOCK === 0 && j0 + gs < n) {
              carryLowRankBlock(builder, d, bufs, { a: this.main, n, tp }, cr, b0);
            }
          }
          runDispatches(ctx, d);
          const codes = new Uint32Array(await ctx.read(bufs.codes, 0, (cr * n) / 2));
          const qp = new Uint32Array(await ctx.read(bufs.qp, 0, 8 * cr * groups));
          unpackGptqQuant(out, codes, qp, r0, cr);
        } finally {
          builder.destroy();
        }
      }
      throwOnStatus(new Uint32Array(await ctx.read(this.status, 0, STATUS_WORDS * 4)));
      return out;
    } finally {
      made.destroyAll();
    }
  }

  destroy(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    for (const buf of [this.main, this.hg, this.vsb, this.vdiag, this.dead, this.status]) {
      if (buf) this.ctx.destroyBuffer(buf);
    }
  }
}

/**
 * `quantizeGptq` on the GPU for one matrix: factors H (given, or from the activations), quantizes,
 * frees everything. To quantize several matrices with one input, use GptqGpuSolver directly.
 */
export async function quantizeGptqGpu(
  ctx: GpuContext,
  values: Float32Array,
  rows: number,
  cols: number,
  format: Q4Format,
  source: GptqHessianSource,
  opts: GptqGpuOptions = {},
): Promise<Q4Matrix> {
  checkQ4Shape(rows, cols, format);
  const solver = await GptqGpuSolver.create(ctx, cols, source, opts);
  try {
    return await solver.quantize(values, rows, format);
  } finally {
    solver.destroy();
  }
}
