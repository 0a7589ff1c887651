/**
 * A step plan: everything one step shape (m rows, r logit rows) needs, made once and replayed
 * every step of that shape, so the hot path creates no GPU objects: the buffers (buffers.ts), the
 * recorded graph (graph.ts), split-K attention scratch for decode-shaped steps, the CPU staging of
 * the step inputs, and the GPU sampling stage once sampling is enabled.
 */
import type { GpuContext } from '../../gpu/device.js';
import { DispatchBuilder } from '../../gpu/dispatch.js';
import {
  ATTENTION_DECODE_MAX_ROWS,
  AttentionDecodeScratch,
  pickDecodeChunk,
  supportsAttentionDecode,
} from '../../kernels/attention-decode.js';
import { LOGPROBS_ROW_BYTES } from '../../kernels/logprobs.js';
import { ROW_INFO_WORDS } from '../../kernels/row-info.js';
import { GpuLogitAdjust, GpuLogprobs, GpuSampling } from '../sampling/gpu.js';
import { createStepBuffers, type StepBuffers } from './buffers.js';
import { RECYCLE_ROW_BYTES, RecycleStage } from './recycle.js';
import { recordGraph, type RecordedGraph } from './graph.js';
import type { ForwardState } from './state.js';

/** Readback buffers per plan for pipelined decode: the scheduler keeps at most 3 steps in flight. */
export const PIPELINE_RING = 4;

export class StepPlan {
  readonly bufs: StepBuffers;
  readonly graph: RecordedGraph;
  /** Split-K attention partials, for decode-shaped plans. */
  readonly decode: AttentionDecodeScratch | null = null;
  /**
   * CPU staging of the step inputs, reused every step: [m] ids, [4m] row info, [m] slots, [r]
   * rows, [m] window lanes.
   */
  readonly staging: {
    ids: Uint32Array;
    rowInfo: Uint32Array;
    slots: Uint32Array;
    logitRows: Uint32Array;
    /** [m] slots in the sliding pool (empty without one). */
    slidingSlots: Uint32Array;
    lanes: Uint32Array;
  };
  /** Draws sampled tokens on the GPU; made by `enableSampling` (its pipeline is slow to compile). */
  sampling: GpuSampling | null = null;
  /** Logit bias, penalties and grammar masks; made by `enableAdjust`. */
  adjust: GpuLogitAdjust | null = null;
  /** Logprobs of the chosen ids; made by `enableLogprobs`. */
  logprobs: GpuLogprobs | null = null;
  /** Token Recycling's table update and guesses; made by `enableRecycling`. */
  recycle: RecycleStage | null = null;
  private readonly owned: GPUBuffer[] = [];
  private readonly builder: DispatchBuilder;
  /** Mappable id buffers of pipelined steps, one per step in flight (made on first use). */
  private readonly ring: GPUBuffer[] = [];
  private ringNext = 0;

  constructor(
    private readonly ctx: GpuContext,
    private readonly model: ForwardState,
    readonly m: number,
    readonly r: number,
    /** The unified max per layer its decode attention uses (the model's, or a warm-up's). */
    phi: readonly (number | null)[] = model.attentionPhi,
  ) {
    const { spec, kv } = model;
    this.builder = new DispatchBuilder(ctx);
    this.bufs = createStepBuffers(ctx, model, m, r, (b) => (this.owned.push(b), b));
    // Decode-shaped steps (a few rows over a long context) use split-K attention; prefill chunks
    // the tiled attention_prefill (16 rows per workgroup, already rows / 16 × heads workgroups).
    // Other shapes (more than 8 query heads per KV head, unusual head_dim) take it too, or the
    // one-row attention where head_dim is not a multiple of 4.
    if (
      m <= ATTENTION_DECODE_MAX_ROWS &&
      supportsAttentionDecode(spec.numHeads, spec.numKvHeads, spec.headDim)
    ) {
      const maxContext = model.contextLength;
      const shape = {
        heads: spec.numHeads,
        kvHeads: spec.numKvHeads,
        headDim: spec.headDim,
        kvDtype: kv.dtype,
      };
      const { chunk, form } = model.choices.attentionDecode(shape, m, maxContext) ?? {
        chunk: pickDecodeChunk({ maxContext, kvHeads: spec.numKvHeads, rows: m }),
        form: 'split' as const,
      };
      this.decode = new AttentionDecodeScratch(ctx, {
        rows: m,
        heads: spec.numHeads,
        headDim: spec.headDim,
        maxContext,
        chunk,
        form,
      });
    }
    this.graph = recordGraph(this.builder, model, this.bufs, { m, r, decode: this.decode, phi });
    this.staging = {
      ids: new Uint32Array(m),
      rowInfo: new Uint32Array(ROW_INFO_WORDS * m),
      slots: new Uint32Array(m),
      logitRows: new Uint32Array(r),
      slidingSlots: new Uint32Array(kv.sliding ? m : 0),
      lanes: new Uint32Array(m),
    };
  }

  /** Makes the GPU sampling stage (once; a plan without logit rows never samples). */
  enableSampling(): void {
    if (this.r === 0) return;
    this.sampling ??= new GpuSampling(
      this.ctx,
      this.builder,
      this.r,
      this.model.contextLength,
      { logits: this.bufs.logits, ids: this.bufs.outIds, vocab: this.model.spec.vocabSize },
      (b) => (this.owned.push(b), b),
    );
  }

  /** Makes the logit_adjust stage (once). */
  enableAdjust(): void {
    if (this.r === 0) return;
    this.adjust ??= new GpuLogitAdjust(
      this.ctx,
      this.builder,
      this.r,
      this.model.contextLength,
      { logits: this.bufs.logits, vocab: this.model.spec.vocabSize },
      (b) => (this.owned.push(b), b),
    );
  }

  /** Makes the logprobs stage (once). */
  enableLogprobs(): void {
    if (this.r === 0) return;
    this.logprobs ??= new GpuLogprobs(
      this.ctx,
      this.builder,
      this.r,
      { logits: this.bufs.logits, ids: this.bufs.outIds, vocab: this.model.spec.vocabSize },
      (b) => (this.owned.push(b), b),
    );
  }

  /** Makes the Token Recycling stage over the engine's `table` (once). */
  enableRecycling(table: GPUBuffer): void {
    if (this.r === 0) return;
    this.recycle ??= new RecycleStage(
      this.ctx,
      this.builder,
      this.r,
      {
        table,
        logits: this.bufs.logits,
        inputIds: this.bufs.ids,
        logitRows: this.bufs.logitRows,
        outIds: this.bufs.outIds,
        vocab: this.model.spec.vocabSize,
      },
      (b) => (this.owned.push(b), b),
    );
  }

  /**
   * The next buffer of the readback ring: a step in flight keeps its buffer mapped-pending until
   * its ids are read, so the next step copies into another one (PIPELINE_RING buffers cover the
   * deepest pipeline the scheduler runs, with one to spare). Each holds the step's ids, then its
   * logprobs rows (LOGPROBS_ROW_BYTES per logit row) when it has any, then its recycled guesses
   * (RECYCLE_ROW_BYTES per logit row) when it has the stage.
   */
  nextReadback(): GPUBuffer {
    const i = this.ringNext;
    this.ringNext = (i + 1) % PIPELINE_RING;
    let b = this.ring[i];
    if (!b) {
      b = this.ctx.createBuffer(
        `readback.ids.${i}`,
        Math.max(4, this.r * (4 + LOGPROBS_ROW_BYTES + RECYCLE_ROW_BYTES)),
        GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
      );
      this.ring[i] = b;
      this.owned.push(b);
    }
    if (b.mapState !== 'unmapped')
      throw new RangeError('pipelined readback ring overrun: a step in flight still holds this buffer');
    return b;
  }

  destroy(): void {
    for (const b of this.owned) this.ctx.destroyBuffer(b);
    this.decode?.destroy();
    this.builder.destroy();
  }
}
