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
 */
import type { FinishReason, LogitAdjustments, SamplingParams, TokenLogprobs } from '../api/types.js';
import { InvalidRequestError, KilnError } from '../errors.js';
import type { ForwardModel, StepInput } from './forward/model.js';
import { runStep, submitDecodeStep } from './forward/step.js';
import { BlockManager, OutOfBlocksError, type BlockCopy } from './kv/block-manager.js';
import { BLOCK_TOKENS, kvBlockBytes, type PagedKvCache } from './kv/cache.js';
import type { RowAdjust, RowSampling } from './sampling/gpu.js';
import type { TokenMatcher } from './sampling/grammar.js';
import { SequenceSampler } from './sampling/sequence.js';
import { Speculator, type SpeculativeOptions } from './speculative.js';

export interface ScheduledRequest {
  prompt: readonly number[];
  /** Most tokens to generate (>= 1). */
  maxTokens: number;
  sampling: SamplingParams;
  seed: number;
  /** Ids that end the sequence (not emitted). */
  eos: ReadonlySet<number>;
  signal?: AbortSignal | undefined;
  /** Logit bias and presence / frequency penalties. */
  adjust?: LogitAdjustments;
  /** Constrained decoding: the sequence's grammar matcher (disposed when it ends). */
  matcher?: TokenMatcher | null;
  /** Report logprobs with this many alternatives (their steps read the logits back). */
  logprobs?: number | null;
  /** Each generated token, as soon as it is drawn. */
  onToken: (
    id: number,
    logprob?: Omit<TokenLogprobs, 'token' | 'top'> & { top: { id: number; logprob: number }[] },
  ) => void;
  /**
   * false: every step of this sequence needs CPU state computed from its previous token, so it
   * never runs ahead of its ids: batches holding it run one step at a time (pipeline depth 1).
   * Sequences with a grammar, logit edits or logprobs always do. Default true.
   */
  pipeline?: boolean;
}

export interface ScheduledOutcome {
  finishReason: FinishReason;
  /** performance.now() at submission, at the first token and at the end. */
  submittedAt: number;
  firstTokenAt: number | null;
  finishedAt: number;
  /** Prompt tokens whose KV came from the prefix cache. */
  cachedPromptTokens: number;
  preemptions: number;
}

export interface SchedulerStats {
  running: number;
  waiting: number;
  blocksUsed: number;
  blocksFree: number;
  blocksCached: number;
  peakBlocksUsed: number;
  prefixCacheHitRate: number;
  /** Prompt tokens looked up in the prefix cache, and those found there (the rate's terms). */
  prefixQueriedTokens: number;
  prefixHitTokens: number;
  preemptions: number;
  steps: number;
  /** Decode steps submitted before their input ids were read back (pipelined decode). */
  aheadSteps: number;
  /**
   * Speculative decoding: sequence-steps that verified guesses, the guesses verified and those
   * accepted (each step also yields the model's own next token).
   */
  speculativeSteps: number;
  draftedTokens: number;
  acceptedTokens: number;
}

interface Seq {
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
interface StepRows extends StepInput {
  tokens: number[];
  positions: number[];
  slots: number[];
  blockTableOffsets: number[];
  blockTable: number[];
  logitRows: number[];
}

export interface SchedulerOptions {
  /** Rows per forward step (decodes + prefill chunks); at most the forward model's maxRows. */
  tokenBudget: number;
  /** Longest sequence (prompt + generated) the model serves. */
  contextLength: number;
  /** Draw non-greedy tokens on the GPU (one id read back) or from read-back logits. */
  gpuSampling: boolean;
  /**
   * Decode steps in flight at once (1-3; default 2): a batch of decoding sequences submits its
   * next steps before the ids of the previous one are read, the ids feeding the next embedding on
   * the GPU (see `decodeBurst`). 1 runs one step at a time.
   */
  pipelineDepth?: number;
  /**
   * Speculative decoding of plain greedy sequences (no logit edits, grammar or logprobs): each
   * step verifies a sequence's guessed tokens as extra rows (see `step`). Null: off.
   */
  speculative?: Required<SpeculativeOptions> | null;
  /**
   * Says what a failed step means for its requests (the engine turns a lost device it recovers
   * from into a retriable error); the result is what they, and later submits, are rejected with.
   */
  explainFailure?: (e: unknown) => Promise<unknown>;
}

/**
 * The GPU state held for exclusive work, with a KV sequence of its own: its blocks never enter
 * the prefix cache (never marked computed) and are freed by `release`.
 */
export interface Hold {
  /**
   * Step inputs for `tokens` at positions start.., with KV blocks for positions
   * [0, start + tokens.length); the logits wanted are the last row's unless `logitRows` says.
   */
  input(tokens: readonly number[], start: number, logitRows?: readonly number[]): StepInput;
  /** Frees the hold's blocks and lets the steps (or the next hold) run. */
  release(): void;
}

export class Scheduler {
  private readonly waiting: Seq[] = [];
  private readonly running: Seq[] = [];
  private nextId = 1;
  private arrivals = 0;
  private looping = false;
  /** True while a step's forward pass may be using the sequences' blocks. */
  private inStep = false;
  private preemptionCount = 0;
  private steps = 0;
  private aheadSteps = 0;
  private specSteps = 0;
  private drafted = 0;
  private accepted = 0;
  private failure: unknown = null;
  /** The turns of steps and holds on the GPU state, in arrival order. */
  private turns: Promise<void> = Promise.resolve();
  /** Resolved when the last request ends (see `whenIdle`). */
  private idleWaiters: (() => void)[] = [];
  /** Turns asked for and not yet given: a pipelined burst yields to them. */
  private turnWaiters = 0;

  constructor(
    private readonly forward: ForwardModel,
    private readonly kv: PagedKvCache,
    private readonly blocks: BlockManager,
    private readonly opts: SchedulerOptions,
  ) {}

  /** Waits for the GPU state (after everything queued before) and returns its release. */
  private async turn(): Promise<() => void> {
    const prev = this.turns;
    let release!: () => void;
    this.turns = new Promise<void>((r) => (release = r));
    this.turnWaiters++;
    try {
      await prev;
    } finally {
      this.turnWaiters--;
    }
    return release;
  }

  /** Holds the GPU state for exclusive work between steps (see Hold). */
  async hold(): Promise<Hold> {
    const release = await this.turn();
    const id = this.nextId++;
    const blocks = this.blocks;
    let released = false;
    return {
      input: (tokens, start, logitRows) => {
        const end = start + tokens.length;
        const have = blocks.has(id) ? blocks.numTokens(id) : 0;
        if (end > have) {
          // Positions before `start` not yet held (a profile at a long context) get filler ids.
          const fill = Array.from({ length: end - have }, (_, i) =>
            have + i >= start ? (tokens[have + i - start] as number) : 0,
          );
          if (have === 0) {
            blocks.admit(id, fill.slice(0, 1));
            blocks.appendSlots(id, fill.slice(1));
          } else blocks.appendSlots(id, fill);
        }
        return {
          tokens,
          positions: tokens.map((_, i) => start + i),
          slots: tokens.map((_, i) => blocks.slotFor(id, start + i)),
          blockTableOffsets: tokens.map(() => 0),
          blockTable: blocks.blockTable(id),
          logitRows: logitRows ?? [tokens.length - 1],
        };
      },
      release: () => {
        if (released) return;
        released = true;
        if (blocks.has(id)) blocks.free(id);
        release();
      },
    };
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
          speculative && sampler.greedy && !sampler.adjusts && sampler.logprobs === null
            ? new Speculator(speculative)
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
    this.waiting.push(seq);
    req.signal?.addEventListener('abort', () => this.cancelNow(seq), { once: true });
    this.kick();
    return { done, cancel: () => this.cancelNow(seq) };
  }

  /**
   * Ends a request: at once between steps (its blocks are free for the next admission), else at
   * the end of the step in flight, which may be writing its KV.
   */
  private cancelNow(s: Seq): void {
    s.cancelled = true;
    if (!this.inStep && !s.finished) this.finish(s, 'abort');
  }

  stats(): SchedulerStats {
    const b = this.blocks.stats();
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
      preemptions: this.preemptionCount,
      steps: this.steps,
      aheadSteps: this.aheadSteps,
      speculativeSteps: this.specSteps,
      draftedTokens: this.drafted,
      acceptedTokens: this.accepted,
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
        const release = await this.turn();
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

  private finish(s: Seq, reason: FinishReason): void {
    if (s.finished) return;
    s.finished = true;
    if (this.blocks.has(s.id)) this.blocks.free(s.id);
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

  /** Frees a running sequence's blocks; it is recomputed from its tokens when readmitted. */
  private preempt(s: Seq): void {
    this.blocks.free(s.id);
    s.computed = 0;
    s.reserved = 0;
    s.preemptions++;
    this.preemptionCount++;
    this.running.splice(this.running.indexOf(s), 1);
    // Back in line by arrival, ahead of everything that came after it.
    const at = this.waiting.findIndex((w) => w.arrival > s.arrival);
    this.waiting.splice(at < 0 ? this.waiting.length : at, 0, s);
  }

  /** Copies blocks (every layer's K and V) before the next step writes into them. */
  private copyBlocks(copies: readonly BlockCopy[]): void {
    if (copies.length === 0) return;
    const bytes = kvBlockBytes(this.forward.spec, this.kv.dtype);
    const enc = this.forward.ctx.device.createCommandEncoder({ label: 'kiln.kv_copy' });
    for (const c of copies) {
      for (const layer of [...this.kv.k, ...this.kv.v]) {
        enc.copyBufferToBuffer(layer, c.src * bytes, layer, c.dst * bytes, bytes);
      }
    }
    this.forward.ctx.device.queue.submit([enc.finish()]);
  }

  /** Gives `token` (just appended to s.tokens) a KV slot, preempting the newest sequences if needed. */
  private grow(s: Seq, token: number): void {
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

  private admit(): void {
    while (this.waiting.length > 0) {
      const s = this.waiting[0] as Seq;
      if (!this.blocks.canAdmit(s.tokens)) {
        if (this.running.length === 0) {
          throw new KilnError(
            `internal: sequence of ${s.tokens.length} tokens cannot be admitted to an empty pool`,
          );
        }
        return;
      }
      const a = this.blocks.admit(s.id, s.tokens);
      s.computed = a.cachedTokens;
      if (s.preemptions === 0) s.cachedPromptTokens = a.cachedTokens;
      this.waiting.shift();
      this.running.push(s);
    }
  }

  private async step(): Promise<void> {
    for (const s of [...this.running, ...this.waiting]) {
      if (s.cancelled || s.req.signal?.aborted) this.finish(s, 'abort');
    }
    this.admit();
    if (this.running.length === 0) return;
    const budget = this.opts.tokenBudget;
    const work: { s: Seq; n: number; draft?: number[] }[] = [];
    let used = 0;
    // Guesses are verified only in steps that read argmax ids for every row (all greedy) and once
    // attention is calibrated (its capture expects one row per decoding sequence).
    const guessing =
      !this.forward.calibration?.active &&
      this.running.every((s) => s.sampler.greedy && !s.sampler.adjusts && s.sampler.logprobs === null);
    // Decodes first (each one row, plus its guesses), then prefill chunks in arrival order.
    for (const s of this.running) {
      if (s.tokens.length - s.computed === 1 && used < budget) {
        const draft = guessing ? this.guess(s, budget - used - 1) : [];
        work.push({ s, n: 1 + draft.length, ...(draft.length > 0 ? { draft } : {}) });
        used += 1 + draft.length;
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
    if (work.length === this.running.length && this.pipelinable(work)) {
      await this.decodeBurst(work.map((w) => w.s));
      return;
    }

    const input: StepRows = {
      tokens: [],
      positions: [],
      slots: [],
      blockTableOffsets: [],
      blockTable: [],
      logitRows: [],
    };
    const sampled: Seq[] = [];
    // Each sampled sequence's first logit row (a speculative one has one per row).
    const firstRow: number[] = [];
    for (const { s, n, draft } of work) {
      const offset = input.blockTable.length;
      input.blockTable.push(...this.blocks.blockTable(s.id));
      if (draft) {
        firstRow.push(input.logitRows.length);
        sampled.push(s);
      }
      for (let i = 0; i < n; i++) {
        const pos = s.computed + i;
        if (draft) input.logitRows.push(input.tokens.length);
        input.tokens.push(i === 0 || !draft ? (s.tokens[pos] as number) : (draft[i - 1] as number));
        input.positions.push(pos);
        input.slots.push(this.blocks.slotFor(s.id, pos));
        input.blockTableOffsets.push(offset);
      }
      if (!draft && s.computed + n === s.tokens.length) {
        firstRow.push(input.logitRows.length);
        input.logitRows.push(input.tokens.length - 1);
        sampled.push(s);
      }
    }
    this.steps++;
    let ids: ArrayLike<number> | null = null;
    let logits: Float32Array | null = null;
    // Each constrained row's edits and mask: the grammar matchers run on the CPU while the GPU
    // runs the step's forward pass (runStep calls this after submitting it).
    let adjusts: readonly (RowAdjust | null)[] = sampled.map(() => null);
    const edits = async () => (adjusts = await Promise.all(sampled.map((s) => s.sampler.rowAdjust())));
    const adjust = sampled.some((s) => s.sampler.adjusts) ? { adjust: edits } : {};
    if (sampled.length === 0) {
      await runStep(this.forward, input, 'none');
    } else if (sampled.some((s) => s.sampler.logprobs !== null)) {
      // Logprobs need the whole distribution: this step's rows are drawn on the CPU (same rules).
      logits = await runStep(this.forward, input, 'logits');
      await edits();
    } else if (sampled.every((s) => s.sampler.greedy)) {
      ids = await runStep(this.forward, input, 'ids', adjust);
    } else if (this.opts.gpuSampling) {
      // One uniform per non-greedy draw, from the request's own generator (as when alone).
      const sampling: RowSampling[] = sampled.map((s) => s.sampler.gpuRow(s.tokens));
      ids = await runStep(this.forward, input, 'sample', { sampling, ...adjust });
    } else {
      logits = await runStep(this.forward, input, 'logits');
      await edits();
    }
    // A verifying sequence's rows: its last token and its guesses, and how many were accepted.
    const verified = new Map<Seq, { rows: number[]; accepted: number }>();
    for (const { s, n, draft } of work) {
      if (draft) {
        const row0 = firstRow[sampled.indexOf(s)] as number;
        const got = ids as ArrayLike<number>;
        let a = 0;
        while (a < draft.length && draft[a] === got[row0 + a]) a++;
        const rows = [s.tokens[s.computed] as number, ...draft];
        s.spec?.record(
          rows,
          rows.map((_, i) => got[row0 + i] as number),
          a,
        );
        this.specSteps++;
        this.drafted += draft.length;
        this.accepted += a;
        verified.set(s, { rows, accepted: a });
        // The rejected guesses' slots go back; the accepted ones hold the KV of the tokens the
        // model chose (equal ids), so they count as computed.
        this.blocks.truncate(s.id, s.computed + 1 + a);
        s.computed += 1 + a;
      } else s.computed += n;
      this.blocks.markComputed(s.id, s.computed);
    }
    const V = this.forward.spec.vocabSize;
    sampled.forEach((s, i) => {
      // Cancelled while the step ran (an abort, a consumer that stopped): its token is dropped.
      if (s.cancelled || s.req.signal?.aborted) {
        this.finish(s, 'abort');
        return;
      }
      const v = verified.get(s);
      if (v) {
        this.absorbVerified(s, ids as ArrayLike<number>, firstRow[i] as number, v.accepted);
        return;
      }
      // A grammar that allows no token at all (its next character is not in this vocabulary, and
      // it cannot end here) ends the sequence rather than emit a token it forbade.
      const mask = adjusts[i]?.mask;
      if (mask && !mask.some((w) => w !== 0)) {
        this.finish(s, 'stop');
        return;
      }
      let token: number;
      let logprob: Parameters<ScheduledRequest['onToken']>[1];
      if (ids) token = ids[firstRow[i] as number] as number;
      else {
        const row = (logits as Float32Array).subarray(i * V, (i + 1) * V);
        const drawn = s.sampler.cpu(row, s.tokens, adjusts[i] ?? null);
        token = drawn.id;
        logprob = drawn.logprob;
      }
      s.firstTokenAt ??= performance.now();
      if (s.req.eos.has(token)) {
        this.finish(s, 'stop');
        return;
      }
      s.tokens.push(token);
      s.produced++;
      // A grammar that is complete ends the sequence (only end-of-sequence could follow).
      const open = s.sampler.accept(token);
      s.req.onToken(token, logprob);
      if (!open) {
        this.finish(s, 'stop');
        return;
      }
      if (s.produced >= s.req.maxTokens || s.tokens.length >= this.opts.contextLength) {
        this.finish(s, 'length');
        return;
      }
      if (this.running.includes(s)) this.grow(s, token);
    });
  }

  /**
   * Reserves KV slots for `s`'s guesses (at most `room` rows, and never past its max tokens or
   * the context) and returns them; none when the pool has no free blocks for them (a guess never
   * preempts anyone).
   */
  private guess(s: Seq, room: number): number[] {
    if (!s.spec || s.spec.off) return [];
    const limit = Math.min(
      room,
      s.req.maxTokens - s.produced - 1,
      this.opts.contextLength - s.tokens.length - 1,
    );
    const draft = s.spec.draft(s.tokens, limit);
    if (draft.length === 0 || !this.blocks.canAppend(s.id, draft.length)) return [];
    this.copyBlocks(this.blocks.appendSlots(s.id, draft).copies);
    return draft;
  }

  /**
   * Hands on a verifying sequence's tokens: the model's choices after its last token and after
   * each accepted guess (the rows [row0, row0 + accepted]), as one-token steps would have, each
   * checked for EOS, max tokens and the context. The accepted guesses' slots are already in place;
   * the last token gets a new one.
   */
  private absorbVerified(s: Seq, ids: ArrayLike<number>, row0: number, accepted: number): void {
    for (let r = 0; r <= accepted; r++) {
      const token = ids[row0 + r] as number;
      s.firstTokenAt ??= performance.now();
      if (s.req.eos.has(token)) {
        this.finish(s, 'stop');
        return;
      }
      s.tokens.push(token);
      s.produced++;
      const open = s.sampler.accept(token);
      s.req.onToken(token);
      if (!open) {
        this.finish(s, 'stop');
        return;
      }
      if (s.produced >= s.req.maxTokens || s.tokens.length >= this.opts.contextLength) {
        this.finish(s, 'length');
        return;
      }
      if (r === accepted && this.running.includes(s)) this.grow(s, token);
    }
  }

  /**
   * Whether this step may start a pipelined burst: every running sequence decodes (one row each),
   * none waits to be admitted, attention is calibrated (calibration reads each step back), and
   * every row's next input is the id its previous step drew: greedy or drawn on the GPU without a
   * repetition penalty (the penalty needs the latest ids on the CPU), with no grammar mask, logit
   * edits or logprobs (computed on the CPU from the ids so far), and no sequence asked for depth 1
   * (`ScheduledRequest.pipeline`).
   */
  private pipelinable(work: readonly { s: Seq; n: number }[]): boolean {
    if ((this.opts.pipelineDepth ?? 2) < 2 || this.waiting.length > 0) return false;
    if (this.forward.calibration?.active) return false;
    return work.every(
      ({ s, n }) =>
        n === 1 &&
        s.req.pipeline !== false &&
        (s.spec === null || s.spec.off) &&
        !s.sampler.adjusts &&
        s.sampler.logprobs === null &&
        (s.sampler.greedy || (this.opts.gpuSampling && s.sampler.params.repetitionPenalty === 1)),
    );
  }

  /**
   * Pipelined decode of a fixed batch: up to `pipelineDepth` steps in flight. Each step after the
   * first reserves the next KV slot of every sequence (its token id still unknown to the CPU) and
   * takes its input ids from the previous step's output on the GPU; ids come back through a ring
   * of readback buffers and are handled in order, as one-at-a-time steps would handle them. When a
   * sequence ends (EOS, max tokens, context, abort), a request arrives, or other work waits for
   * the GPU, no further step is submitted: the steps in flight are drained, the ended sequences'
   * extra rows discarded (their blocks are already free: anything written there later is queued
   * after those rows), and the next step is planned afresh.
   */
  private async decodeBurst(seqs: Seq[]): Promise<void> {
    const depth = Math.min(3, Math.max(1, this.opts.pipelineDepth ?? 2));
    const read = seqs.every((s) => s.sampler.greedy) ? 'ids' : 'sample';
    const inFlight: Promise<Uint32Array>[] = [this.submitDecode(seqs, read, false)];
    let stop = false;
    for (;;) {
      while (!stop && inFlight.length < depth && this.mayRunAhead(seqs)) {
        inFlight.push(this.submitDecode(seqs, read, true));
      }
      const ids = await (inFlight.shift() as Promise<Uint32Array>);
      if (this.absorbDecode(seqs, ids)) stop = true;
      if (this.waiting.length > 0 || this.turnWaiters > 0) stop = true;
      // Nothing in flight: the ids just handled are on the CPU, and the next step is planned
      // afresh by the loop (a new burst if nothing changed).
      if (inFlight.length === 0) return;
    }
  }

  /**
   * Whether every sequence of the burst can take one more step ahead: none ended or cancelled,
   * each still short of its max tokens and the context counting the steps in flight, and blocks
   * to reserve the slots.
   */
  private mayRunAhead(seqs: readonly Seq[]): boolean {
    if (this.waiting.length > 0 || this.turnWaiters > 0) return false;
    let blocks = 0;
    for (const s of seqs) {
      if (s.finished || s.cancelled || s.req.signal?.aborted) return false;
      // After the steps in flight, this one would produce token produced + reserved + 2.
      if (s.produced + s.reserved + 1 >= s.req.maxTokens) return false;
      if (s.tokens.length + s.reserved + 1 >= this.opts.contextLength) return false;
      blocks += this.blocks.blocksNeeded(s.id, 1);
    }
    return blocks <= this.blocks.availableBlocks;
  }

  /**
   * Writes and submits one decode step of the burst. `ahead`: the step runs before the previous
   * step's ids are known; each row's position is the next one, its slot reserved now, its id
   * copied on the GPU.
   */
  private submitDecode(seqs: readonly Seq[], read: 'ids' | 'sample', ahead: boolean): Promise<Uint32Array> {
    const input: StepRows = {
      tokens: [],
      positions: [],
      slots: [],
      blockTableOffsets: [],
      blockTable: [],
      logitRows: [],
    };
    seqs.forEach((s, i) => {
      if (ahead) {
        this.copyBlocks(this.blocks.appendSlots(s.id, [0]).copies);
        s.reserved++;
      }
      const pos = s.tokens.length - 1 + s.reserved;
      const offset = input.blockTable.length;
      input.blockTable.push(...this.blocks.blockTable(s.id));
      // An id still on the GPU is written as 0 and replaced there before the forward pass.
      input.tokens.push(ahead ? 0 : (s.tokens[pos] as number));
      input.positions.push(pos);
      input.slots.push(this.blocks.slotFor(s.id, pos));
      input.blockTableOffsets.push(offset);
      input.logitRows.push(i);
    });
    this.steps++;
    if (ahead) this.aheadSteps++;
    // One uniform per non-greedy draw, from the request's own generator, in step order.
    const sampling = read === 'sample' ? seqs.map((s) => s.sampler.gpuRow(s.tokens)) : undefined;
    const ids = submitDecodeStep(this.forward, input, read, {
      chained: ahead,
      ...(sampling ? { sampling } : {}),
    });
    // A step still in flight when an earlier one fails is never awaited: its failure is the same.
    ids.catch(() => undefined);
    return ids;
  }

  /**
   * Handles the ids of one burst step, as `step` handles a step's ids; a sequence that ended at an
   * earlier step of the burst is skipped (its row was extra). True when a sequence ended.
   */
  private absorbDecode(seqs: readonly Seq[], ids: Uint32Array): boolean {
    let ended = false;
    const live = seqs.filter((s) => !s.finished && this.running.includes(s));
    for (const s of live) {
      s.computed += 1;
      this.blocks.markComputed(s.id, s.computed);
    }
    seqs.forEach((s, i) => {
      if (!live.includes(s) || s.finished) return;
      if (s.cancelled || s.req.signal?.aborted) {
        this.finish(s, 'abort');
        ended = true;
        return;
      }
      const token = ids[i] as number;
      s.firstTokenAt ??= performance.now();
      if (s.req.eos.has(token)) {
        this.finish(s, 'stop');
        ended = true;
        return;
      }
      s.tokens.push(token);
      s.produced++;
      // No grammar here (such sequences are never pipelined): accept only keeps the sampler's
      // state as an unpipelined step would.
      const open = s.sampler.accept(token);
      s.req.onToken(token);
      if (!open) {
        this.finish(s, 'stop');
        ended = true;
        return;
      }
      if (s.produced >= s.req.maxTokens || s.tokens.length >= this.opts.contextLength) {
        this.finish(s, 'length');
        ended = true;
        return;
      }
      if (!this.running.includes(s)) return;
      if (s.reserved > 0) {
        // Its slot was reserved by the step in flight that reads this token.
        s.reserved--;
        this.blocks.setToken(s.id, s.tokens.length - 1, token);
      } else this.grow(s, token);
    });
    return ended;
  }
}
