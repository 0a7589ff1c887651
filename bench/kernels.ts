/**
 * Kernel microbenchmarks (`kiln bench kernels`): every kernel at real model layer shapes, timed on
 * the GPU (timestamps where the adapter has them, wall clock otherwise; warm-up, then the median of
 * repeated runs), each result checked against its float64 CPU reference, and each figure put next
 * to the adapter's measured streaming-read bandwidth (the roofline of memory-bound decode).
 * Runs on any GpuContext, so the same code can benchmark a browser's adapter.
 */
import { decodeToFloat32, encodeFromFloat32 } from '../src/io/dtype.js';
import { storageUsage, type AdapterSummary, type GpuContext } from '../src/gpu/device.js';
import { GpuTimer } from '../src/gpu/timer.js';
import type { ActivationFormat } from '../src/kernels/activation.js';
import { argmax } from '../src/kernels/argmax.js';
import { DispatchBuilder, runDispatches, type Dispatch } from '../src/gpu/dispatch.js';
import { argmaxRef } from '../src/kernels/argmax.ref.js';
import { rmsnormRef } from '../src/kernels/rmsnorm.ref.js';
import { GEMM_MIN_M, gemmUsable, matmul, type MatmulVariant } from '../src/kernels/matmul.js';
import { residualAdd } from './baselines/residual-add.js';
import { rmsnorm } from '../src/kernels/rmsnorm.js';
import { rmsnormFused } from './baselines/rmsnorm-fused.js';
import { streamRead } from './baselines/stream-read.js';
import { tileMatrix, wordsPerRow, type GpuWeight, type WeightFormat } from '../src/kernels/tiled.js';
import { BENCH_MODELS, type BenchModel } from './shapes.js';
import { randomF32 } from '../src/kernels/random.js';

export interface BenchRow {
  kernel: string;
  variant: string;
  shape: Record<string, number | string>;
  /** Median GPU milliseconds. */
  ms: number;
  /** Bytes the kernel must move (weights, caches, activations) per millisecond, in GB/s. */
  gbps: number;
  gflops: number;
  /** gbps / bandwidth_gbps. */
  roofline_fraction: number;
  /** Worst error against the float64 reference, relative to the kernel's natural scale. */
  max_rel_err: number;
  /** max_rel_err is within the kernel's stated error bound. */
  ok: boolean;
}

export interface BenchReport {
  adapter: AdapterSummary;
  timer: 'timestamp' | 'wall';
  bandwidth_gbps: number;
  rows: BenchRow[];
  /** Tokens/s bound = bandwidth / bytes read per decoded token, per benchmark model. */
  bounds: { model: string; weights: string; bytes_per_token: number; tokens_per_s_bound: number }[];
}

export interface BenchOptions {
  /** Fewer shapes and repetitions (a smoke run). */
  quick?: boolean;
  /** Extra rows from other kernel families, by name, run after the built-in ones. */
  extra?: Record<string, BenchSuite>;
  /**
   * Run only these suites (names: `matmul`, `rmsnorm`, `argmax` and the extras'); stream_read, the
   * roofline every row is measured against, always runs.
   */
  only?: readonly string[];
  onRow?: (row: BenchRow) => void;
}

/** A family of benchmark cases; `run` appends rows through `ctx.add`. */
export type BenchSuite = (b: BenchContext) => Promise<void>;

/** Shared plumbing of the suites: buffers, timing, medians, the bandwidth figure. */
export class BenchContext {
  readonly rows: BenchRow[] = [];
  readonly timer: GpuTimer;
  readonly reps: number;
  bandwidthGbps = 0;
  private readonly owned: GPUBuffer[] = [];

  constructor(
    readonly ctx: GpuContext,
    readonly opts: BenchOptions,
  ) {
    this.timer = new GpuTimer(ctx);
    this.reps = opts.quick ? 5 : 9;
  }

  buffer(bytes: number, label = 'bench'): GPUBuffer {
    const b = this.ctx.createBuffer(label, Math.max(16, Math.ceil(bytes / 4) * 4), storageUsage());
    this.owned.push(b);
    return b;
  }

  upload(data: Float32Array | Uint32Array | Uint8Array, label = 'bench'): GPUBuffer {
    const b = this.buffer(data.byteLength, label);
    const bytes = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    const padded = bytes.byteLength % 4 === 0 ? bytes : new Uint8Array(Math.ceil(bytes.byteLength / 4) * 4);
    if (padded !== bytes) padded.set(bytes);
    this.ctx.device.queue.writeBuffer(b, 0, padded);
    return b;
  }

  async readF32(buf: GPUBuffer, elems: number): Promise<Float32Array> {
    return new Float32Array(await this.ctx.read(buf, 0, elems * 4));
  }

  /** Takes ownership of a buffer made elsewhere (freed with the others). */
  adopt(buf: GPUBuffer): void {
    this.owned.push(buf);
  }

  /** Frees the buffers made since `mark` (suites free as they go: big weights add up). */
  freeSince(mark: number): void {
    for (const b of this.owned.splice(mark)) this.ctx.destroyBuffer(b);
  }

  get mark(): number {
    return this.owned.length;
  }

  /** Median GPU ms of `dispatches` (run as one group), after two warm-up runs. */
  async time(label: string, dispatches: readonly Dispatch[]): Promise<number> {
    const group = { label, dispatches };
    await this.timer.time([group, group]);
    const ms = await this.timer.time(Array.from({ length: this.reps }, () => group));
    ms.sort((a, b) => a - b);
    return ms[Math.floor(ms.length / 2)] as number;
  }

  add(row: Omit<BenchRow, 'gbps' | 'gflops' | 'roofline_fraction'> & { bytes: number; flops: number }): void {
    const { bytes, flops, ...rest } = row;
    const gbps = bytes / row.ms / 1e6;
    const full: BenchRow = {
      ...rest,
      ms: round(row.ms, 4),
      gbps: round(gbps, 3),
      gflops: round(flops / row.ms / 1e6, 3),
      roofline_fraction: this.bandwidthGbps > 0 ? round(gbps / this.bandwidthGbps, 3) : 0,
      max_rel_err: Number(row.max_rel_err.toPrecision(3)),
    };
    this.rows.push(full);
    this.opts.onRow?.(full);
  }

  destroy(): void {
    this.freeSince(0);
    this.timer.destroy();
  }
}

function round(x: number, digits: number): number {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

/** Runs every suite and returns the report. */
export async function benchKernels(ctx: GpuContext, opts: BenchOptions = {}): Promise<BenchReport> {
  const b = new BenchContext(ctx, opts);
  try {
    const suites: Record<string, BenchSuite> = {
      matmul: matmulSuite,
      rmsnorm: rmsnormSuite,
      argmax: argmaxSuite,
      ...opts.extra,
    };
    const unknown = (opts.only ?? []).filter((name) => !(name in suites));
    if (unknown.length > 0) {
      throw new RangeError(
        `bench kernels: no suite ${unknown.join(', ')} (suites: ${Object.keys(suites).join(', ')})`,
      );
    }
    b.bandwidthGbps = await measureBandwidth(b);
    for (const [name, suite] of Object.entries(suites)) {
      if (!opts.only || opts.only.includes(name)) await suite(b);
    }
    return {
      adapter: ctx.adapter,
      timer: b.timer.source,
      bandwidth_gbps: round(b.bandwidthGbps, 3),
      rows: b.rows,
      bounds: BENCH_MODELS.flatMap((m) =>
        (['bf16', 'q4'] as const).map((w) => {
          const bytes = bytesPerToken(m, w);
          return {
            model: m.name,
            weights: w === 'q4' ? 'int4 g32 (f16 scales), f16 embeddings' : 'bf16',
            bytes_per_token: bytes,
            tokens_per_s_bound: round((b.bandwidthGbps * 1e9) / bytes, 1),
          };
        }),
      ),
    };
  } finally {
    b.destroy();
  }
}

/**
 * The adapter's achievable read bandwidth: stream_read over the largest buffer one binding allows
 * (capped at 256 MiB; 64 MiB in a quick run), far larger than any cache.
 */
async function measureBandwidth(b: BenchContext): Promise<number> {
  const cap = b.opts.quick ? 64 << 20 : 256 << 20;
  const bytes = Math.min(cap, b.ctx.limits.maxStorageBufferBindingSize) & ~15;
  const mark = b.mark;
  const src = b.upload(new Uint8Array(bytes).fill(7));
  const sink = b.buffer(16);
  const builder = new DispatchBuilder(b.ctx);
  try {
    const d = streamRead(builder, { src, sink, words: bytes / 16 });
    // Achievable bandwidth: the best of three medians (a shared or throttling machine only ever
    // makes a round slower, never faster than the memory system allows).
    let ms = Infinity;
    for (let round = 0; round < 3; round++) ms = Math.min(ms, await b.time('stream_read', [d]));
    b.bandwidthGbps = bytes / ms / 1e6;
    b.add({
      kernel: 'stream_read',
      variant: 'stream_read',
      shape: { bytes },
      ms,
      bytes,
      flops: 0,
      max_rel_err: 0,
      ok: true,
    });
    return b.bandwidthGbps;
  } finally {
    builder.destroy();
    b.freeSince(mark);
  }
}

/** Bytes of weights (and nothing else: the KV cache is small at short context) per decoded token. */
export function bytesPerToken(m: BenchModel, weights: 'bf16' | 'q4'): number {
  const linear = m.layers * m.linears.reduce((a, l) => a + l.n * l.k, 0);
  const embedBytes = m.vocab * m.hidden * 2;
  // LM head read once per token; the embedding row is negligible (tied or not).
  if (weights === 'bf16') return linear * 2 + embedBytes;
  return linear * (0.5 + 2 / 32) + embedBytes;
}

/** Encodes f32 values to a weight format and returns the bytes and the values as stored. */
export function encodeWeight(
  values: Float32Array,
  format: WeightFormat,
): { bytes: Uint8Array; seen: Float32Array } {
  const dtype = DTYPE[format];
  const bytes = encodeFromFloat32(dtype, values);
  return { bytes, seen: decodeToFloat32(dtype, bytes) };
}

const DTYPE = { f32: 'F32', f16: 'F16', bf16: 'BF16' } as const;

/**
 * Worst |y − ref| / Σ|x||w| over the checked outputs: the error relative to the dot product's own
 * scale, which the f32 summation bound γ_(k+4) ≈ (k+4)·2⁻²⁴ holds for any data.
 */
export function matmulError(
  y: Float32Array,
  x: Float32Array,
  w: Float32Array,
  m: number,
  n: number,
  k: number,
  cols: readonly number[],
  post?: (g: number, row: number, col: number) => number,
): number {
  let worst = 0;
  for (let i = 0; i < m; i++) {
    for (const j of cols) {
      let s = 0;
      let a = 0;
      for (let t = 0; t < k; t++) {
        const p = (x[i * k + t] as number) * (w[j * k + t] as number);
        s += p;
        a += Math.abs(p);
      }
      const want = post ? post(s, i, j) : s;
      const err = Math.abs((y[i * n + j] as number) - want) / (a || 1);
      worst = Math.max(worst, err);
    }
  }
  return worst;
}

/** Output columns to check: all for small problems, an even spread of 97 otherwise. */
export function checkedColumns(m: number, n: number, k: number): number[] {
  if (m * n * k <= 1 << 25) return Array.from({ length: n }, (_, j) => j);
  return Array.from({ length: 97 }, (_, i) => Math.floor((i * (n - 1)) / 96));
}

/** A tiled weight in one buffer (benchmark shapes fit one binding). */
export function benchWeight(
  b: BenchContext,
  values: Float32Array,
  n: number,
  k: number,
  format: WeightFormat,
) {
  const { bytes, seen } = encodeWeight(values, format);
  const buffer = b.upload(tileMatrix(bytes, n, k, format));
  const weight: GpuWeight = {
    name: 'bench',
    format,
    rows: n,
    cols: k,
    parts: [{ buffer, rowStart: 0, rows: n }],
  };
  return { weight, seen };
}

async function matmulSuite(b: BenchContext): Promise<void> {
  // M = 64: a prefill chunk's shape, where the GEMM is the default (the flat kernel next to it).
  const ms = b.opts.quick ? [1] : [1, 4, 16, 64];
  const formats: WeightFormat[] = b.opts.quick ? ['f16', 'f32'] : ['f16', 'bf16', 'f32'];
  for (const model of BENCH_MODELS) {
    for (const lin of model.linears) {
      for (const format of formats) {
        const mark = b.mark;
        const values = randomF32(lin.n * lin.k, lin.n + lin.k, 0.05);
        const { weight, seen } = benchWeight(b, values, lin.n, lin.k, format);
        for (const m of ms) {
          const x = randomF32(m * lin.k, m + 3);
          const xb = b.upload(x);
          const y = b.buffer(m * lin.n * 4);
          const ph = b.buffer(4);
          // At M = 1 every rows-per-thread variant is measured (the "best f32 variant" the int4
          // kernel is compared with) and, where the GEMM runs, its one-row decode tile (a tuner
          // candidate that lavapipe picks); otherwise the one the engine would pick, and where that
          // is the GEMM, the flat kernel as well.
          const variants: MatmulVariant[] = m === 1 ? [{ r: 1 }, { r: 2 }, { r: 4 }] : [{}];
          if (m === 1 && gemmUsable(b.ctx)) variants.push({ tm: 1, tn: 4, wg: 32 });
          if (m >= GEMM_MIN_M && gemmUsable(b.ctx)) variants.push({ path: 'flat' });
          const cases: { variant: MatmulVariant; xFormat: ActivationFormat }[] = variants.map((variant) => ({
            variant,
            xFormat: 'f32',
          }));
          // f16 activations (X stored as f16) where the adapter has shader-f16: the default variant.
          if (b.ctx.adapter.shaderF16 && format === 'f16' && !b.opts.quick)
            cases.push({ variant: {}, xFormat: 'f16' });
          for (const { variant, xFormat } of cases) {
            const builder = new DispatchBuilder(b.ctx);
            // X as the kernel sees it: f16-rounded for the f16 variant (the reference uses the same).
            const xSeen = xFormat === 'f16' ? encodeWeight(x, 'f16').seen : x;
            const xBuf = xFormat === 'f16' ? b.upload(encodeWeight(x, 'f16').bytes) : xb;
            const d = matmul(builder, {
              x: xBuf,
              weight,
              y,
              m,
              placeholder: ph,
              variant,
              xFormat,
            });
            const label = (d[0] as Dispatch).label;
            const t = await b.time(label, d);
            const out = await b.readF32(y, m * lin.n);
            const err = matmulError(out, xSeen, seen, m, lin.n, lin.k, checkedColumns(m, lin.n, lin.k));
            b.add({
              kernel: `matmul_${format}`,
              variant: label,
              shape: { model: model.name, layer: lin.name, m, n: lin.n, k: lin.k },
              ms: t,
              bytes:
                lin.n * wordsPerRow(lin.k, format) * 16 +
                m * (lin.k * (xFormat === 'f16' ? 2 : 4) + lin.n * 4),
              flops: 2 * m * lin.n * lin.k,
              max_rel_err: err,
              ok: err <= (lin.k + 4) * 2 ** -24,
            });
            builder.destroy();
          }
        }
        b.freeSince(mark);
      }
    }
  }
}

async function rmsnormSuite(b: BenchContext): Promise<void> {
  for (const model of BENCH_MODELS) {
    for (const m of b.opts.quick ? [1] : [1, 16]) {
      const mark = b.mark;
      const h = model.hidden;
      const x0 = randomF32(m * h, 5);
      const delta = randomF32(m * h, 6);
      const w = randomF32(h, 7);
      const sum = x0.map((v, i) => v + (delta[i] as number));
      const eps = 1e-5;
      const want = rmsnormRef(sum, w, m, h, eps);
      const x = b.upload(x0);
      const d = b.upload(delta);
      const wb = b.upload(w);
      const y = b.buffer(m * h * 4);
      const rows = b.upload(Uint32Array.from({ length: m }, (_, i) => i));
      const builder = new DispatchBuilder(b.ctx);
      const cases: [string, Dispatch[], number][] = [
        // Fused: read x, delta, w; write x, y.
        ['rmsnorm_fused', [rmsnormFused(builder, { x, delta: d, weight: wb, y, m, hidden: h, eps })], 5],
        // Unfused: add (read 2, write 1), then norm (read x twice, w, write y).
        [
          'rmsnorm_unfused',
          [
            residualAdd(builder, { x, delta: d, count: m * h }),
            rmsnorm(builder, { x, weight: wb, rows, y, m, hidden: h, eps }),
          ],
          7,
        ],
      ];
      for (const [kernel, ds, passes] of cases) {
        b.ctx.device.queue.writeBuffer(x, 0, x0);
        const t = await b.time(kernel, ds);
        // Correctness of one application from a fresh x (timing reps kept adding delta).
        b.ctx.device.queue.writeBuffer(x, 0, x0);
        runDispatches(b.ctx, ds);
        const out = await b.readF32(y, m * h);
        let err = 0;
        want.forEach((v, i) => {
          err = Math.max(err, Math.abs((out[i] as number) - v) / (Math.abs(v) || 1));
        });
        b.add({
          kernel,
          variant: ds.map((x) => x.label).join('+'),
          shape: { model: model.name, m, hidden: h },
          ms: t,
          bytes: passes * m * h * 4,
          flops: 4 * m * h,
          max_rel_err: err,
          ok: err <= ((Math.ceil(h / 64) + 64) / 2 + 10) * 2 ** -24,
        });
      }
      builder.destroy();
      b.freeSince(mark);
    }
  }
}

async function argmaxSuite(b: BenchContext): Promise<void> {
  for (const model of BENCH_MODELS) {
    const mark = b.mark;
    const v = model.vocab;
    const logits = randomF32(v, 9, 10);
    const lb = b.upload(logits);
    const ids = b.buffer(4);
    const builder = new DispatchBuilder(b.ctx);
    const t = await b.time('argmax', [argmax(builder, { logits: lb, ids, rows: 1, n: v })]);
    const got = new Uint32Array(await b.ctx.read(ids, 0, 4))[0] as number;
    const best = argmaxRef(logits);
    b.add({
      kernel: 'argmax',
      variant: 'argmax',
      shape: { model: model.name, vocab: v },
      ms: t,
      bytes: v * 4,
      flops: v,
      max_rel_err: got === best ? 0 : 1,
      ok: got === best,
    });
    builder.destroy();
    b.freeSince(mark);
  }
}
