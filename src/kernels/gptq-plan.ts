/**
 * What the GPU GPTQ solve (src/kernels/gptq.ts, whose file comment measures the two
 * factorizations) is asked to do and whether this device can: its options and Hessian sources,
 * their checks, the device limits it needs, and the planner that picks the dense or the low-rank
 * factorization by cost and fit.
 */
import { formatBytes, type GpuContext } from '../gpu/device.js';
import { gemmUsable } from './matmul.js';
import { bindLimit } from './gptq-buffers.js';

export interface GptqGpuOptions {
  /** Added to H's diagonal, as a fraction of its mean diagonal (default 0.01), as the CPU solver. */
  dampPercent?: number;
  /** Not supported, as in the CPU solver; only false is accepted. */
  actOrder?: false;
  /** The clipping search is CPU-only (`quantizeGptq`); only false is accepted. */
  clip?: false;
  /** Rows that will be quantized with this Hessian (all matrices together): picks the factorization. */
  rows?: number;
  /** Force a factorization (tests); by default the cheaper one that fits (see `planGptqGpu`). */
  factorization?: GptqFactorization;
}

/** Dense Cholesky of H on the GPU, or the low-rank recurrence of H = λI + AᵀA (gptq-low-rank.ts). */
export type GptqFactorization = 'dense' | 'lowRank';

/** Where H comes from: the caller's float64 H (as `quantizeGptq` takes it), or the activations. */
export type GptqHessianSource =
  | { hessian: Float64Array }
  /** Row-major [tokens, cols] batches of the matrix's inputs, one token per row. */
  | { activations: readonly { x: Float32Array; tokens: number }[] };

/**
 * Why this device cannot run the GPU solve for K = `cols` (one line naming the size and the
 * limit), or null when it can. With `tokens` (the low-rank factorization), the factor is two
 * [cols, tokens] buffers instead of the cols × cols Hessian.
 */
export function gptqGpuUnsupported(
  ctx: GpuContext,
  cols: number,
  tokens: number | null = null,
): string | null {
  if (!gemmUsable(ctx)) {
    return 'the GPU GPTQ solve needs subgroups of at least 8 lanes, which this device lacks';
  }
  const need = tokens === null ? 4 * cols * cols : 4 * cols * (Math.ceil(tokens / 8) * 8);
  const limit = bindLimit(ctx);
  if (need > limit) {
    const what = tokens === null ? `the ${cols}×${cols} Hessian` : `the ${cols}×${tokens} factor`;
    const name =
      ctx.limits.maxStorageBufferBindingSize <= ctx.limits.maxBufferSize
        ? 'maxStorageBufferBindingSize'
        : 'maxBufferSize';
    return `the GPU GPTQ solve keeps ${what} in one buffer of ${formatBytes(need)}, over this device's ${name} of ${formatBytes(limit)}`;
  }
  if (ctx.limits.maxStorageBuffersPerShaderStage < 8 || ctx.limits.maxComputeWorkgroupStorageSize < 16384) {
    return 'the GPU GPTQ solve needs 8 storage buffers per stage and 16 KiB of workgroup memory';
  }
  return null;
}

/** The damping fraction of `opts`, after refusing what the GPU solve does not do. */
export function checkOptions(opts: GptqGpuOptions): number {
  if ((opts.actOrder as boolean | undefined) === true) {
    throw new RangeError('GPTQ act-order is not supported: int4 groups must be contiguous in K');
  }
  if ((opts.clip as boolean | undefined) === true) {
    throw new RangeError(
      'the GPU GPTQ solve chooses group parameters by round to nearest; clip runs on the CPU solver',
    );
  }
  const dampPercent = opts.dampPercent ?? 0.01;
  if (!(dampPercent >= 0) || !Number.isFinite(dampPercent)) {
    throw new RangeError(`GPTQ dampPercent ${dampPercent} must be finite and ≥ 0`);
  }
  return dampPercent;
}

/** Tokens in all the activation batches, each checked against K = n. */
export function countTokens(batches: readonly { x: Float32Array; tokens: number }[], n: number): number {
  let tokens = 0;
  for (const b of batches) {
    if (!Number.isInteger(b.tokens) || b.tokens < 1 || b.x.length !== b.tokens * n) {
      throw new RangeError(`activations: ${b.x.length} values for a [${b.tokens}, ${n}] batch`);
    }
    tokens += b.tokens;
  }
  if (tokens === 0) throw new RangeError('GPTQ: no calibration activations');
  return tokens;
}

/**
 * Which factorization to use for K = n with T calibration tokens (null: a caller's H, dense
 * only) and `rows` rows to quantize with it: the one with fewer multiply-adds, a CPU one (the
 * low-rank recurrence, scalar JavaScript) counted `cpuCost` GPU ones (see `cpuCostOf`).
 *   dense: n³/6 (factor) + rows·n²/2 (lazy updates) + n²·T/2 (Hessian);
 *   low rank: cpuCost·2·n·T² (recurrence) + rows·2·n·T (two thin products per group).
 * On lavapipe at Qwen2.5-0.5B shapes and T = 260 that is low rank for down_proj (K = 4864, 10×
 * fewer) and dense for K = 896 (gate_up's 9728 rows make the lazy updates the larger part either
 * way); on a hardware GPU, dense.
 */
export function pickFactorization(
  n: number,
  tokens: number | null,
  rows: number,
  cpuCost = CPU_ADAPTER_COST,
): GptqFactorization {
  if (tokens === null) return 'dense';
  const dense = n ** 3 / 6 + (rows * n * n) / 2 + (n * n * tokens) / 2;
  const lowRank = cpuCost * 2 * n * tokens * tokens + 2 * rows * n * tokens;
  return lowRank < dense ? 'lowRank' : 'dense';
}

/**
 * A multiply-add of the CPU recurrence in units of gptq_gemm's. Measured: on lavapipe (2 cores)
 * the recurrence ran 0.5–0.7·10⁹ multiply-adds/s against gptq_gemm's 2–3·10⁹, a ratio of 3–5;
 * on an H100 (Dawn, Vulkan) down_proj at K = 4864 factored densely in 0.07–0.19 s against 0.8–1.2 s
 * for the recurrence alone, so there the CPU side is counted 1000×, and dense always wins where
 * it fits.
 */
const CPU_ADAPTER_COST = 3;
const GPU_ADAPTER_COST = 1000;

/** `pickFactorization`'s cpuCost for this adapter: software rasterizers run on the CPU too. */
function cpuCostOf(ctx: GpuContext): number {
  const a = ctx.adapter;
  const cpu =
    a.architecture === 'software' || /llvmpipe|lavapipe|swiftshader/i.test(`${a.description} ${a.device}`);
  return cpu ? CPU_ADAPTER_COST : GPU_ADAPTER_COST;
}

/**
 * The factorization the GPU solve will use for K = `cols`, T = `tokens` (null: a caller's H) and
 * `rows` rows, or why it cannot run: the cheaper one (`pickFactorization`) where it fits, else
 * the other one where that fits.
 */
export function planGptqGpu(
  ctx: GpuContext,
  cols: number,
  tokens: number | null,
  rows: number,
): { factorization: GptqFactorization } | { reason: string } {
  const first = pickFactorization(cols, tokens, rows, cpuCostOf(ctx));
  const order: GptqFactorization[] =
    tokens === null ? ['dense'] : first === 'dense' ? ['dense', 'lowRank'] : ['lowRank', 'dense'];
  let reason = '';
  for (const f of order) {
    const why = gptqGpuUnsupported(ctx, cols, f === 'lowRank' ? tokens : null);
    if (!why) return { factorization: f };
    reason ||= why;
  }
  return { reason };
}
