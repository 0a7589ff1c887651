/**
 * The scheduler's sequences and their KV blocks: the waiting and running lists, admission (with
 * prefix-cache reuse), growth by one slot per token (preempting the newest sequence when the pool
 * is full), preemption, the end of a sequence, and the rules every drawn token goes through (EOS,
 * grammar completion, max tokens, context). The plain step, the pipelined burst
 * (`pipeline.ts`) and speculative verification (`verify.ts`) all hand their tokens on here, so a
 * token is treated the same whichever way it was produced.
 */
import type { FinishReason } from '../../api/types.js';
import { KilnError } from '../../errors.js';
import type { ForwardModel, StepInput } from '../forward/model.js';
import { OutOfBlocksError, type BlockCopy, type BlockManager } from '../kv/block-manager.js';
import { isQuantKv, kvGroupBytes } from '../../kernels/kv-dtype.js';
import { BLOCK_TOKENS, kvBlockBytes, type PagedKvCache } from '../kv/cache.js';
import { pushSlidingRows, SlidingPool } from '../kv/sliding-pool.js';
import type { SequenceSampler } from '../sampling/sequence.js';
import type { Speculator } from '../speculative.js';
import type { ScheduledOutcome, ScheduledRequest, SchedulerOptions } from './types.js';

export interface Seq {
  readonly id: number;
  readonly req: ScheduledRequest;
  readonly arrival: number;
  /** Prompt, then every generated token. */
  readonly tokens: number[];
  /** Tokens whose KV is in the cache. */
  computed: number;
  produced: number;
  readonly sampler: SequenceSampler;
  firstTokenAt: number | null;
  cachedPromptTokens: number;
  preemptions: number;
  /**
   * Positions appended ahead of their token (pipelined decode): slots reserved for steps in flight
   * whose input id is still on the GPU. Their token ids are set as the ids arrive.
   */
  reserved: number;
  /** Guesses the next tokens (speculative decoding of a greedy sequence); null: plain decode. */
  readonly spec: Speculator | null;
  /** Set by `cancel` (a consumer that stopped reading) or the request's abort signal. */
  cancelled: boolean;
  finished: boolean;
  readonly resolve: (o: ScheduledOutcome) => void;
  readonly reject: (e: unknown) => void;
  readonly submittedAt: number;
}

/** A step's inputs, built row by row. */
export interface StepRows extends StepInput {
  tokens: number[];
  positions: number[];
  slots: number[];
  blockTableOffsets: number[];
  blockTable: number[];
  logitRows: number[];
  /** Empty without a sliding pool. */
  slidingSlots: number[];
  slidingBlockTable: number[];
  /** Token-tree rows' masks; rows past its end (and undefined entries) are plain. */
  tree: ({ base: number; mask: number } | undefined)[];
}

export function emptyRows(): StepRows {
  return {
    tokens: [],
    positions: [],
    slots: [],
    blockTableOffsets: [],
    blockTable: [],
    logitRows: [],
    slidingSlots: [],
    slidingBlockTable: [],
    tree: [],
  };
}

/** The scheduler's counters (see SchedulerStats). */
export interface StepCounts {
  preemptions: number;
  steps: number;
  aheadSteps: number;
  adjustedAheadSteps: number;
  specSteps: number;
  drafted: number;
  accepted: number;
}

export class Batch {
  readonly waiting: Seq[] = [];
  readonly running: Seq[] = [];
  readonly counts: StepCounts = {
    preemptions: 0,
    steps: 0,
    aheadSteps: 0,
    adjustedAheadSteps: 0,
    specSteps: 0,
    drafted: 0,
    accepted: 0,
  };
  /**
   * Bytes in transit of `moveKv` and `copyBlocks` (grown as needed): WebGPU refuses a copy within
   * one buffer, so a move or copy inside the pool goes out to this buffer and back.
   */
  private moveScratch: GPUBuffer | null = null;
  /** The sliding layers' pool (kv/sliding-pool.ts), when the cache has one. */
  readonly sliding: SlidingPool | null;

  constructor(
    readonly forward: ForwardModel,
    readonly kv: PagedKvCache,
    readonly blocks: BlockManager,
    readonly opts: SchedulerOptions,
    /** Turns on the GPU state asked for and not yet given (see Turns). */
    private readonly turnWaiters: () => number,
  ) {
    this.sliding = kv.sliding ? new SlidingPool(kv.sliding.layout, kv.sliding.blocks, BLOCK_TOKENS) : null;
  }

  /**
   * Adds `s`'s rows [from, to) to a step's sliding-pool inputs (nothing without a pool); call after
   * its full block table was added, which the sliding one pads to.
   */
  addSliding(rows: StepRows, s: Seq, from: number, to: number): void {
    pushSlidingRows(rows, this.sliding, s.id, from, to, this.blocks.blockTable(s.id).length);
  }

  /** The longest `s` can grow: its sliding-pool reservation is sized for it. */
  private maxLength(s: Seq): number {
    return Math.min(s.req.prompt.length + s.req.maxTokens, this.opts.contextLength);
  }

  /** A request waits to be admitted or other work waits for the GPU: a pipelined burst yields. */
  othersWaiting(): boolean {
    return this.waiting.length > 0 || this.turnWaiters() > 0;
  }

  finish(s: Seq, reason: FinishReason): void {
    if (s.finished) return;
    s.finished = true;
    if (this.blocks.has(s.id)) this.blocks.free(s.id);
    if (this.sliding?.has(s.id)) this.sliding.free(s.id);
    s.sampler.dispose();
    const drop = (list: Seq[]) => {
      const i = list.indexOf(s);
      if (i >= 0) list.splice(i, 1);
    };
    drop(this.running);
    drop(this.waiting);
    s.resolve({
      finishReason: reason,
      submittedAt: s.submittedAt,
      firstTokenAt: s.firstTokenAt,
      finishedAt: performance.now(),
      cachedPromptTokens: s.cachedPromptTokens,
      preemptions: s.preemptions,
    });
  }

  /**
   * Hands on a token drawn for `s` (logprob: its alternatives, when asked for): ends the sequence
   * on EOS (not emitted), else appends and emits it, then ends it when its grammar is complete
   * (only end-of-sequence could follow), at its max tokens or at the context. True when the
   * sequence goes on (the token still needs a KV slot: `grow`, or a slot reserved ahead).
   */
  emit(s: Seq, token: number, logprob?: Parameters<ScheduledRequest['onToken']>[1]): boolean {
    s.firstTokenAt ??= performance.now();
    if (s.req.eos.has(token)) {
      this.finish(s, 'stop');
      return false;
    }
    s.tokens.push(token);
    s.produced++;
    const open = s.sampler.accept(token);
    s.req.onToken(token, logprob);
    if (!open) {
      this.finish(s, 'stop');
      return false;
    }
    if (s.produced >= s.req.maxTokens || s.tokens.length >= this.opts.contextLength) {
      this.finish(s, 'length');
      return false;
    }
    return true;
  }

  /** Frees a running sequence's blocks; it is recomputed from its tokens when readmitted. */
  preempt(s: Seq): void {
    this.blocks.free(s.id);
    this.sliding?.free(s.id);
    s.computed = 0;
    s.reserved = 0;
    s.preemptions++;
    this.counts.preemptions++;
    this.running.splice(this.running.indexOf(s), 1);
    // Back in line by arrival, ahead of everything that came after it.
    const at = this.waiting.findIndex((w) => w.arrival > s.arrival);
    this.waiting.splice(at < 0 ? this.waiting.length : at, 0, s);
  }

  /**
   * Whether speculation may verify token trees: a float KV cache (a row moves by a plain copy) and
   * no sliding pool (whose windows count slots as positions). Otherwise drafts are chains.
   */
  get trees(): boolean {
    return !isQuantKv(this.kv.dtype) && !this.kv.sliding;
  }

  /**
   * Moves `s`'s KV rows (every layer's K and V) from position `from` to `to` of each move, in
   * order, before the next step reads them: a verified tree's accepted nodes to their places on
   * the path. Float caches only (`trees`).
   */
  moveKv(s: Seq, moves: readonly { from: number; to: number }[]): void {
    if (moves.length === 0) return;
    const { spec, ctx } = this.forward;
    const rowBytes = kvGroupBytes(this.kv.dtype, spec.headDim) / BLOCK_TOKENS;
    const at = (slot: number, h: number) =>
      ((Math.floor(slot / BLOCK_TOKENS) * spec.numKvHeads + h) * BLOCK_TOKENS + (slot % BLOCK_TOKENS)) *
      rowBytes;
    const buffers = [...this.kv.k, ...this.kv.v];
    // A copy within one buffer is not allowed: every row goes to a scratch buffer, then all back.
    const scratch = this.scratch(moves.length * buffers.length * spec.numKvHeads * rowBytes);
    const enc = ctx.device.createCommandEncoder({ label: 'kiln.kv_move' });
    for (const back of [false, true]) {
      let o = 0;
      for (const m of moves) {
        const slot = this.blocks.slotFor(s.id, back ? m.to : m.from);
        for (const buf of buffers) {
          for (let h = 0; h < spec.numKvHeads; h++, o += rowBytes) {
            if (back) enc.copyBufferToBuffer(scratch, o, buf, at(slot, h), rowBytes);
            else enc.copyBufferToBuffer(buf, at(slot, h), scratch, o, rowBytes);
          }
        }
      }
    }
    ctx.device.queue.submit([enc.finish()]);
  }

  /** Copies blocks (every layer's K and V) before the next step writes into them. */
  copyBlocks(copies: readonly BlockCopy[]): void {
    if (copies.length === 0) return;
    const bytes = kvBlockBytes(this.forward.spec, this.kv.dtype);
    const window = this.kv.lanes;
    const laneBytes = window ? this.kv.window.map((w) => w.size / window.lanes) : [];
    // Each (buffer, from, to, size) within one buffer, staged through the scratch buffer.
    const parts: { buf: GPUBuffer; from: number; to: number; size: number }[] = [];
    for (const c of copies) {
      // Full-pool layers only: sliding blocks are never shared (no fork or prefix hit with a sliding
      // pool), so a copy-on-write never concerns them.
      this.kv.k.forEach((k, l) => {
        if (this.kv.isSliding(l)) return;
        for (const buf of [k, this.kv.v[l] as GPUBuffer]) {
          parts.push({ buf, from: c.src * bytes, to: c.dst * bytes, size: bytes });
        }
      });
      // The copy's rows so far in the recent window too (low-rank formats), for its factors.
      const lanes = window?.fork(c.src, c.dst);
      if (lanes) {
        this.kv.window.forEach((buf, l) => {
          const n = laneBytes[l] as number;
          parts.push({ buf, from: lanes.from * n, to: lanes.to * n, size: n });
        });
      }
    }
    const scratch = this.scratch(parts.reduce((a, p) => a + p.size, 0));
    const enc = this.forward.ctx.device.createCommandEncoder({ label: 'kiln.kv_copy' });
    for (const back of [false, true]) {
      let o = 0;
      for (const p of parts) {
        if (back) enc.copyBufferToBuffer(scratch, o, p.buf, p.to, p.size);
        else enc.copyBufferToBuffer(p.buf, p.from, scratch, o, p.size);
        o += p.size;
      }
    }
    this.forward.ctx.device.queue.submit([enc.finish()]);
  }

  /** The scratch buffer of at least `bytes`. */
  private scratch(bytes: number): GPUBuffer {
    const { ctx } = this.forward;
    if (!this.moveScratch || this.moveScratch.size < bytes) {
      if (this.moveScratch) ctx.destroyBuffer(this.moveScratch);
      this.moveScratch = ctx.createBuffer(
        'kv.move',
        bytes,
        GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST,
      );
    }
    return this.moveScratch;
  }

  /** Gives `token` (just appended to s.tokens) a KV slot, preempting the newest sequences if needed. */
  grow(s: Seq, token: number): void {
    for (;;) {
      try {
        this.copyBlocks(this.blocks.appendSlots(s.id, [token]).copies);
        return;
      } catch (e) {
        if (!(e instanceof OutOfBlocksError)) throw e;
        const victim = this.running.reduce((a, b) => (b.arrival > a.arrival ? b : a));
        this.preempt(victim);
        if (victim === s) return;
      }
    }
  }

  admit(): void {
    while (this.waiting.length > 0) {
      const s = this.waiting[0] as Seq;
      const slidingShort = this.sliding !== null && !this.sliding.canReserve(this.maxLength(s));
      if (slidingShort || !this.blocks.canAdmit(s.tokens)) {
        if (this.running.length === 0) {
          throw new KilnError(
            `internal: sequence of ${s.tokens.length} tokens cannot be admitted to an empty pool`,
          );
        }
        return;
      }
      const a = this.blocks.admit(s.id, s.tokens);
      this.sliding?.reserve(s.id, this.maxLength(s));
      s.computed = a.cachedTokens;
      if (s.preemptions === 0) s.cachedPromptTokens = a.cachedTokens;
      this.waiting.shift();
      this.running.push(s);
    }
  }
}
