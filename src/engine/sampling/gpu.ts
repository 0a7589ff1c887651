/**
 * The GPU end of a sampled step: after the LM head, the repetition penalty (when a row has one)
 * and the `sample` kernel draw one id per logit row into the step's outIds, so a sampled decode
 * step reads back 4 bytes per sequence instead of the logits; the logit_adjust stage edits the
 * logits before, and the logprobs stage summarises them after (176 bytes per row that asks). One of
 * each per step plan, made when first needed, its inputs rewritten every step.
 */
import type { GpuContext } from '../../gpu/device.js';
import type { Dispatch, DispatchBuilder } from '../../gpu/dispatch.js';
import {
  ADJUST_EDIT_BYTES,
  ADJUST_ROW_BYTES,
  logitAdjust,
  packPenaltyRows,
  packSampleParams,
  PENALTY_ROW_BYTES,
  repetitionPenalty,
  sample,
  SAMPLE_ROW_BYTES,
  type PenaltyRow,
  type SampleRowParams,
} from '../../kernels/sample.js';
import { LOGPROBS_ROW_BYTES, logprobs, packLogprobsWant } from '../../kernels/logprobs.js';

/** How one logit row is drawn on the GPU. */
export interface RowSampling extends SampleRowParams {
  /** 1 = off. */
  repetitionPenalty: number;
  /** Token ids the penalty applies to (duplicates allowed; they are deduplicated here). */
  context: readonly number[];
}

const USAGE_IN = () => GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST;

export class GpuSampling {
  private readonly params: GPUBuffer;
  private readonly penaltyRows: GPUBuffer;
  private readonly tokens: GPUBuffer;
  /** The penalty pass, then the draw. */
  private readonly dispatches: [Dispatch, Dispatch];

  constructor(
    private readonly ctx: GpuContext,
    b: DispatchBuilder,
    private readonly rows: number,
    /** Longest context: the most penalty ids a row can have. */
    private readonly maxContext: number,
    io: { /** [rows, vocab] f32 */ logits: GPUBuffer; /** [rows] u32 */ ids: GPUBuffer; vocab: number },
    own: (b: GPUBuffer) => GPUBuffer,
  ) {
    this.params = own(ctx.createBuffer('sample.params', rows * SAMPLE_ROW_BYTES, USAGE_IN()));
    this.penaltyRows = own(ctx.createBuffer('sample.penalty_rows', rows * PENALTY_ROW_BYTES, USAGE_IN()));
    this.tokens = own(ctx.createBuffer('sample.penalty_tokens', rows * maxContext * 4, USAGE_IN()));
    const common = { logits: io.logits, rows, n: io.vocab };
    this.dispatches = [
      repetitionPenalty(b, { ...common, penaltyRows: this.penaltyRows, tokens: this.tokens }),
      sample(b, { ...common, params: this.params, ids: io.ids }),
    ];
  }

  /** Writes the rows' inputs and returns the dispatches that draw them (the penalty only if used). */
  prepare(rows: readonly RowSampling[]): Dispatch[] {
    if (rows.length !== this.rows)
      throw new RangeError(`sampling for ${rows.length} rows, plan has ${this.rows}`);
    const queue = this.ctx.device.queue;
    const penalties: PenaltyRow[] = [];
    const ids: number[] = [];
    for (const row of rows) {
      const unique = row.repetitionPenalty === 1 ? [] : [...new Set(row.context)].slice(0, this.maxContext);
      penalties.push({ start: ids.length, count: unique.length, penalty: row.repetitionPenalty });
      ids.push(...unique);
    }
    queue.writeBuffer(this.params, 0, packSampleParams(rows));
    queue.writeBuffer(this.penaltyRows, 0, packPenaltyRows(penalties));
    if (ids.length > 0) queue.writeBuffer(this.tokens, 0, Uint32Array.from(ids));
    const withPenalty = rows.some((r) => r.repetitionPenalty !== 1);
    return withPenalty ? this.dispatches : this.dispatches.slice(1);
  }
}

/** The most logit-bias entries a request may give (the edit buffer holds these plus its context). */
export const MAX_LOGIT_BIAS = 1024;

/** One logit row's edits (unique ids -> added), grammar mask (null: none) and min-p cut. */
export interface RowAdjust {
  edits: ReadonlyMap<number, number>;
  mask: Int32Array | null;
  /** T·ln(min_p); absent or -Infinity: no cut. */
  minPOffset?: number;
}

/**
 * The logit_adjust stage of a plan: logit bias, presence / frequency penalties and grammar masks,
 * applied to the logits after the LM head (and the repetition penalty) and before argmax or the
 * sample kernel. Built on the first request that adjusts logits.
 */
export class GpuLogitAdjust {
  private readonly rowsBuf: GPUBuffer;
  private readonly edits: GPUBuffer;
  private readonly masks: GPUBuffer;
  private readonly dispatch: Dispatch;
  private readonly words: number;
  private readonly maxEdits: number;
  private readonly rowData: Uint32Array;

  constructor(
    private readonly ctx: GpuContext,
    b: DispatchBuilder,
    private readonly rows: number,
    maxContext: number,
    io: { /** [rows, vocab] f32 */ logits: GPUBuffer; vocab: number },
    own: (b: GPUBuffer) => GPUBuffer,
  ) {
    this.words = Math.ceil(io.vocab / 32);
    this.maxEdits = maxContext + MAX_LOGIT_BIAS;
    this.rowsBuf = own(ctx.createBuffer('logit_adjust.rows', rows * ADJUST_ROW_BYTES, USAGE_IN()));
    this.edits = own(
      ctx.createBuffer('logit_adjust.edits', rows * this.maxEdits * ADJUST_EDIT_BYTES, USAGE_IN()),
    );
    this.masks = own(ctx.createBuffer('logit_adjust.masks', rows * this.words * 4, USAGE_IN()));
    this.rowData = new Uint32Array(rows * 4);
    this.dispatch = logitAdjust(b, {
      logits: io.logits,
      rows: this.rowsBuf,
      edits: this.edits,
      masks: this.masks,
      rowCount: rows,
      n: io.vocab,
    });
  }

  /** Writes the rows' edits and masks (null: the row is left alone) and returns the dispatch. */
  prepare(rows: readonly (RowAdjust | null)[]): Dispatch {
    if (rows.length !== this.rows)
      throw new RangeError(`logit adjust for ${rows.length} rows, plan has ${this.rows}`);
    const queue = this.ctx.device.queue;
    const data = this.rowData;
    data.fill(0);
    const f = new Float32Array(data.buffer);
    for (let i = 0; i < rows.length; i++) f[4 * i + 3] = rows[i]?.minPOffset ?? -Infinity;
    let start = 0;
    let maskRows = 0;
    const editData: number[] = [];
    rows.forEach((row, i) => {
      if (!row) return;
      const count = Math.min(row.edits.size, this.maxEdits);
      data[4 * i] = start;
      data[4 * i + 1] = count;
      let k = 0;
      for (const [id, add] of row.edits) {
        if (k++ >= count) break;
        editData.push(id, add);
      }
      start += count;
      if (row.mask) {
        queue.writeBuffer(this.masks, maskRows * this.words * 4, row.mask, 0, this.words);
        data[4 * i + 2] = ++maskRows;
      }
    });
    queue.writeBuffer(this.rowsBuf, 0, data);
    if (editData.length > 0) {
      const buf = new ArrayBuffer(editData.length * 4);
      const u = new Uint32Array(buf);
      const f = new Float32Array(buf);
      for (let j = 0; j < editData.length; j += 2) {
        u[j] = editData[j] as number;
        f[j + 1] = editData[j + 1] as number;
      }
      queue.writeBuffer(this.edits, 0, buf);
    }
    return this.dispatch;
  }
}

/**
 * The logprobs stage of a plan: after argmax or the draw, each row that asks gets its log-sum-exp,
 * chosen token's logprob and alternatives written to `out` (LOGPROBS_ROW_BYTES per logit row), read
 * back with the ids. Built on the first request that asks for logprobs.
 */
export class GpuLogprobs {
  /** [rows] x LOGPROBS_ROW_BYTES: what the step copies back after its ids. */
  readonly out: GPUBuffer;
  private readonly want: GPUBuffer;
  private readonly wantData: Uint32Array;
  private readonly dispatch: Dispatch;

  constructor(
    private readonly ctx: GpuContext,
    b: DispatchBuilder,
    private readonly rows: number,
    io: { /** [rows, vocab] f32 */ logits: GPUBuffer; /** [rows] u32 */ ids: GPUBuffer; vocab: number },
    own: (b: GPUBuffer) => GPUBuffer,
  ) {
    this.want = own(ctx.createBuffer('logprobs.want', rows * 4, USAGE_IN()));
    this.out = own(
      ctx.createBuffer(
        'logprobs.out',
        rows * LOGPROBS_ROW_BYTES,
        GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC,
      ),
    );
    this.wantData = new Uint32Array(rows);
    this.dispatch = logprobs(b, { ...io, want: this.want, out: this.out, rows, n: io.vocab });
  }

  /** Writes which rows ask for how many alternatives (null: none) and returns the dispatch. */
  prepare(rows: readonly (number | null)[]): Dispatch {
    if (rows.length !== this.rows)
      throw new RangeError(`logprobs for ${rows.length} rows, plan has ${this.rows}`);
    this.ctx.device.queue.writeBuffer(this.want, 0, packLogprobsWant(rows, this.wantData));
    return this.dispatch;
  }
}
