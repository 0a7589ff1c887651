/**
 * logprobs on the GPU: for each logits row that asks, the log-sum-exp, the chosen token's logprob
 * and up to LOGPROBS_MAX_TOP best alternatives (see shaders/logprobs.wgsl for the semantics and
 * logprobs.ref.ts for the float64 twin), so a step with logprobs reads back LOGPROBS_ROW_BYTES per
 * row instead of the logits.
 */
import { MAX_GRID, packParams, shaderSource } from './shader.js';
import { type Dispatch, type DispatchBuilder } from '../gpu/dispatch.js';

/** The most alternatives a row can ask for (OpenAI's top_logprobs maximum). */
export const LOGPROBS_MAX_TOP = 20;
/** u32 words per output row: lse, logprob, count, chosen id, then (id, logprob) pairs. */
export const LOGPROBS_ROW_WORDS = 4 + 2 * LOGPROBS_MAX_TOP;
export const LOGPROBS_ROW_BYTES = 4 * LOGPROBS_ROW_WORDS;
/** A row's `want` value when it asks for nothing (the kernel skips it). */
const SKIP = 0xffffffff;

/** One row's summary, decoded from the kernel's output. */
export interface RowLogprobs {
  lse: number;
  /** The chosen token. */
  id: number;
  logprob: number;
  /** Best first. */
  top: { id: number; logprob: number }[];
}

/** The `want` buffer's contents: alternatives per row, null where the row asks for nothing. */
export function packLogprobsWant(rows: readonly (number | null)[], out?: Uint32Array): Uint32Array {
  const buf = out ?? new Uint32Array(Math.max(1, rows.length));
  if (buf.length < rows.length) throw new RangeError('logprobs want: buffer too small');
  rows.forEach((k, i) => {
    if (k !== null && (!Number.isInteger(k) || k < 0 || k > LOGPROBS_MAX_TOP))
      throw new RangeError(`logprobs row ${i}: ${k} alternatives (0..${LOGPROBS_MAX_TOP})`);
    buf[i] = k ?? SKIP;
  });
  return buf;
}

/** Decodes the kernel's output rows (as read back) for the rows that asked. */
export function unpackLogprobs(data: ArrayBuffer, rows: readonly (number | null)[]): (RowLogprobs | null)[] {
  const u = new Uint32Array(data);
  const f = new Float32Array(data);
  return rows.map((k, r) => {
    if (k === null) return null;
    const o = r * LOGPROBS_ROW_WORDS;
    const count = Math.min(u[o + 2] as number, LOGPROBS_MAX_TOP);
    const top: RowLogprobs['top'] = [];
    for (let j = 0; j < count; j++)
      top.push({ id: u[o + 4 + 2 * j] as number, logprob: f[o + 5 + 2 * j] as number });
    return { lse: f[o] as number, id: u[o + 3] as number, logprob: f[o + 1] as number, top };
  });
}

/**
 * logprobs: out row r = the summary of logits row r with ids[r] as the chosen token, for every row
 * whose want is not skipped (one 256-thread workgroup per row).
 */
export function logprobs(
  b: DispatchBuilder,
  a: {
    /** [rows, n] f32 */ logits: GPUBuffer;
    /** [rows] u32, see packLogprobsWant */ want: GPUBuffer;
    /** [rows] u32 */ ids: GPUBuffer;
    /** [rows] x LOGPROBS_ROW_BYTES */ out: GPUBuffer;
    rows: number;
    n: number;
  },
): Dispatch {
  if (a.rows > MAX_GRID) throw new RangeError(`logprobs: ${a.rows} rows exceed one dispatch`);
  if (!(a.n >= 1)) throw new RangeError(`logprobs: n = ${a.n}`);
  if (a.rows * a.n >= 2 ** 32)
    throw new RangeError(`logprobs: ${a.rows} x ${a.n} logits overflow u32 indexing`);
  return b.make(
    'logprobs',
    () => shaderSource('logprobs'),
    packParams([['u32', a.n]]),
    [a.logits, a.want, a.ids, a.out],
    [a.rows, 1, 1],
  );
}
