/**
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
 * and with T ≪ K its factor has a compact form (see `lowRankFactor`), 2·K·T² to build and
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
 * rank: two thin ones, see `lowRankGroup`), and gptq_quant, one thread per row, which chooses the
 * group's scale and zero point, quantizes its columns and propagates the error within it. The lazy
 * batch is the group itself, so a group's parameters need nothing from inside a batch. All of a
 * matrix goes into one command buffer, with no readback in between; codes, scales and zero points
 * are read back once, with a status word that carries every failure.
 *
 * Semantics kept from the CPU solver: group parameters by round-to-nearest on the compensated
 * weights (the `clip` search stays CPU-only), dead columns zeroed, damping relative to H's mean
 * diagonal, no act-order (groups are contiguous in K), the same errors. Results differ from the
 * float64 solver only by rounding (f32 factor and sums), which can flip a code at a rounding tie;
 * test/quant/gptq-gpu.test.ts bounds that and the output error against the reference.
 *
 * Needs subgroups of at least 8 lanes (gptq_gemm and gptq_quant broadcast through them, as the
 * matmul GEMM does) and, for the dense factorization, the K×K factor in one storage buffer (4·K²
 * bytes); `gptqGpuUnsupported` says when a device cannot, and `kiln quantize` then falls back to
 * the CPU solver. Rows are split into chunks that fit.
 */
import { DeviceMemoryError } from '../errors.js';
import { formatBytes, storageUsage, type GpuContext } from '../gpu/device.js';
import { DispatchBuilder, runDispatches, type Dispatch } from '../gpu/dispatch.js';
import { hoistEnables, linearGrid, MAX_GRID, packParams, shaderSource } from './shader.js';
import { gemmUsable } from './matmul.js';
import { checkQ4Shape, type Q4Format, type Q4Matrix } from '../quant/q4.js';

/** Buffers made for one solve or solver: freed together when it fails or ends. */
class BufferSet {
  private readonly made = new Set<GPUBuffer>();
  constructor(private readonly ctx: GpuContext) {}

  create(label: string, size: number): GPUBuffer {
    const buf = this.ctx.createBuffer(label, size, storageUsage());
    this.made.add(buf);
    return buf;
  }

  destroy(buf: GPUBuffer): void {
    if (this.made.delete(buf)) this.ctx.destroyBuffer(buf);
  }

  destroyAll(): void {
    for (const buf of this.made) this.ctx.destroyBuffer(buf);
    this.made.clear();
  }
}

/** Status bits (status[0]) set by the shaders. */
const FLAG_BAD_DIAGONAL = 1;
const FLAG_NOT_PD = 2;
const FLAG_F16_OVERFLOW = 4;
/** u32s of the status buffer: flags, first row whose f16 scale overflows, 2 unused. */
const STATUS_WORDS = 4;

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
/** Panel width of the factorization (gptq_chol's workgroup-memory block is 64 × 64 f32). */
const PANEL = 64;
/** gptq_quant keeps a group's x and e in private arrays of this size. */
const MAX_GROUP = 128;
/**
 * Columns between two updates of the low-rank sweep's s (a multiple of every group size). Measured
 * on lavapipe, down_proj at K = 4864: updating s after every group of 32 took about half of a
 * 1.7–1.9 s sweep (each update rewrites the whole [rows, T] s for 32 columns of work); every 128
 * columns, the sweep took 1.3–1.65 s (64 and 256: within the noise of 128).
 */
const LOW_RANK_BLOCK = 128;

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

/** Dense Cholesky of H on the GPU, or the low-rank recurrence of H = λI + AᵀA (see below). */
export type GptqFactorization = 'dense' | 'lowRank';

/** Where H comes from: the caller's float64 H (as `quantizeGptq` takes it), or the activations. */
export type GptqHessianSource =
  | { hessian: Float64Array }
  /** Row-major [tokens, cols] batches of the matrix's inputs, one token per row. */
  | { activations: readonly { x: Float32Array; tokens: number }[] };

/** The largest buffer the solve may bind. */
function bindLimit(ctx: GpuContext): number {
  return Math.min(ctx.limits.maxStorageBufferBindingSize, ctx.limits.maxBufferSize);
}

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

/** Arguments of one gptq_gemm (see shaders/gptq_gemm.wgsl); strides may be negative. */
interface GemmArgs {
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
const u32 = (v: number): number => {
  if (!Number.isInteger(v) || v < -0x80000000 || v > 0xffffffff)
    throw new RangeError(`gptq_gemm: index ${v}`);
  return v >>> 0;
};

function gemm(b: DispatchBuilder, g: GemmArgs): Dispatch {
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

function checkOptions(opts: GptqGpuOptions): number {
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

/**
 * R = J·H·J in f32 (lower triangle, row-major), symmetrised from both triangles of a float64 H,
 * with the CPU solver's checks and messages. The diagonal is H's own (gptq_damp fixes it).
 */
function reversedHessian(h: Float64Array, n: number): Float32Array {
  if (h.length !== n * n) {
    throw new RangeError(`GPTQ: Hessian has ${h.length} values, expected ${n}×${n}`);
  }
  const r = new Float32Array(n * n);
  for (let i = 0; i < n; i++) {
    const hii = h[i * n + i] as number;
    if (!Number.isFinite(hii) || hii < 0) {
      throw new RangeError(`GPTQ: Hessian diagonal ${hii} at ${i} must be finite and ≥ 0`);
    }
  }
  for (let a = 0; a < n; a++) {
    const i = n - 1 - a;
    for (let b = 0; b < a; b++) {
      const j = n - 1 - b;
      const v = 0.5 * ((h[i * n + j] as number) + (h[j * n + i] as number));
      if (!Number.isFinite(v)) throw new RangeError(`GPTQ: non-finite Hessian entry at ${i}, ${j}`);
      r[a * n + b] = v;
    }
    r[a * n + a] = h[i * n + i] as number;
  }
  return r;
}

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
interface LowRankFactor {
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

function lowRankFactor(
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

function countTokens(batches: readonly { x: Float32Array; tokens: number }[], n: number): number {
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

/** Per-chunk buffers of the sweep. */
interface SweepBuffers {
  w: GPUBuffer;
  acc: GPUBuffer;
  codes: GPUBuffer;
  qp: GPUBuffer;
  s: GPUBuffer | null;
}

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
      return GptqGpuSolver.createLowRank(ctx, n, lowRankFactor(source.activations, n, dampPercent));
    }
    return GptqGpuSolver.createDense(ctx, n, source, dampPercent);
  }

  private static async createLowRank(ctx: GpuContext, n: number, f: LowRankFactor): Promise<GptqGpuSolver> {
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
          gemm(builder, {
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
      return new GptqGpuSolver(
        ctx,
        n,
        'lowRank',
        bufs.a,
        bufs.h,
        bufs.vsb,
        bufs.vdiag,
        bufs.dead,
        bufs.status,
        f.tp,
      );
    } catch (e) {
      made.destroyAll();
      throw e;
    } finally {
      builder.destroy();
    }
  }

  private static async createDense(
    ctx: GpuContext,
    n: number,
    source: GptqHessianSource,
    dampPercent: number,
  ): Promise<GptqGpuSolver> {
    let xt: ReturnType<typeof transposedActivations> | null = null;
    let r: Float32Array | null = null;
    if ('hessian' in source) {
      r = reversedHessian(source.hessian, n);
    } else {
      xt = transposedActivations(source.activations, n, bindLimit(ctx));
    }
    const made = new BufferSet(ctx);
    const builder = new DispatchBuilder(ctx);
    try {
      const bufs = await ctx.guardAllocation(`the GPTQ Hessian (${n}×${n})`, 4 * n * n, () => ({
        l: made.create(`gptq.hessian[${n}]`, 4 * n * n),
        dead: made.create('gptq.dead', 4 * n),
        status: made.create('gptq.status', STATUS_WORDS * 4),
        xt: xt ? made.create('gptq.activations', 4 * n * xt.chunk) : null,
        upd: made.create('gptq.panel', 4 * n * PANEL),
      }));
      ctx.device.queue.writeBuffer(bufs.status, 0, new Uint32Array([0, 0xffffffff, 0, 0]));
      if (r) ctx.device.queue.writeBuffer(bufs.l, 0, r);
      if (xt && bufs.xt) {
        // H = (2/T)·Σ_t x_t x_tᵀ, written as R(n−1−i, n−1−j) for i ≤ j (R's lower triangle), one
        // product per chunk of tokens, each in its own submit so the chunk buffer can be reused.
        const chunkData = new Float32Array(n * xt.chunk);
        for (let t0 = 0; t0 < xt.tokens; t0 += xt.chunk) {
          const tw = Math.min(xt.chunk, xt.tokens - t0);
          for (let k = 0; k < n; k++) {
            chunkData.set(xt.data.subarray(k * xt.tokens + t0, k * xt.tokens + t0 + tw), k * xt.chunk);
            chunkData.fill(0, k * xt.chunk + tw, (k + 1) * xt.chunk);
          }
          ctx.device.queue.writeBuffer(bufs.xt, 0, chunkData);
          runDispatches(ctx, [
            gemm(builder, {
              a: bufs.xt,
              b: bufs.xt,
              c: bufs.l,
              na: n,
              nb: n,
              kend: Math.ceil(tw / 8) * 8,
              aOff: 0,
              aSa: xt.chunk,
              aSk: 1,
              bOff: 0,
              ldb: xt.chunk,
              cOff: (n - 1) * n + (n - 1),
              cSa: -n,
              cSb: -1,
              alpha: 2 / xt.tokens,
              accumulate: t0 > 0,
              lower: true,
            }),
          ]);
        }
      }
      const d: Dispatch[] = [
        builder.make(
          'gptq_damp',
          () => shaderSource('gptq_damp'),
          packParams([
            ['u32', n],
            ['f32', dampPercent],
          ]),
          [bufs.l, bufs.dead, bufs.status],
          [1, 1, 1],
        ),
      ];
      for (let p0 = 0; p0 < n; p0 += PANEL) {
        const w = Math.min(PANEL, n - p0);
        // upd = −L[p0:, <p0]·L[panel, <p0]ᵀ (the rows' columns before the panel; gptq_chol adds R).
        if (p0 > 0) {
          d.push(
            gemm(builder, {
              a: bufs.l,
              b: bufs.l,
              c: bufs.upd,
              na: w,
              nb: n - p0,
              kend: p0,
              aOff: p0 * n,
              aSa: n,
              aSk: 1,
              bOff: p0 * n,
              ldb: n,
              cOff: 0,
              cSa: 1,
              cSb: PANEL,
              alpha: -1,
              accumulate: false,
              lower: true,
            }),
          );
        }
        const below = n - p0 - w;
        const chol = (mode: number, groups: number) =>
          builder.make(
            'gptq_chol',
            () => shaderSource('gptq_chol'),
            packParams([
              ['u32', n],
              ['u32', p0],
              ['u32', w],
              ['u32', p0 > 0 ? 1 : 0],
              ['u32', mode],
            ]),
            [bufs.l, bufs.upd, bufs.status],
            [groups, 1, 1],
          );
        d.push(chol(0, 1));
        if (below > 0) d.push(chol(1, Math.ceil(below / PANEL)));
      }
      runDispatches(ctx, d);
      // The uniforms and the scratch buffers must outlive the queued work.
      await ctx.device.queue.onSubmittedWorkDone();
      for (const buf of [bufs.xt, bufs.upd]) {
        if (!buf) continue;
        made.destroy(buf);
      }
      return new GptqGpuSolver(ctx, n, 'dense', bufs.l, null, null, null, bufs.dead, bufs.status, 0);
    } catch (e) {
      made.destroyAll();
      throw e;
    } finally {
      builder.destroy();
    }
  }

  /** Dense: acc[r, m] = Σ_{k<j0} e[r, k]·V[k, m] for the group's m, V[k, m] = L[n−1−k, n−1−m]. */
  private denseGroup(
    builder: DispatchBuilder,
    d: Dispatch[],
    bufs: SweepBuffers,
    cr: number,
    j0: number,
    gs: number,
  ): void {
    const n = this.cols;
    d.push(
      gemm(builder, {
        a: this.main,
        b: bufs.w,
        c: bufs.acc,
        na: gs,
        nb: cr,
        kend: j0,
        aOff: (n - 1) * n + (n - 1 - j0),
        aSa: -1,
        aSk: -n,
        bOff: 0,
        ldb: n,
        cOff: 0,
        cSa: 1,
        cSb: gs,
        alpha: 1,
        accumulate: false,
        lower: false,
      }),
    );
  }

  /**
   * Low rank: the same acc as s[r]·h_m, s = Σ_{k<b0} e[r, k]·a_k as of the start b0 of the
   * current block of columns (updated once per block, where it is a read-modify-write of the
   * whole [rows, T] s: per group it cost more than the product), plus the block's columns before
   * the group through the V entries of the block: E[:, b0:j0]·V[b0:j0, group].
   */
  private lowRankGroup(
    builder: DispatchBuilder,
    d: Dispatch[],
    bufs: SweepBuffers,
    cr: number,
    j0: number,
    gs: number,
  ): void {
    const n = this.cols;
    const tp = this.tp;
    const sb = LOW_RANK_BLOCK;
    const b0 = j0 - (j0 % sb);
    d.push(
      gemm(builder, {
        a: this.hg as GPUBuffer,
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
        gemm(builder, {
          a: this.vsb as GPUBuffer,
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
    const flags = (format.symmetric ? 0 : 1) | (format.scaleType === 'f16' ? 2 : 0);
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
          const { gridX, grid } = linearGrid(cr);
          const d: Dispatch[] = [];
          for (let j0 = 0; j0 < n; j0 += gs) {
            if (low) this.lowRankGroup(builder, d, bufs, cr, j0, gs);
            else this.denseGroup(builder, d, bufs, cr, j0, gs);
            // V_km and V_mm as gptq_quant reads them: L[n−1−k, n−1−m] (dense), or the low-rank
            // blocks at k·B + m − b0 (block start b0, width B) and vdiag[m].
            const b0 = j0 - (j0 % LOW_RANK_BLOCK);
            d.push(
              builder.make(
                `gptq_quant_g${gs}`,
                () =>
                  hoistEnables([`const GS: u32 = ${gs}u;`, shaderSource('gptq_quant', 'common/broadcast8')]),
                packParams([
                  ['u32', cr],
                  ['u32', n],
                  ['u32', j0],
                  ['u32', groups],
                  ['u32', flags],
                  ['u32', gridX],
                  ['u32', r0],
                  ['u32', u32(low ? -b0 : (n - 1) * n + (n - 1))],
                  ['u32', u32(low ? LOW_RANK_BLOCK : -n)],
                  ['u32', u32(low ? 1 : -1)],
                  ['u32', u32(low ? 0 : (n - 1) * (n + 1))],
                  ['u32', u32(low ? 1 : -(n + 1))],
                ]),
                [
                  bufs.w,
                  low ? (this.vsb as GPUBuffer) : this.main,
                  bufs.acc,
                  bufs.codes,
                  bufs.qp,
                  this.dead,
                  this.status,
                  low ? (this.vdiag as GPUBuffer) : this.main,
                ],
                grid,
              ),
            );
            if (low && (j0 + gs) % LOW_RANK_BLOCK === 0 && j0 + gs < n) {
              // s[r] += Σ_{k in the block} e[r, k]·a_k, once per block of columns.
              d.push(
                gemm(builder, {
                  a: this.main,
                  b: bufs.w,
                  c: bufs.s as GPUBuffer,
                  na: tp,
                  nb: cr,
                  kend: LOW_RANK_BLOCK,
                  aOff: b0 * tp,
                  aSa: 1,
                  aSk: tp,
                  bOff: b0,
                  ldb: n,
                  cOff: 0,
                  cSa: 1,
                  cSb: tp,
                  alpha: 1,
                  accumulate: b0 > 0,
                  lower: false,
                }),
              );
            }
          }
          runDispatches(ctx, d);
          const codes = new Uint32Array(await ctx.read(bufs.codes, 0, (cr * n) / 2));
          const qp = new Uint32Array(await ctx.read(bufs.qp, 0, 8 * cr * groups));
          const base = r0 * n;
          for (let i = 0; i < codes.length; i++) {
            let word = codes[i] as number;
            for (let j = 0; j < 8; j++) {
              out.codes[base + 8 * i + j] = word & 15;
              word >>>= 4;
            }
          }
          const bits = new Uint32Array(1);
          const asF32 = new Float32Array(bits.buffer);
          for (let i = 0; i < cr * groups; i++) {
            bits[0] = qp[2 * i] as number;
            out.scales[r0 * groups + i] = asF32[0] as number;
            out.zeros[r0 * groups + i] = qp[2 * i + 1] as number;
          }
        } finally {
          builder.destroy();
        }
      }
      const [status = 0, overflowRow = 0] = new Uint32Array(await ctx.read(this.status, 0, STATUS_WORDS * 4));
      if (status & FLAG_BAD_DIAGONAL) {
        throw new RangeError('GPTQ: the Hessian has a negative or non-finite diagonal entry');
      }
      if (status & FLAG_NOT_PD) {
        throw new RangeError(
          'GPTQ: the damped Hessian is not positive definite (or not finite); raise dampPercent',
        );
      }
      if (status & FLAG_F16_OVERFLOW) {
        throw new RangeError(
          `int4 scale of row ${overflowRow} does not fit in f16 (max 65504); use scaleType 'f32'`,
        );
      }
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
 * The activations transposed to [cols, tokens] (k-major, so gptq_gemm reads each column's tokens
 * as vec4s), and the tokens per product: all of them when [cols, tokens] fits one buffer, else
 * chunks of a multiple of 8 that do.
 */
function transposedActivations(
  batches: readonly { x: Float32Array; tokens: number }[],
  n: number,
  limit: number,
): { data: Float32Array; tokens: number; chunk: number } {
  const tokens = countTokens(batches, n);
  const data = new Float32Array(n * tokens);
  let t0 = 0;
  for (const b of batches) {
    for (let t = 0; t < b.tokens; t++) {
      const row = t * n;
      for (let k = 0; k < n; k++) data[k * tokens + t0 + t] = b.x[row + k] as number;
    }
    t0 += b.tokens;
  }
  const fit = Math.floor(limit / (4 * n) / 8) * 8;
  const chunk = Math.min(Math.ceil(tokens / 8) * 8, Math.max(8, fit));
  return { data, tokens, chunk };
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
