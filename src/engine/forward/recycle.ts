/**
 * Token Recycling's stage of a step (Luo et al. 2024): the engine's adjacency table, for each
 * token id the RECYCLE_K ids its logits ranked highest the last time it was a step's input, is
 * updated on the GPU from every step's logit rows (recycle_topk, before any logit edit, so it holds
 * the model's own ranking), and a token tree of guesses for each logit row (the static shape
 * RECYCLE_TREE, token-tree.ts) is filled from it on the GPU (recycle_draft, from the id the row
 * chose) and comes back with the step's ids. No logits are
 * read back. The table is one per engine, shared by every sequence and kept across requests, as
 * in the paper: what the model ranked after a token in one request seeds the guesses of the next.
 * The guesses only propose: verification keeps output exact whatever the table holds.
 */
import type { GpuContext } from '../../gpu/device.js';
import type { Dispatch, DispatchBuilder } from '../../gpu/dispatch.js';
import { packTreeShape, recycleDraft } from '../../kernels/recycle-draft.js';
import { RECYCLE_MAX_K, RECYCLE_NONE, recycleTopk } from '../../kernels/recycle-topk.js';
import { RECYCLE_TREE, RECYCLE_TREE_NODES } from '../token-tree.js';

/** Candidates kept per token id (the paper's k). */
export const RECYCLE_K = RECYCLE_MAX_K;
/** Bytes per logit row of a step's readback that the guesses take (a token per tree node). */
export const RECYCLE_ROW_BYTES = RECYCLE_TREE_NODES * 4;

/** Makes the engine's table: [vocab, RECYCLE_K] u32, every entry RECYCLE_NONE (nothing seen). */
export function createRecycleTable(ctx: GpuContext, vocab: number): GPUBuffer {
  const buf = ctx.createBuffer(
    'recycle.table',
    vocab * RECYCLE_K * 4,
    GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST,
  );
  ctx.device.queue.writeBuffer(buf, 0, new Uint32Array(vocab * RECYCLE_K).fill(RECYCLE_NONE));
  return buf;
}

/** A plan's recycling dispatches and the guesses they write. */
export class RecycleStage {
  /** [rows, RECYCLE_TREE_NODES] u32: what the step copies back after its ids and logprobs rows. */
  readonly out: GPUBuffer;
  /** Updates the table from the logits (after the LM head, before logit edits). */
  readonly update: Dispatch;
  /** Builds each row's guesses from the id it chose (after the argmax or draw). */
  readonly draft: Dispatch;

  constructor(
    ctx: GpuContext,
    b: DispatchBuilder,
    rows: number,
    io: {
      table: GPUBuffer;
      /** [rows, vocab] f32 */ logits: GPUBuffer;
      /** [m] u32 the step's input ids */ inputIds: GPUBuffer;
      /** [rows] u32 */ logitRows: GPUBuffer;
      /** [rows] u32 the chosen ids */ outIds: GPUBuffer;
      vocab: number;
    },
    own: (b: GPUBuffer) => GPUBuffer,
  ) {
    this.out = own(
      ctx.createBuffer(
        'recycle.drafts',
        rows * RECYCLE_ROW_BYTES,
        GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC,
      ),
    );
    const n = io.vocab;
    const shape = packTreeShape(RECYCLE_TREE.parents, RECYCLE_TREE.ranks);
    const shapeBuf = own(
      ctx.createBuffer('recycle.shape', shape.byteLength, GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST),
    );
    ctx.device.queue.writeBuffer(shapeBuf, 0, shape);
    this.update = recycleTopk(b, {
      logits: io.logits,
      ids: io.inputIds,
      logitRows: io.logitRows,
      table: io.table,
      rows,
      n,
      k: RECYCLE_K,
    });
    this.draft = recycleDraft(b, {
      ids: io.outIds,
      table: io.table,
      drafts: this.out,
      shape: shapeBuf,
      rows,
      n,
      k: RECYCLE_K,
      nodes: RECYCLE_TREE_NODES,
    });
  }
}

/**
 * Each logit row's filled tree from a step's readback: a token per RECYCLE_TREE node, RECYCLE_NONE
 * where there is none (token-tree.ts `fromShape` prunes it).
 */
export function unpackDrafts(data: ArrayBuffer, offset: number, rows: number): number[][] {
  const all = new Uint32Array(data, offset, rows * RECYCLE_TREE_NODES);
  return Array.from({ length: rows }, (_, r) =>
    Array.from(all.subarray(r * RECYCLE_TREE_NODES, (r + 1) * RECYCLE_TREE_NODES)),
  );
}
