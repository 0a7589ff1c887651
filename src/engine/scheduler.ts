/**
 * Continuous batching (Orca / vLLM) with chunked prefill (SARATHI): every step runs ONE forward
 * pass over rows from many sequences: one row for each decoding sequence, then prefill chunks of
 * the others in arrival order, up to a token budget, so a long prompt arriving while others decode
 * delays each of their tokens by at most one budget-sized step, never by its whole prefill.
 *
 * KV memory is the BlockManager's pool of 16-token blocks over the PagedKvCache buffers. A new
 * request reuses cached full blocks of an identical prefix (its prefill skips them); when a
 * sequence needs a block and none is free, the newest running sequence is preempted: its blocks
 * are freed and it waits to be recomputed from its tokens so far (prompt + generated), which
 * gives the same tokens it would have produced (the sampler's state is per request).
 *
 * The scheduler is the only place step inputs are built and the only user of the GPU state
 * between steps: exclusive work (teacher-forced logits, quantizer calibration, profiling, kernel
 * tuning, warm-up) takes a `hold`, which waits its turn among the steps, gets KV blocks of its
 * own, and lets steps run again when released.
 *
 * This file plans and runs steps; the pieces live in `schedule/`: `batch.ts` (the sequences, their
 * blocks, admission, preemption and the rules every token goes through), `turns.ts` (the GPU
 * state's turns and holds), `pipeline.ts` (pipelined decode; `adjusted-burst.ts` when a row's mask or edits need the
 * previous id), `verify.ts` (speculative
 * verification's glue) and `types.ts` (the public types, re-exported here).
 */
import { InvalidRequestError } from '../errors.js';
import type { RowLogprobs } from '../kernels/logprobs.js';
import type { ForwardModel } from './forward/model.js';
import { runSampledStep, runStep } from './forward/step.js';
import type { BlockManager } from './kv/block-manager.js';
import { BLOCK_TOKENS, type PagedKvCache } from './kv/cache.js';
import type { RowAdjust, RowSampling } from './sampling/gpu.js';
import { SequenceSampler } from './sampling/sequence.js';
import { Batch, emptyRows, type Seq } from './schedule/batch.js';
import { adjustedBurst } from './schedule/adjusted-burst.js';
import { decodeBurst, needsTail, pipelinable } from './schedule/pipeline.js';
import { makeHold, Turns } from './schedule/turns.js';
import type {
  Hold,
  ScheduledOutcome,
  ScheduledRequest,
  SchedulerOptions,
  SchedulerStats,
} from './schedule/types.js';
import { SpecClock } from './schedule/spec-clock.js';
import {
  absorbVerified,
  guess,
  guessShare,
  offerRecycled,
  pushTreeRows,
  verifyGuesses,
} from './schedule/verify.js';
import type { TokenTree } from './token-tree.js';
import { Speculator } from './speculative.js';

export type * from './schedule/types.js';

export class Scheduler {
  private nextId = 1;
  private arrivals = 0;
  private looping = false;
  /** True while a step's forward pass may be using the sequences' blocks. */
  private inStep = false;
  private failure: unknown = null;
  /** The turns of steps and holds on the GPU state, in arrival order. */
  private readonly turns = new Turns();
  /** Resolved when the last request ends (see `whenIdle`). */
  private idleWaiters: (() => void)[] = [];
  private readonly batch: Batch;
  /** Speculation's wall-time account: verifying steps against plain pipelined decode. */
  private readonly specClock = new SpecClock(() => this.batch.counts.steps);
  private readonly waiting: Seq[];
  private readonly running: Seq[];

  constructor(
    private readonly forward: ForwardModel,
    kv: PagedKvCache,
    private readonly blocks: BlockManager,
    private readonly opts: SchedulerOptions,
  ) {
    this.batch = new Batch(forward, kv, blocks, opts, () => this.turns.waiters);
    this.waiting = this.batch.waiting;
    this.running = this.batch.running;
    // Token Recycling's table on the GPU, learning from every step (forward/recycle.ts).
    if (opts.speculative && opts.speculative.method !== 'lookup') forward.enableRecycling();
  }

  /** Holds the GPU state for exclusive work between steps (see Hold). */
  async hold(): Promise<Hold> {
    const release = await this.turns.take();
    return makeHold(this.blocks, this.batch.sliding, this.nextId++, release);
  }

  /** No request is running or waiting. */
  get idle(): boolean {
    return this.running.length === 0 && this.waiting.length === 0;
  }

  /** Settles once no request is running or waiting (at once if none is). */
  whenIdle(): Promise<void> {
    if (this.idle && !this.looping) return Promise.resolve();
    return new Promise((r) => this.idleWaiters.push(r));
  }

  /**
   * Runs `work` holding the GPU state at a moment when no request runs: background work (kernel
   * tuning) that must never delay a request by more than one such piece. A request that arrives
   * while the hold is queued goes first.
   */
  async whenIdleExclusive<T>(work: () => Promise<T>): Promise<T> {
    for (;;) {
      await this.whenIdle();
      const h = await this.hold();
      if (this.idle) {
        try {
          return await work();
        } finally {
          h.release();
        }
      }
      h.release();
    }
  }

  /** Runs `work` holding the GPU state; the hold is released however it ends. */
  async exclusive<T>(work: (hold: Hold) => Promise<T>): Promise<T> {
    const h = await this.hold();
    try {
      return await work(h);
    } finally {
      h.release();
    }
  }

  /**
   * Queues a request; resolves when it ends. Refuses at once what can never fit: a prompt plus
   * its generation longer than the context, or needing more KV blocks than the whole pool.
   */
  submit(req: ScheduledRequest): { done: Promise<ScheduledOutcome>; cancel: () => void } {
    if (this.failure) throw this.failure;
    const total = req.prompt.length + req.maxTokens;
    if (req.prompt.length < 1) throw new InvalidRequestError('a request needs at least one prompt token');
    const needed = Math.ceil(Math.min(total, this.opts.contextLength) / BLOCK_TOKENS);
    if (needed > this.blocks.stats().totalBlocks) {
      throw new InvalidRequestError(
        `a request of ${req.prompt.length} prompt tokens generating up to ${req.maxTokens} needs ${needed} KV cache blocks of ${BLOCK_TOKENS} tokens, but the pool has ${this.blocks.stats().totalBlocks}; lower max tokens or raise the KV cache size`,
      );
    }
    let seq!: Seq;
    const sampler = new SequenceSampler(
      req.sampling,
      req.seed,
      req.adjust,
      req.matcher ?? null,
      req.logprobs ?? null,
    );
    const speculative = this.opts.speculative;
    const done = new Promise<ScheduledOutcome>((resolve, reject) => {
      seq = {
        id: this.nextId++,
        req,
        arrival: this.arrivals++,
        tokens: [...req.prompt],
        computed: 0,
        reserved: 0,
        produced: 0,
        sampler,
        spec:
          speculative && !sampler.constrained
            ? new Speculator(speculative, speculative.timed && sampler.greedy ? this.specClock : null)
            : null,
        firstTokenAt: null,
        cachedPromptTokens: 0,
        preemptions: 0,
        cancelled: false,
        finished: false,
        resolve,
        reject,
        submittedAt: performance.now(),
      };
    });
    // Sampled requests draw on the GPU: every plan gets the sampling stage from now on.
    if (!seq.sampler.greedy && this.opts.gpuSampling) this.forward.enableSampling();
    if (seq.sampler.adjusts) this.forward.enableAdjust();
    if (seq.sampler.logprobs !== null) this.forward.enableLogprobs();
    this.waiting.push(seq);
    req.signal?.addEventListener('abort', () => this.cancelNow(seq), { once: true });
    this.kick();
    return { done, cancel: () => this.cancelNow(seq) };
  }

  /**
   * The wall ms since `t0` that speculation's clock counts for a step, `planned` the model's
   * planningMs at `t0`. What the step spent making a plan (recording it, compiling kernel variants
   * first used) is left out: later steps of its shape do not pay it again. The rest counts (leaving
   * out a new shape's whole step hid slow wide trees from the clock), unless making the plan took
   * most of it: then what else a plan's first run costs (first use of its buffers) cannot be told
   * from the step's own work, and the step is not counted (null).
   */
  private timedMs(t0: number, planned: number): number | null {
    const plan = this.forward.planningMs - planned;
    const total = performance.now() - t0;
    return plan > total / 2 ? null : total - plan;
  }

  /**
   * Ends a request: at once between steps (its blocks are free for the next admission), else at
   * the end of the step in flight, which may be writing its KV.
   */
  private cancelNow(s: Seq): void {
    s.cancelled = true;
    if (!this.inStep && !s.finished) this.batch.finish(s, 'abort');
  }

  stats(): SchedulerStats {
    const b = this.blocks.stats();
    const c = this.batch.counts;
    const sl = this.batch.sliding?.stats();
    return {
      running: this.running.length,
      waiting: this.waiting.length,
      blocksUsed: b.usedBlocks,
      blocksFree: b.freeBlocks,
      blocksCached: b.cachedBlocks,
      peakBlocksUsed: b.peakUsedBlocks,
      prefixCacheHitRate: b.hitRate,
      prefixQueriedTokens: b.queriedTokens,
      prefixHitTokens: b.hitTokens,
      slidingBlocks: sl?.totalBlocks ?? 0,
      slidingBlocksUsed: sl?.usedBlocks ?? 0,
      peakSlidingBlocksUsed: sl?.peakUsedBlocks ?? 0,
      peakSlidingBlocksPerSequence: sl?.peakSeqBlocks ?? 0,
      preemptions: c.preemptions,
      steps: c.steps,
      aheadSteps: c.aheadSteps,
      adjustedAheadSteps: c.adjustedAheadSteps,
      speculativeSteps: c.specSteps,
      draftedTokens: c.drafted,
      acceptedTokens: c.accepted,
    };
  }

  private kick(): void {
    if (this.looping) return;
    this.looping = true;
    void this.loop();
  }

  private async loop(): Promise<void> {
    try {
      while (this.running.length > 0 || this.waiting.length > 0) {
        const release = await this.turns.take();
        this.inStep = true;
        try {
          await this.step();
        } finally {
          this.inStep = false;
          release();
        }
      }
    } catch (e) {
      // A device error ends every request: the GPU state is no longer trustworthy.
      const err = this.opts.explainFailure ? await this.opts.explainFailure(e) : e;
      this.failure = err;
      for (const s of [...this.running, ...this.waiting]) s.reject(err);
      this.running.length = 0;
      this.waiting.length = 0;
    } finally {
      this.looping = false;
      for (const w of this.idleWaiters.splice(0)) w();
    }
  }

  private async step(): Promise<void> {
    for (const s of [...this.running, ...this.waiting]) {
      if (s.cancelled || s.req.signal?.aborted) this.batch.finish(s, 'abort');
    }
    this.batch.admit();
    if (this.running.length === 0) return;
    const budget = this.opts.tokenBudget;
    const work: { s: Seq; n: number; draft?: TokenTree }[] = [];
    let used = 0;
    // Guesses are verified once attention is calibrated (its capture expects one row per decoding
    // sequence).
    const guessing = !this.forward.calibration?.active;
    const share = guessShare(this.running);
    // Decodes first (each one row, plus its guesses), then prefill chunks in arrival order.
    for (const s of this.running) {
      if (s.tokens.length - s.computed === 1 && used < budget) {
        const draft = guessing ? guess(this.batch, s, Math.min(share, budget - used - 1)) : null;
        const n = 1 + (draft?.tokens.length ?? 0);
        work.push({ s, n, ...(draft && n > 1 ? { draft } : {}) });
        used += n;
      }
    }
    for (const s of this.running) {
      const pending = s.tokens.length - s.computed;
      if (pending > 1 && used < budget) {
        const n = Math.min(pending, budget - used);
        work.push({ s, n });
        used += n;
      }
    }
    if (work.length === 0) return;
    const t0 = performance.now();
    const produced = (seqs: readonly Seq[]) => seqs.reduce((a, s) => a + s.produced, 0);
    // Plan-making time is not speculation's to count (timedMs).
    const planned = this.forward.planningMs;
    if (work.length === this.running.length && pipelinable(this.batch, work)) {
      const seqs = work.map((w) => w.s);
      const before = produced(seqs);
      await (seqs.some(needsTail) ? adjustedBurst : decodeBurst)(this.batch, seqs);
      const ms = seqs.some((s) => s.spec) ? this.timedMs(t0, planned) : null;
      if (ms !== null) this.specClock.add('plain', ms, produced(seqs) - before);
      return;
    }

    const stepSeqs = work.map((w) => w.s);
    const before = produced(stepSeqs);
    const input = emptyRows();
    const sampled: Seq[] = [];
    // Each sampled sequence's first logit row (a speculative one has one per row).
    const firstRow: number[] = [];
    // Each logit row's sequence and the guesses before it in the step: a row is drawn as the
    // sequence's next token would be after them (speculative sampling, see verify.ts).
    const rowOf: { s: Seq; before: readonly number[] }[] = [];
    for (const { s, n, draft } of work) {
      const offset = input.blockTable.length;
      input.blockTable.push(...this.blocks.blockTable(s.id));
      this.batch.addSliding(input, s, s.computed, s.computed + n);
      if (draft) {
        firstRow.push(input.logitRows.length);
        sampled.push(s);
        for (const before of pushTreeRows(this.batch, input, s, draft, offset)) rowOf.push({ s, before });
        continue;
      }
      for (let i = 0; i < n; i++) {
        const pos = s.computed + i;
        input.tokens.push(s.tokens[pos] as number);
        input.positions.push(pos);
        input.slots.push(this.blocks.slotFor(s.id, pos));
        input.blockTableOffsets.push(offset);
      }
      if (s.computed + n === s.tokens.length) {
        firstRow.push(input.logitRows.length);
        input.logitRows.push(input.tokens.length - 1);
        rowOf.push({ s, before: [] });
        sampled.push(s);
      }
    }
    const context = (r: { s: Seq; before: readonly number[] }) =>
      r.before.length === 0 ? r.s.tokens : [...r.s.tokens, ...r.before];
    this.batch.counts.steps++;
    // One id per logit row (argmax or draw), with its logprobs where asked.
    let ids: ArrayLike<number> | null = null;
    let logprobs: readonly (RowLogprobs | null)[] | null = null;
    let drafts: readonly (readonly number[])[] | null = null;
    const cpuLogprobs: Parameters<ScheduledRequest['onToken']>[1][] = [];
    // Each logit row's edits and mask: the grammar matchers run on the CPU while the GPU runs the
    // step's forward pass (runStep calls this after submitting it).
    let adjusts: readonly (RowAdjust | null)[] = rowOf.map(() => null);
    const edits = async () =>
      (adjusts = await Promise.all(rowOf.map((r) => r.s.sampler.rowAdjust(r.before))));
    const adjust = sampled.some((s) => s.sampler.adjusts) ? { adjust: edits } : {};
    // Logprobs come from the logprobs kernel, after the argmax or draw, per logit row.
    const asked = input.logitRows.map((): number | null => null);
    // A verifying sequence asks on each of its rows: every accepted one hands on a token.
    for (const { s, n, draft } of work) {
      const i = sampled.indexOf(s);
      if (i < 0) continue;
      for (let r = 0; r < (draft ? n : 1); r++) asked[(firstRow[i] as number) + r] = s.sampler.logprobs;
    }
    const withLogprobs = asked.some((k) => k !== null) ? { logprobs: asked } : {};
    if (sampled.length === 0) {
      await runStep(this.forward, input, 'none');
    } else if (sampled.every((s) => s.sampler.greedy)) {
      ({ ids, logprobs, drafts } = await runSampledStep(this.forward, input, 'ids', {
        ...adjust,
        ...withLogprobs,
      }));
    } else if (this.opts.gpuSampling) {
      // One uniform per non-greedy row, from the request's own generator (as when alone).
      const sampling: RowSampling[] = rowOf.map((r) => r.s.sampler.gpuRow(context(r)));
      ({ ids, logprobs, drafts } = await runSampledStep(this.forward, input, 'sample', {
        sampling,
        ...adjust,
        ...withLogprobs,
      }));
    } else {
      // CPU sampling (EngineOptions.sampling 'cpu'): the rows are drawn, and their logprobs
      // computed, on the CPU from the read-back logits.
      const logits = await runStep(this.forward, input, 'logits');
      await edits();
      const V = this.forward.spec.vocabSize;
      const drawn = new Uint32Array(rowOf.length);
      rowOf.forEach((r, j) => {
        // A row whose grammar allows nothing is not drawn (the sequence stops below).
        const mask = adjusts[j]?.mask;
        if (mask && !mask.some((w) => w !== 0)) return;
        const d = r.s.sampler.cpu(logits.subarray(j * V, (j + 1) * V), context(r), adjusts[j] ?? null);
        drawn[j] = d.id;
        cpuLogprobs[j] = d.logprob;
      });
      ids = drawn;
    }
    // A verifying sequence's accepted guesses.
    const verified = new Map<Seq, number[]>();
    for (const { s, n, draft } of work) {
      if (draft) {
        const row0 = firstRow[sampled.indexOf(s)] as number;
        verified.set(s, verifyGuesses(this.batch, s, draft, ids as ArrayLike<number>, row0));
      } else s.computed += n;
      this.blocks.markComputed(s.id, s.computed);
    }
    sampled.forEach((s, i) => {
      // Cancelled while the step ran (an abort, a consumer that stopped): its token is dropped.
      if (s.cancelled || s.req.signal?.aborted) {
        this.batch.finish(s, 'abort');
        return;
      }
      const row = firstRow[i] as number;
      const rows = verified.get(s);
      if (rows !== undefined) {
        absorbVerified(this.batch, s, ids as ArrayLike<number>, logprobs ?? cpuLogprobs, rows, drafts);
        return;
      }
      // A grammar that allows no token at all (its next character is not in this vocabulary, and
      // it cannot end here) ends the sequence rather than emit a token it forbade.
      const mask = adjusts[row]?.mask;
      if (mask && !mask.some((w) => w !== 0)) {
        this.batch.finish(s, 'stop');
        return;
      }
      const token = (ids as ArrayLike<number>)[row] as number;
      const lp = logprobs?.[row];
      const logprob = lp ? { logprob: lp.logprob, top: lp.top } : cpuLogprobs[row];
      if (this.batch.emit(s, token, logprob) && this.running.includes(s)) this.batch.grow(s, token);
      offerRecycled(s, drafts, row);
    });
    const ms = verified.size > 0 ? this.timedMs(t0, planned) : null;
    if (ms !== null) this.specClock.add('spec', ms, produced(stepSeqs) - before, input.tokens.length);
  }
}
