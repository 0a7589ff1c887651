/**
 * Sampling on the GPU: `sample` draws one token id per logits row (temperature, top-k, top-p and a
 * uniform number per row; see shaders/sample.wgsl for the exact semantics and sample.ref.ts for
 * the float64 twin), and `repetitionPenalty` applies the CTRL/HF penalty in place first, so a
 * sampled decode step reads back 4 bytes per sequence instead of the logits.
 */
import { MAX_GRID, packParams, shaderSource } from './shader.js';
import { type Dispatch, type DispatchBuilder } from '../gpu/dispatch.js';

/** One row's sampling settings, as the kernel reads them. */
export interface SampleRowParams {
  /** <= 0: greedy (the argmax). */
  temperature: number;
  /** 0 = off; 1 = greedy. */
  topK: number;
  /** >= 1 = off; 0 keeps only the top token. */
  topP: number;
  /** Uniform in [0, 1), drawn on the CPU (the request's seeded Rng, src/engine/sampling/rng.ts). */
  u: number;
}

/**
 * Bytes per row of the params buffer: { temperature f32, top_k u32, top_p f32, u f32 } at byte
 * offsets 0, 4, 8, 12 (WGSL `struct RowParams`, array stride 16).
 */
export const SAMPLE_ROW_BYTES = 16;

/** The largest f32 below 1: u rounds to f32 in the buffer and must stay below 1. */
const U_MAX = 1 - 2 ** -24;
/** The least normal f32: GPUs may flush smaller (subnormal) temperatures to 0. */
const F32_MIN_NORMAL = 2 ** -126;

/**
 * Writes rows of sampling params into `out` (or a new buffer) in the kernel's layout. Values are
 * stored as f32 (compare with sampleRef on Math.fround'ed values); u is clamped below 1 after
 * rounding, top-p above 1 is stored as 1 (off), and a temperature below the least normal f32 as 0
 * (greedy) since the GPU may flush it to 0 anyway.
 */
export function packSampleParams(rows: readonly SampleRowParams[], out?: ArrayBuffer): ArrayBuffer {
  const buf = out ?? new ArrayBuffer(Math.max(1, rows.length) * SAMPLE_ROW_BYTES);
  if (buf.byteLength < rows.length * SAMPLE_ROW_BYTES)
    throw new RangeError('sample params: buffer too small');
  const f = new Float32Array(buf);
  const u32 = new Uint32Array(buf);
  rows.forEach((r, i) => {
    if (!(r.temperature >= 0) || !Number.isFinite(r.temperature))
      throw new RangeError(`sample params row ${i}: temperature ${r.temperature}`);
    if (!Number.isInteger(r.topK) || r.topK < 0 || r.topK > 0xffffffff)
      throw new RangeError(`sample params row ${i}: topK ${r.topK}`);
    if (!(r.topP >= 0)) throw new RangeError(`sample params row ${i}: topP ${r.topP}`);
    if (!(r.u >= 0 && r.u < 1)) throw new RangeError(`sample params row ${i}: u ${r.u}`);
    f[4 * i] = r.temperature < F32_MIN_NORMAL ? 0 : r.temperature;
    u32[4 * i + 1] = r.topK;
    f[4 * i + 2] = Math.min(r.topP, 1);
    f[4 * i + 3] = Math.min(Math.fround(r.u), U_MAX);
  });
  return buf;
}

/**
 * sample: ids[r] = a token drawn from logits row r with params row r (one 256-thread workgroup per
 * row); see shaders/sample.wgsl for the semantics, sample.ref.ts for the float64 twin.
 */
export function sample(
  b: DispatchBuilder,
  a: {
    /** [rows, n] f32 */ logits: GPUBuffer;
    /** [rows] x SAMPLE_ROW_BYTES, see packSampleParams */ params: GPUBuffer;
    /** [rows] u32 */ ids: GPUBuffer;
    rows: number;
    n: number;
  },
): Dispatch {
  if (a.rows > MAX_GRID) throw new RangeError(`sample: ${a.rows} rows exceed one dispatch`);
  if (!(a.n >= 1)) throw new RangeError(`sample: n = ${a.n}`);
  if (a.rows * a.n >= 2 ** 32)
    throw new RangeError(`sample: ${a.rows} x ${a.n} logits overflow u32 indexing`);
  return b.make(
    'sample',
    () => shaderSource('sample'),
    packParams([['u32', a.n]]),
    [a.logits, a.params, a.ids],
    [a.rows, 1, 1],
  );
}

/** One row's repetition penalty: its context ids are tokens[start .. start + count). */
export interface PenaltyRow {
  start: number;
  count: number;
  /** 1 = off; > 1 discourages the listed ids. */
  penalty: number;
}

/** Bytes per row of the penalty rows buffer: { start u32, count u32, penalty f32, pad u32 }. */
export const PENALTY_ROW_BYTES = 16;

export function packPenaltyRows(rows: readonly PenaltyRow[], out?: ArrayBuffer): ArrayBuffer {
  const buf = out ?? new ArrayBuffer(Math.max(1, rows.length) * PENALTY_ROW_BYTES);
  if (buf.byteLength < rows.length * PENALTY_ROW_BYTES)
    throw new RangeError('penalty rows: buffer too small');
  const f = new Float32Array(buf);
  const u32 = new Uint32Array(buf);
  rows.forEach((r, i) => {
    if (!Number.isInteger(r.start) || r.start < 0 || !Number.isInteger(r.count) || r.count < 0)
      throw new RangeError(`penalty row ${i}: start ${r.start}, count ${r.count}`);
    if (!(r.penalty > 0) || !Number.isFinite(r.penalty))
      throw new RangeError(`penalty row ${i}: penalty ${r.penalty}`);
    u32[4 * i] = r.start;
    u32[4 * i + 1] = r.count;
    f[4 * i + 2] = r.penalty;
    u32[4 * i + 3] = 0;
  });
  return buf;
}

/**
 * repetition_penalty: for each row r and each id in its token list (ids must be unique within a
 * row, as the CPU sampler's Set makes them; ids >= n are ignored), logits[r, id] is divided by the
 * penalty when positive and multiplied when not, in place; see shaders/repetition_penalty.wgsl.
 */
export function repetitionPenalty(
  b: DispatchBuilder,
  a: {
    /** [rows, n] f32, updated in place */ logits: GPUBuffer;
    /** [rows] x PENALTY_ROW_BYTES, see packPenaltyRows */ penaltyRows: GPUBuffer;
    /** u32 context ids, each row's slice named by its PenaltyRow */ tokens: GPUBuffer;
    rows: number;
    n: number;
  },
): Dispatch {
  if (a.rows > MAX_GRID) throw new RangeError(`repetitionPenalty: ${a.rows} rows exceed one dispatch`);
  if (a.rows * a.n >= 2 ** 32)
    throw new RangeError(`repetitionPenalty: ${a.rows} x ${a.n} logits overflow u32 indexing`);
  return b.make(
    'repetition_penalty',
    () => shaderSource('repetition_penalty'),
    packParams([['u32', a.n]]),
    [a.logits, a.penaltyRows, a.tokens],
    [a.rows, 1, 1],
  );
}

/** One row of logit_adjust: its edits are edits[start .. start + count); mask 0 = none, k = mask row k - 1. */
export interface AdjustRow {
  start: number;
  count: number;
  mask: number;
}

/** Bytes per row of the adjust rows buffer: { start u32, count u32, mask u32, pad u32 }. */
export const ADJUST_ROW_BYTES = 16;
/** Bytes per edit: { id u32, add f32 }. */
export const ADJUST_EDIT_BYTES = 8;

/**
 * logit_adjust: adds each row's edits (unique ids) to its logits, then sets the logits of tokens
 * outside the row's mask to -Infinity; see shaders/logit_adjust.wgsl, logit-adjust.ref.ts.
 */
export function logitAdjust(
  b: DispatchBuilder,
  a: {
    /** [rows, n] f32, updated in place */ logits: GPUBuffer;
    /** [rows] x ADJUST_ROW_BYTES */ rows: GPUBuffer;
    /** edits, ADJUST_EDIT_BYTES each */ edits: GPUBuffer;
    /** [mask rows, ceil(n / 32)] u32 */ masks: GPUBuffer;
    rowCount: number;
    n: number;
  },
): Dispatch {
  if (a.rowCount > MAX_GRID) throw new RangeError(`logitAdjust: ${a.rowCount} rows exceed one dispatch`);
  if (a.rowCount * a.n >= 2 ** 32)
    throw new RangeError(`logitAdjust: ${a.rowCount} x ${a.n} logits overflow u32 indexing`);
  return b.make(
    'logit_adjust',
    () => shaderSource('logit_adjust'),
    packParams([
      ['u32', a.n],
      ['u32', Math.ceil(a.n / 32)],
      ['f32', -Infinity],
    ]),
    [a.logits, a.rows, a.edits, a.masks],
    [a.rowCount, 1, 1],
  );
}
