/**
 * Kernel choices the tuner found, as the forward pass asks for them: per shape class, the variant
 * to force. A class with no entry keeps the kernel's own shape-based default, so an empty table is
 * exactly the untuned engine.
 *
 * Shape classes (DESIGN-NOTES §6): a matmul's class is its weight (format, fused epilogue, rows,
 * cols, activation format) and the bucket of M it runs at; decode attention's is its head shape,
 * cache dtype, the row bucket and the plan's context bucket. The exact M or context is never part
 * of a key: one tuned choice serves the whole bucket, as one compiled pipeline serves every shape.
 */
import type { ActivationFormat } from '../kernels/activation.js';
import type { KvDtype } from '../kernels/kv-dtype.js';
import type { MatmulVariant } from '../kernels/matmul.js';
import type { Q4GpuWeight, Q4Variant } from '../kernels/matmul-q4.js';
import type { GgufGpuWeight, GgufVariant } from '../kernels/matmul-gguf.js';
import type { GpuWeight } from '../kernels/tiled.js';
import type { LinearVariants } from '../kernels/linear.js';

/** One tuned decision: how to run the kernel of a shape class. */
export type KernelChoice =
  | { kernel: 'matmul'; variant: MatmulVariant }
  | { kernel: 'matmul_q4'; variant: Q4Variant }
  | { kernel: 'matmul_gguf'; variant: GgufVariant }
  | {
      kernel: 'attention_decode';
      /** Tokens per split; the lanes form takes the context bucket (one split of partials). */
      chunk: number;
      /** 'lanes': one invocation per (row, KV head) (kernels/attention-lanes.ts); absent: split-K. */
      form?: 'lanes';
    };

/** Buckets of M (rows of X): decode, small batches, batched decode, prefill chunks. */
export const M_CLASSES = [
  { name: '1', max: 1, rep: 1 },
  { name: '2-4', max: 4, rep: 4 },
  { name: '5-16', max: 16, rep: 16 },
  { name: '17+', max: Infinity, rep: 64 },
] as const;
export type MClass = (typeof M_CLASSES)[number]['name'];

export function mClassOf(m: number): MClass {
  return (M_CLASSES.find((c) => m <= c.max) ?? M_CLASSES[M_CLASSES.length - 1]!).name;
}

/** Buckets of decode-attention rows (split-K serves up to 32). */
export const ATTENTION_ROW_CLASSES = [
  { name: '1', max: 1, rep: 1 },
  { name: '2-4', max: 4, rep: 4 },
  { name: '5-32', max: Infinity, rep: 16 },
] as const;

/** Context buckets: the plan's longest context rounded up to a power of two (at least 256). */
export function contextBucket(maxContext: number): number {
  return Math.max(256, 2 ** Math.ceil(Math.log2(Math.max(1, maxContext))));
}

type FloatWeightKey = Pick<GpuWeight, 'format' | 'fused' | 'rows' | 'cols'>;
type Q4WeightKey = Pick<Q4GpuWeight, 'format' | 'rows' | 'cols'>;
type GgufWeightKey = Pick<GgufGpuWeight, 'kind' | 'parts' | 'rows' | 'cols'>;

/**
 * The weight part of a matmul class key, e.g. `matmul_bf16_swiglu n9728 k896`,
 * `matmul_q4_g32_asym_f16s ...` or `matmul_gguf_q4_k+q6_k ...` (a GGUF weight's block formats in
 * row order).
 */
export function matmulWeightKey(
  w: FloatWeightKey | Q4WeightKey | GgufWeightKey,
  xFormat: ActivationFormat = 'f32',
): string {
  if ('kind' in w && w.kind === 'gguf') {
    const types = [...new Set(w.parts.map((p) => p.type.toLowerCase()))].join('+');
    return `matmul_gguf_${types} n${w.rows} k${w.cols}`;
  }
  if ('format' in w && typeof w.format === 'object') {
    const f = w.format;
    return `matmul_q4_g${f.groupSize}_${f.symmetric ? 'sym' : 'asym'}_${f.scaleType}s n${w.rows} k${w.cols}`;
  }
  const fw = w as FloatWeightKey;
  const x = xFormat === 'f16' ? '_xf16' : '';
  return `matmul_${fw.format}${x}${fw.fused === 'swiglu' ? '_swiglu' : ''} n${fw.rows} k${fw.cols}`;
}

export function matmulClassKey(
  w: FloatWeightKey | Q4WeightKey | GgufWeightKey,
  m: number,
  xFormat?: ActivationFormat,
): string {
  return `${matmulWeightKey(w, xFormat)} m${mClassOf(m)}`;
}

export interface AttentionShapeKey {
  heads: number;
  kvHeads: number;
  headDim: number;
  kvDtype: KvDtype;
}

export function attentionRowClassOf(rows: number): string {
  return (ATTENTION_ROW_CLASSES.find((c) => rows <= c.max) ?? ATTENTION_ROW_CLASSES[2]).name;
}

export function attentionClassKey(s: AttentionShapeKey, rows: number, maxContext: number): string {
  return `attention_decode h${s.heads} kv${s.kvHeads} d${s.headDim} ${s.kvDtype} rows${attentionRowClassOf(rows)} ctx${contextBucket(maxContext)}`;
}

/** Tuned choices by class key; what the forward pass consults when it records a plan. */
export class KernelChoices implements LinearVariants {
  private readonly table = new Map<string, KernelChoice>();

  get size(): number {
    return this.table.size;
  }

  set(key: string, choice: KernelChoice): void {
    this.table.set(key, choice);
  }

  get(key: string): KernelChoice | undefined {
    return this.table.get(key);
  }

  entries(): [string, KernelChoice][] {
    return [...this.table];
  }

  /** The float matmul variant to force for this weight at m rows, if tuned. */
  matmul(w: GpuWeight, m: number, xFormat?: ActivationFormat): MatmulVariant | undefined {
    const c = this.table.get(matmulClassKey(w, m, xFormat));
    return c?.kernel === 'matmul' ? c.variant : undefined;
  }

  matmulQ4(w: Q4GpuWeight, m: number): Q4Variant | undefined {
    const c = this.table.get(matmulClassKey(w, m));
    return c?.kernel === 'matmul_q4' ? c.variant : undefined;
  }

  matmulGguf(w: GgufGpuWeight, m: number): GgufVariant | undefined {
    const c = this.table.get(matmulClassKey(w, m));
    return c?.kernel === 'matmul_gguf' ? c.variant : undefined;
  }

  /** Decode attention's tokens per split and form for this head shape at `rows` rows, if tuned. */
  attentionDecode(
    s: AttentionShapeKey,
    rows: number,
    maxContext: number,
  ): { chunk: number; form: 'split' | 'lanes' } | undefined {
    const c = this.table.get(attentionClassKey(s, rows, maxContext));
    return c?.kernel === 'attention_decode' ? { chunk: c.chunk, form: c.form ?? 'split' } : undefined;
  }
}
