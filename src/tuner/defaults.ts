/**
 * Kernel defaults per adapter class: what an untuned engine runs. The kernels' own shape rules were
 * fitted on one CPU adapter at batch shapes; at M = 1 the tuner found other variants 1.3-2.4x
 * faster on that same adapter, and a GPU wants yet others. So each class of adapter gets a small
 * row of choices (by kernel and M bucket), measured on an adapter of the class; a class key whose
 * row choice is not a candidate here (a variant this adapter cannot build, a chunk longer than the
 * context) keeps the kernel's rule. The tuner starts from these defaults (candidate 0) and keeps a
 * candidate only when it beats them.
 */
import type { AdapterSummary } from '../gpu/device.js';
import type { MatmulVariant } from '../kernels/matmul.js';
import type { Q4Variant } from '../kernels/matmul-q4.js';
import type { GgufVariant } from '../kernels/matmul-gguf.js';
import { contextBucket, KernelChoices, type KernelChoice, type MClass } from './choices.js';
import { canonicalJson } from './signature.js';
import { lanesChoice } from './space.js';

/** Adapter classes with a row of defaults. */
export const ADAPTER_CLASSES = ['cpu', 'generic', 'gpu-discrete', 'gpu-integrated'] as const;
export type AdapterClass = (typeof ADAPTER_CLASSES)[number];

/**
 * One row: choices by kernel and bucket; what is left out keeps the kernel's shape rule. A float
 * matmul bucket may list variants by weight rows (the first whose `maxRows` holds the class's rows;
 * none: any height), since the LM head's 100k+ rows want other tiles than a layer's projections.
 */
export interface DefaultsRow {
  matmul: Partial<Record<MClass, MatmulVariant | { maxRows?: number; variant: MatmulVariant }[]>>;
  matmulQ4: Partial<Record<MClass, Q4Variant | { maxRows?: number; variant: Q4Variant }[]>>;
  matmulGguf: Partial<Record<MClass, GgufVariant | { maxRows?: number; variant: GgufVariant }[]>>;
  /**
   * Decode attention's tokens per split by row bucket ('1', '2-4', '5-32'): the context bucket
   * over `splits`, at least `min` (a multiple of the 16-token block); up to a context bucket of
   * `oneSplitUpTo`, the whole bucket in one split (the single-pass kernel: one dispatch, no merge).
   * `lanes`: the lanes form first (one invocation per row and KV head, kernels/attention-lanes.ts)
   * where it serves the head shape, else the splits, or without them the kernel's rule.
   */
  attentionChunk: Partial<
    Record<string, { lanes: true } | { splits: number; min: number; oneSplitUpTo?: number; lanes?: boolean }>
  >;
}

/** The cpu row's int4 choice at every M > 1 bucket (4 rows of X per group, 4 rows per thread). */
const Q4_CPU_ROWS: { maxRows?: number; variant: Q4Variant }[] = [
  {
    maxRows: 2047,
    variant: { rowsPerGroup: 4, rowsPerThread: 4, subgroups: true, dequant: 'f32', workgroupSize: 32 },
  },
  { variant: { rowsPerGroup: 4, rowsPerThread: 4, subgroups: true, dequant: 'f32' } },
];

/**
 * The table. Measurements (GPU timestamps, `kiln tune --budget-s 60..90 --json`, speedup of the
 * winner over the kernel's rule at the class):
 * - cpu (lavapipe, Mesa 25.0, 2 cores): float M = 1 classes are won by the one-row GEMM tile at
 *   every Qwen2.5-0.5B and BabyLlama shape (q/k/v 1.74-2.20x, o 2.03-2.35x, gate/up 1.91-2.22x,
 *   down 1.99-2.41x), with 32 threads (16 won on BabyLlama's 128-wide layers, within 5% of 32);
 *   the bf16 LM head (151936 rows) by the same tile on 64 threads (2.29x; its 100k+ rows make
 *   many workgroups, and 32 threads ran it 1.27x slower in one profiled step); int4 M = 1 by 4 rows per thread, X through subgroups,
 *   16 threads up to 2047 rows (n896 k896 1.41x, n1152 k896 1.04x; n896 k4864 1.36x with 32),
 *   64 threads above (gate/up's 9728 rows kept the rule's 64: 1.00x; with 16 threads the whole
 *   int4 decode step ran 0.5-0.7x of the tuned one in alternating runs); the one-row kernel
 *   matmul_q4_gemv (4 rows per thread, 16 threads, X through subgroups) ran at that choice's speed
 *   (g32 sym f16 scales, min of 15 alternating rounds at load ~16: 2048x8192 2.14 vs 2.13 ms,
 *   9728x896 1.24 vs 1.17, 3072x2048 0.86 vs 0.84), so the row keeps matmul_q4 (the tuner may
 *   still pick a gemv shape per class);
 *   GGUF blocks (16-byte kernel, X through subgroups) at M = 16 by 4 rows of X, 2 rows per
 *   thread (2 alternating rounds at load average 24 on 2 cores: Qwen2.5-0.5B gate_up in Q5_0
 *   80 ms vs 174 for R = 4, down Q4_K 94-106 vs 152; weak evidence under that load). At M = 1 the
 *   kernel's rule stays: 2 rows per thread on 32 threads won alone (gate_up Q5_0 0.84 ms vs the
 *   rule's 2.50; down Q4_K 0.70 vs 0.69) but the whole decode step of a 4-layer Qwen2.5-0.5B-shaped
 *   Q4_K_M-style file ran at 3.57 and 6.26 tokens/s with it against 7.16 and 6.28 under the rule
 *   (alternating runs), as 16 threads did for int4; rechecked on the same file at load 3-4: a
 *   60 s tune kept the rule at gate_up Q5_0 (9728 x 896, 1.17 ms, 15 candidates), Q6_K down and
 *   qkv (o 896 x 896 R = 2: 0.20 vs 0.24 ms), and the decode step (3 alternating rounds, median
 *   tokens/s) ran 13.4 under the rule, 11.6 with R = 2 on 32 threads, 7.4 with int4's row;
 *   decode attention for one row by 8 splits of the context, at least 128 tokens each (512 at a
 *   4096 context: 1.33x; BabyLlama at 256: 128-token splits, 2.85x over 64), and up to a
 *   1024-token context bucket in one split, the single-pass kernel (at 1024, best of 3 alternating
 *   rounds, single pass vs 128-token splits with the async softmax: Llama-3.2-1B heads f32 2.23 vs
 *   2.88 ms, f16 2.06 vs 2.24; Qwen2.5-0.5B f32 0.94 vs 1.00, f16 0.90 vs 0.96; BabyLlama's
 *   decode step 59 -> 44 dispatches); before all of these, at every row bucket, the lanes form
 *   where it serves the heads (kernels/attention-lanes.ts; GPU ms per call, best of 3 rounds of
 *   10, f16 cache, heads 8/4: head_dim 16 at context 128, 1 / 4 / 16 rows, 0.064 / 0.276 / 1.047
 *   in one split, 0.024 / 0.037 / 0.084 lanes; at 4096, 1.06 / 6.66 / 16.3 in 512-token splits,
 *   0.31 / 1.18 / 3.01 lanes; head_dim 32 at 2048 0.83 / 5.39 / 12.8 split, 0.56 / 1.27 / 2.33
 *   lanes; head_dim 8 at 512 0.136 / 0.751 / 3.20 one split, 0.040 / 0.075 / 0.273 lanes);
 *   at M > 1 (prefill chunks, batched decode, speculative verifying steps) 4 weight rows per thread
 *   on smaller workgroups, where the kernels' rules take 8 on 64 threads (float GEMM) or as few
 *   rows per thread as keep 8 workgroups of 64 (int4: 1 at 896 rows). `kiln tune` speedups of the
 *   row's variant over the rules, Qwen2.5-0.5B's layers: bf16 M 2-4 (4-row tile, 32 threads) q/k/v
 *   1.42x, o 1.15x, gate/up 1.24x, down 1.28x, LM head 1.18x; M 5-16 (32 threads; timed at 16 rows,
 *   the 16-row tile) q/k/v 1.79x, o 1.51x, down 1.44x, gate/up 1.09x, LM head 1.33x, and at 5 and 8
 *   rows the step's own 8-row tile (GPU ms of a step's matmuls, `bench:profile --rows 5|8`, two
 *   alternating rounds: the layers' 8 rows per thread on 64 threads 16-18, 4 on 32 20-25, with the
 *   16-row tile 24-29; gate/up 38-40, 26-30, 44-49); M 17+ (16 threads) q/k/v 1.88x, o
 *   1.61x, down 1.44x; int4 (g32 asym, 4 rows of X per group, 32 threads up to 2047 rows, 64 above)
 *   M 2-4 o 2.57x, down 2.69x, q/k/v 1.25x, M 5-16 o 2.80x, down 3.64x, M 17+ o 3.51x, down 3.60x,
 *   gate/up's 9728 rows the rule's tiling on 64 threads (1.00x); BabyLlama's f32 layers 1.0-3.3x.
 *   Retuned from this row (every candidate, the rules included, against it in the same rounds), it
 *   won 13 of 16 bf16 and 15 of 16 int4 classes; the rest 1.06-1.25x (gate/up, the LM head) but for
 *   down at M 5-16 (16 threads, 1.83x; the first tune had 128 threads ahead there); BabyLlama's
 *   128-row layers kept 2 rows per thread at M 2-4 (1.1-1.2x). SwiftShader is a CPU adapter too
 *   (its subgroups are narrower, so the subgroup variants are not candidates there).
 * - generic (an adapter Kiln cannot place): the kernels' own rules, the untuned engine as it was.
 * - gpu-discrete (NVIDIA H100, Dawn over Vulkan): at M = 1 the flat GEMV with 1 row per thread
 *   (1.21-1.27x; more workgroups to fill 132 SMs), int4 1 row per thread, split-K attention with
 *   128-token splits at 2-32 rows (2.5-3.9x). The int4 K-split shapes of matmul_q4_gemv (4-16
 *   slices per workgroup) are tuner candidates, not yet measured on a GPU, so not in this row.
 * - gpu-integrated: the discrete row's M = 1 choices (fewer cores, same reason: rows per thread
 *   trade X reuse for workgroups, and a GPU has workgroup slots to spare); not measured here.
 */
export const KERNEL_DEFAULTS: Record<AdapterClass, DefaultsRow> = {
  cpu: {
    matmul: {
      '1': [
        { maxRows: 32767, variant: { path: 'gemm', tm: 1, tn: 4, wg: 32 } },
        { variant: { path: 'gemm', tm: 1, tn: 4, wg: 64 } },
      ],
      '2-4': { path: 'gemm', tm: 4, tn: 4, wg: 32 },
      '5-16': { path: 'gemm', tn: 4, wg: 32 },
      '17+': { path: 'gemm', tm: 16, tn: 4, wg: 16 },
    },
    matmulQ4: {
      '1': [
        {
          maxRows: 2047,
          variant: { rowsPerGroup: 1, rowsPerThread: 4, subgroups: true, dequant: 'f32', workgroupSize: 16 },
        },
        { variant: { rowsPerGroup: 1, rowsPerThread: 4, subgroups: true, dequant: 'f32' } },
      ],
      '2-4': Q4_CPU_ROWS,
      '5-16': Q4_CPU_ROWS,
      '17+': Q4_CPU_ROWS,
    },
    matmulGguf: { '5-16': { rowsPerGroup: 4, rowsPerThread: 2, subgroups: true } },
    attentionChunk: {
      '1': { splits: 8, min: 128, oneSplitUpTo: 1024, lanes: true },
      '2-4': { lanes: true },
      '5-32': { lanes: true },
    },
  },
  generic: { matmul: {}, matmulQ4: {}, matmulGguf: {}, attentionChunk: {} },
  'gpu-discrete': {
    matmul: { '1': { path: 'flat', mt: 1, r: 1 } },
    matmulQ4: { '1': { rowsPerGroup: 1, rowsPerThread: 1, subgroups: true, dequant: 'f32' } },
    matmulGguf: {},
    attentionChunk: { '2-4': { splits: 1, min: 128 }, '5-32': { splits: 1, min: 128 } },
  },
  'gpu-integrated': {
    matmul: { '1': { path: 'flat', mt: 1, r: 1 } },
    matmulQ4: { '1': { rowsPerGroup: 1, rowsPerThread: 1, subgroups: true, dequant: 'f32' } },
    matmulGguf: {},
    attentionChunk: {},
  },
};

/**
 * The class of an adapter from what WebGPU tells: CPU rasterizers by name (Mesa's lavapipe /
 * llvmpipe, SwiftShader, WARP), GPUs by vendor (integrated where the vendor builds only those or
 * mostly those: Intel, Apple, ARM, Qualcomm, Imagination; discrete: NVIDIA, AMD), else generic.
 */
export function adapterClassOf(
  a: Pick<AdapterSummary, 'vendor' | 'architecture' | 'device' | 'description'>,
): AdapterClass {
  const text = `${a.vendor} ${a.architecture} ${a.device} ${a.description}`.toLowerCase();
  if (/llvmpipe|lavapipe|swiftshader|software|\bwarp\b|microsoft basic render/.test(text)) return 'cpu';
  const vendor = a.vendor.toLowerCase();
  if (/nvidia|amd|\bati\b/.test(vendor)) return 'gpu-discrete';
  if (/intel|apple|arm|qualcomm|img-tec|imagination/.test(vendor)) return 'gpu-integrated';
  return 'generic';
}

/** The first variant whose `maxRows` holds `rows` (none: any height). */
function bySize<V>(rules: readonly { maxRows?: number; variant: V }[], rows = 0): V | undefined {
  return rules.find((r) => r.maxRows === undefined || rows <= r.maxRows)?.variant;
}

/** The row's choices for a class, preferred first (the first that is a candidate is the default). */
function rowChoices(row: DefaultsRow, cls: DefaultableClass, context: number): KernelChoice[] {
  const a = cls.kernel === 'attention_decode' ? row.attentionChunk[cls.bucket] : undefined;
  const c = rowChoice(row, cls, context);
  const all = a?.lanes ? [lanesChoice(context), c] : [c];
  return all.filter((x): x is KernelChoice => x !== undefined);
}

/** The row's choice for a class, if the row has one. */
function rowChoice(row: DefaultsRow, cls: DefaultableClass, context: number): KernelChoice | undefined {
  const { kernel, bucket } = cls;
  if (kernel === 'matmul') {
    const v = row.matmul[bucket as MClass];
    const variant = Array.isArray(v) ? bySize(v, cls.rows) : v;
    return variant ? { kernel, variant } : undefined;
  }
  if (kernel === 'matmul_q4') {
    const v = row.matmulQ4[bucket as MClass];
    const variant = Array.isArray(v) ? bySize(v, cls.rows) : v;
    return variant ? { kernel, variant } : undefined;
  }
  if (kernel === 'matmul_gguf') {
    const v = row.matmulGguf[bucket as MClass];
    const variant = Array.isArray(v) ? bySize(v, cls.rows) : v;
    return variant ? { kernel, variant } : undefined;
  }
  const chunk = defaultAttentionChunk(row, bucket, context);
  return chunk === undefined ? undefined : { kernel, chunk };
}

/**
 * The row's split-K decode-attention chunk for a row bucket ('1', '2-4', '5-32') at an engine
 * context, if the row gives splits for it.
 */
export function defaultAttentionChunk(row: DefaultsRow, bucket: string, context: number): number | undefined {
  const a = row.attentionChunk[bucket];
  if (!a || !('splits' in a)) return undefined;
  if (a.oneSplitUpTo !== undefined && contextBucket(context) <= a.oneSplitUpTo) return contextBucket(context);
  const fromContext = 2 ** Math.floor(Math.log2(contextBucket(context) / a.splits));
  return a.splits === 1 ? a.min : Math.max(a.min, fromContext);
}

/** What the defaults need of a shape class (tuner/classes.ts's TuneClass has it). */
export interface DefaultableClass {
  key: string;
  kernel: KernelChoice['kernel'];
  /** The M bucket, or decode attention's row bucket. */
  bucket: string;
  /** A matmul's weight rows. */
  rows?: number;
  candidates: KernelChoice[];
}

/**
 * The row's choice for each class where it is a candidate on this adapter (a variant the adapter
 * can build, a chunk within the context): the untuned engine's table.
 */
export function defaultChoices(
  classes: readonly DefaultableClass[],
  row: DefaultsRow,
  /** The engine's context length (decode attention's context bucket). */
  context: number,
): KernelChoices {
  const out = new KernelChoices();
  for (const cls of classes) {
    const c = rowChoices(row, cls, context).find((choice) => {
      const json = canonicalJson(choice);
      return cls.candidates.some((k) => canonicalJson(k) === json);
    });
    if (c) out.set(cls.key, c);
  }
  return out;
}

/** The row for an option value: 'auto' picks by adapter class. */
export function defaultsRowFor(
  which: AdapterClass | 'auto',
  adapter: Pick<AdapterSummary, 'vendor' | 'architecture' | 'device' | 'description'>,
): { adapterClass: AdapterClass; row: DefaultsRow } {
  const adapterClass = which === 'auto' ? adapterClassOf(adapter) : which;
  return { adapterClass, row: KERNEL_DEFAULTS[adapterClass] };
}
