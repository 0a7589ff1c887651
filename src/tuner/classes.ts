/**
 * The shape classes a loaded model runs, as the tuner times them (DESIGN-NOTES §6): each
 * projection shape (one layer stands for all) at each M bucket up to the model's largest step, the
 * LM head at decode-sized buckets, and split-K decode attention at each row bucket, with their
 * candidate variants (space.ts) and inputs built on the GPU on demand.
 */
import { plainRowInfo } from '../kernels/row-info.js';
import { storageUsage, type GpuContext } from '../gpu/device.js';
import { type Dispatch, type DispatchBuilder } from '../gpu/dispatch.js';
import { encodeFromFloat32 } from '../io/dtype.js';
import {
  ATTENTION_DECODE_MAX_ROWS,
  AttentionDecodeScratch,
  attentionDecode,
  pickDecodeChunk,
  supportsAttentionDecode,
} from '../kernels/attention-decode.js';
import { supportsAttentionLanes } from '../kernels/attention-lanes.js';
import { isGgufWeight, isQ4Weight, linear, type Linear } from '../kernels/linear.js';
import type { Q4GpuWeight } from '../kernels/matmul-q4.js';
import type { GgufGpuWeight } from '../kernels/matmul-gguf.js';
import { randomF32 } from '../kernels/random.js';
import type { GpuWeight } from '../kernels/tiled.js';
import {
  ATTENTION_ROW_CLASSES,
  KernelChoices,
  M_CLASSES,
  attentionClassKey,
  matmulClassKey,
  mClassOf,
  type KernelChoice,
} from './choices.js';
import { canonicalJson } from './signature.js';
import {
  attentionCandidates,
  floatMatmulCandidates,
  ggufMatmulCandidates,
  q4MatmulCandidates,
} from './space.js';
import { isQuantKv, type KvDtype } from '../kernels/kv-dtype.js';
import { encodeKvRows } from '../kernels/kv-quant.ref.js';

/** Inputs of one shape class, on the GPU, and how to record its kernel with a choice. */
export interface ClassBench {
  record(b: DispatchBuilder, choice: KernelChoice): Dispatch[];
  /** What every candidate writes (compared against the default's). */
  output: GPUBuffer;
  outputBytes: number;
  destroy(): void;
}

/** A shape class to tune: candidate 0 is the default. */
export interface TuneClass {
  key: string;
  kernel: KernelChoice['kernel'];
  /** The M bucket (matmuls) or row bucket (decode attention). */
  bucket: string;
  /** A matmul's weight rows (the defaults table picks by them). */
  rows?: number;
  /** Lower runs first. */
  priority: number;
  candidates: KernelChoice[];
  prepare(ctx: GpuContext): ClassBench;
}

/**
 * What a loaded model gives the tuner: one layer's projections (every layer shares their shapes)
 * with the format of X each reads, the LM head, decode attention's head shape, and the largest
 * step and context it runs.
 */
export interface TuneTarget {
  ctx: GpuContext;
  projections: TunedProjection[];
  lmHead: TunedProjection;
  attention: AttentionShape;
  maxRows: number;
  contextLength: number;
}

export interface TunedProjection {
  lin: Linear;
  swiglu: boolean;
  xFormat: 'f32' | 'f16';
}

/** Decode attention's head shape and KV element type. */
export interface AttentionShape {
  heads: number;
  kvHeads: number;
  headDim: number;
  kvDtype: KvDtype;
}

function upload(ctx: GpuContext, label: string, data: ArrayBufferView, owned: GPUBuffer[]): GPUBuffer {
  const b = ctx.createBuffer(label, Math.max(16, data.byteLength), storageUsage());
  ctx.device.queue.writeBuffer(b, 0, data.buffer, data.byteOffset, data.byteLength);
  owned.push(b);
  return b;
}

/**
 * Rows a matmul class is timed on at most. Per-row work is the same in every row, so a prefix of
 * a big matrix (the LM head's 128k-256k rows) ranks the candidates as the whole would, while
 * 32768 rows still make at least 128 workgroups (64 threads, 4 rows each) to fill a device; timing
 * the whole head took most of a 60 s budget on lavapipe. The choice applies to the whole matrix; the reported times are the
 * prefix's.
 */
export const TIMED_ROWS_MAX = 32768;

/** `w` cut to its first TIMED_ROWS_MAX rows, where they lie in its first part (tiles are 8 rows). */
export function timedSlice<W extends GpuWeight | Q4GpuWeight | GgufGpuWeight>(w: W): W {
  const first = w.parts[0];
  if (w.rows <= TIMED_ROWS_MAX || !first || first.rows < TIMED_ROWS_MAX) return w;
  return { ...w, rows: TIMED_ROWS_MAX, parts: [{ ...first, rows: TIMED_ROWS_MAX }] };
}

/** A projection's class at bucket `mc`: its candidates, and its inputs built on demand. */
export function linearClass(
  ctx: GpuContext,
  lin: Linear,
  swiglu: boolean,
  mc: (typeof M_CLASSES)[number],
  priority: number,
  xFormat: 'f32' | 'f16',
): TuneClass {
  const full = lin.weight;
  // int4 and GGUF blocks: f32 activations, SwiGLU as a separate pass over a stacked [gate; up].
  const q4 = isQ4Weight(full) || isGgufWeight(full);
  const m = mc.rep;
  return {
    key: matmulClassKey(full, m, q4 ? 'f32' : xFormat),
    kernel: isGgufWeight(full) ? 'matmul_gguf' : q4 ? 'matmul_q4' : 'matmul',
    bucket: mc.name,
    rows: full.rows,
    priority,
    candidates: isGgufWeight(full)
      ? ggufMatmulCandidates(ctx, mc.name)
      : isQ4Weight(full)
        ? q4MatmulCandidates(ctx, full, mc.name)
        : floatMatmulCandidates(ctx, full, mc.name),
    prepare(c) {
      const owned: GPUBuffer[] = [];
      const w = timedSlice(full);
      const x = randomF32(m * w.cols, w.rows + 7 * w.cols + m);
      const xBuf =
        !q4 && xFormat === 'f16'
          ? upload(c, 'tune.x', encodeFromFloat32('F16', x), owned)
          : upload(c, 'tune.x', x, owned);
      const outputBytes = m * w.rows * 4;
      const y = c.createBuffer('tune.y', outputBytes, storageUsage());
      owned.push(y);
      const placeholder = upload(c, 'tune.placeholder', new Uint32Array(4), owned);
      const gateUp = q4 && swiglu ? c.createBuffer('tune.gate_up', outputBytes, storageUsage()) : undefined;
      if (gateUp) owned.push(gateUp);
      return {
        output: gateUp ?? y,
        outputBytes,
        // The projection as the forward pass records it (bias, SwiGLU epilogue), minus the
        // act-order gather and the int4 SwiGLU pass, which no choice changes.
        record: (b, choice) => {
          const one = new KernelChoices();
          // Keyed by the timed slice's shape, which is what linear() looks up here.
          one.set(matmulClassKey(w, m, q4 ? 'f32' : xFormat), choice);
          const d = linear(b, {
            x: xBuf,
            lin: { weight: w, bias: lin.bias },
            y,
            m,
            swiglu,
            placeholder,
            ...(q4 ? {} : { xFormat }),
            scratch: gateUp ? { gateUp } : {},
            choices: one,
          });
          return q4 && swiglu ? d.slice(0, -1) : d;
        },
        destroy: () => owned.forEach((o) => c.destroyBuffer(o)),
      };
    },
  };
}

function attentionClass(
  target: TuneTarget,
  rc: (typeof ATTENTION_ROW_CLASSES)[number],
  priority: number,
): TuneClass {
  const { attention: shape, contextLength: maxContext } = target;
  const rows = Math.min(rc.rep, ATTENTION_DECODE_MAX_ROWS);
  const defaultChunk = pickDecodeChunk({ maxContext, kvHeads: shape.kvHeads, rows });
  const lanes = supportsAttentionLanes(shape.heads, shape.kvHeads, shape.headDim, shape.kvDtype);
  const candidates = attentionCandidates(defaultChunk, maxContext, lanes);
  return {
    key: attentionClassKey(shape, rows, maxContext),
    kernel: 'attention_decode',
    bucket: rc.name,
    priority,
    candidates,
    prepare(c) {
      const owned: GPUBuffer[] = [];
      const blocks = Math.ceil(maxContext / 16);
      const kvElems = blocks * shape.kvHeads * 16 * shape.headDim;
      const cache = (seed: number) => {
        const v = randomF32(kvElems, seed);
        const dtype = shape.kvDtype;
        const data = isQuantKv(dtype)
          ? encodeKvRows(v, dtype, shape.headDim)
          : dtype === 'f16'
            ? encodeFromFloat32('F16', v)
            : v;
        return upload(c, 'tune.kv', data, owned);
      };
      const kCache = cache(11);
      const vCache = cache(12);
      // Every row attends to the whole context (the plan's worst case) through one block table.
      const rowInfo = upload(
        c,
        'tune.row_info',
        plainRowInfo(Array.from({ length: rows }, () => maxContext - 1)),
        owned,
      );
      const table = upload(
        c,
        'tune.block_table',
        Uint32Array.from({ length: blocks }, (_, i) => i),
        owned,
      );
      const q = upload(c, 'tune.q', randomF32(rows * shape.heads * shape.headDim, 13), owned);
      const outputBytes = rows * shape.heads * shape.headDim * 4;
      const out = c.createBuffer('tune.attn_out', outputBytes, storageUsage());
      owned.push(out);
      const minChunk = Math.min(
        ...candidates.map((k) => (k.kernel === 'attention_decode' ? k.chunk : Infinity)),
      );
      const scratch = new AttentionDecodeScratch(c, {
        rows,
        heads: shape.heads,
        headDim: shape.headDim,
        maxContext,
        chunk: minChunk,
      });
      return {
        output: out,
        outputBytes,
        record: (b, choice) => {
          if (choice.kernel !== 'attention_decode') throw new RangeError('not an attention choice');
          return attentionDecode(b, {
            rowInfo,
            blockTable: table,
            q,
            kCache,
            vCache,
            out,
            m: rows,
            ...shape,
            scale: 1 / Math.sqrt(shape.headDim),
            maxContext,
            chunk: choice.chunk,
            // The chunk suits both softmax variants; the exact one needs no calibrated phi.
            variant: 'two_pass',
            ...(choice.form ? { form: choice.form } : {}),
            scratch,
          });
        },
        destroy: () => {
          owned.forEach((o) => c.destroyBuffer(o));
          scratch.destroy();
        },
      };
    },
  };
}

/**
 * The classes `target` runs: its distinct projection shapes (layer 0 stands for every layer, which
 * share shapes) at each M bucket up to its largest step, the LM head at decode-sized buckets, and
 * split-K decode attention at each row bucket. Sorted by priority: every class at M = 1 first.
 * A class with a choice in `defaults` (the adapter class's row, tuner/defaults.ts) has it as
 * candidate 0: the default every other candidate is checked and timed against.
 */
export function modelTuneClasses(target: TuneTarget, defaults?: KernelChoices): TuneClass[] {
  return withDefaults(unorderedClasses(target), defaults).sort((a, b) => a.priority - b.priority);
}

function withDefaults(classes: TuneClass[], defaults?: KernelChoices): TuneClass[] {
  if (!defaults || defaults.size === 0) return classes;
  return classes.map((cls) => {
    const d = defaults.get(cls.key);
    if (!d) return cls;
    const json = canonicalJson(d);
    return { ...cls, candidates: [d, ...cls.candidates.filter((c) => canonicalJson(c) !== json)] };
  });
}

function unorderedClasses(target: TuneTarget): TuneClass[] {
  if (target.projections.length === 0) return [];
  const projections = [
    ...target.projections.map((p) => ({ ...p, head: false })),
    { ...target.lmHead, head: true },
  ];
  const out: TuneClass[] = [];
  const seen = new Set<string>();
  const largest = M_CLASSES.findIndex((c) => c.name === mClassOf(target.maxRows));
  M_CLASSES.forEach((mc, ci) => {
    if (ci > largest) return;
    projections.forEach((p, pi) => {
      // The LM head runs once per sequence in a step: decode-sized M only.
      if (p.head && mc.rep > 16) return;
      const cls = linearClass(target.ctx, p.lin, p.swiglu, mc, ci * 10 + pi, p.xFormat);
      if (seen.has(cls.key)) return;
      seen.add(cls.key);
      out.push(cls);
    });
  });
  const a = target.attention;
  if (supportsAttentionDecode(a.heads, a.kvHeads, a.headDim)) {
    ATTENTION_ROW_CLASSES.forEach((rc, i) => {
      if (rc.rep > Math.min(target.maxRows, ATTENTION_DECODE_MAX_ROWS) && i > 0) return;
      const cls = attentionClass(target, rc, (i === 0 ? 0 : i + 1) * 10 + 5);
      if (!seen.has(cls.key)) {
        seen.add(cls.key);
        out.push(cls);
      }
    });
  }
  return out;
}
