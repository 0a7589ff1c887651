/**
 * The GPU end of a sampled step: after the LM head, the repetition penalty (when a row has one)
 * and the `sample` kernel draw one id per logit row into the step's outIds, so a sampled decode
 * step reads back 4 bytes per sequence instead of the logits. One stage per step plan, its inputs
 * rewritten every sampled step.
 */
import type { GpuContext } from '../../gpu/device.js';
import type { Dispatch, DispatchBuilder } from '../../gpu/dispatch.js';
import {
  packPenaltyRows,
  packSampleParams,
  PENALTY_ROW_BYTES,
  repetitionPenalty,
  sample,
  SAMPLE_ROW_BYTES,
  type PenaltyRow,
  type SampleRowParams,
} from '../../kernels/sample.js';

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
