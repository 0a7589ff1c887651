/**
 * One generate() call: its token loop over the scheduler (tokens arrive from the batched steps
 * and are handed on as they come, decoded to text, cut at stop strings) and the Generation object
 * the caller iterates or awaits.
 */
import type {
  FinishReason,
  GenerateOptions,
  GenerateResult,
  GeneratedToken,
  TokenLogprobs,
} from '../api/types.js';
import type { GrammarCompiler } from './sampling/grammar.js';
import { GpuDeviceError, KilnError } from '../errors.js';
import { IncrementalDecoder, type KilnTokenizer } from '../io/tokenizer.js';
import { samplingOf } from './sampling/params.js';
import type { ScheduledOutcome, ScheduledRequest, Scheduler } from './scheduler.js';
import { StopMatcher } from './stop.js';

/** What a generation runs on. */
export interface GenerationHost {
  /** The scheduler to submit to, once the engine has one that runs (after a device recovery). */
  ready(): Promise<Scheduler>;
  readonly tokenizer: KilnTokenizer;
  readonly contextLength: number;
  /** Ids that end generation unless `ignoreEos`. */
  readonly eosTokenIds: readonly number[];
  /** Compiles the grammars of constrained requests. */
  readonly grammar: GrammarCompiler;
}

/** The token loop: submits the request and yields its tokens, filling `out` as it goes. */
export async function* generateTokens(
  host: GenerationHost,
  promptIds: readonly number[],
  opts: GenerateOptions,
  out: GenerateResult,
): AsyncGenerator<GeneratedToken> {
  const room = host.contextLength - promptIds.length;
  const maxTokens = Math.min(opts.maxTokens ?? room, room);
  const decoder = new IncrementalDecoder(host.tokenizer);
  const stops = opts.stop && opts.stop.length > 0 ? new StopMatcher(opts.stop) : null;
  // Stays null if the consumer stops iterating early: that counts as an abort.
  let finish: FinishReason | null = null;
  if (maxTokens <= 0) {
    out.finishReason = 'length';
    return;
  }
  const queue: { id: number; logprob: TokenLogprobs | undefined }[] = [];
  let wake: (() => void) | null = null;
  const matcher = opts.grammar ? await host.grammar.matcher(opts.grammar) : null;
  const tokenText = (id: number) => host.tokenizer.decode([id]);
  const request: ScheduledRequest = {
    prompt: promptIds,
    maxTokens,
    sampling: samplingOf(opts),
    seed: opts.seed ?? Math.floor(Math.random() * 2 ** 32),
    eos: new Set(opts.ignoreEos ? [] : host.eosTokenIds),
    signal: opts.signal,
    adjust: {
      ...(opts.logitBias ? { logitBias: opts.logitBias } : {}),
      ...(opts.presencePenalty ? { presencePenalty: opts.presencePenalty } : {}),
      ...(opts.frequencyPenalty ? { frequencyPenalty: opts.frequencyPenalty } : {}),
      ...(opts.minP ? { minP: opts.minP } : {}),
    },
    matcher,
    logprobs: opts.logprobs ?? null,
    onToken: (id, lp) => {
      queue.push({
        id,
        logprob: lp && {
          token: tokenText(id),
          logprob: lp.logprob,
          top: lp.top.map((t) => ({ id: t.id, token: tokenText(t.id), logprob: t.logprob })),
        },
      });
      wake?.();
    },
  };
  let ended = false;
  let stopped = false;
  let outcome: ScheduledOutcome | null = null;
  let failure: unknown = null;
  const start = async () => {
    const job = (await host.ready()).submit(request);
    job.done.then(
      (o) => {
        outcome = o;
        ended = true;
        wake?.();
      },
      (e: unknown) => {
        failure = e;
        ended = true;
        wake?.();
      },
    );
    return job;
  };
  // A request that had shown nothing when the device was lost runs again once the engine has
  // recovered (it waited, or was queued): only one cut off mid-answer fails, with a retriable error.
  const unseen = () => out.tokenIds.length === 0 && queue.length === 0;
  let job = await start().catch(async (e: unknown) => {
    if (!isRetriable(e)) throw e;
    return start();
  });
  const emit = (text: string): string => {
    if (!stops) return text;
    const m = stops.push(text);
    if (m.stopped) stopped = true;
    return m.emit;
  };
  try {
    // Once the caller aborts, ids that were already read back (a pipelined burst can hold several)
    // are dropped, not yielded: the stream ends at the token the caller last saw.
    const aborted = () => opts.signal?.aborted === true;
    while (!stopped) {
      while (queue.length > 0 && !stopped && !aborted()) {
        const { id, logprob } = queue.shift() as { id: number; logprob: TokenLogprobs | undefined };
        out.tokenIds.push(id);
        const text = emit(decoder.push(id));
        out.text += text;
        yield logprob ? { id, text, logprob } : { id, text };
      }
      if (ended && !stopped && failure && isRetriable(failure) && unseen()) {
        ended = false;
        failure = null;
        job = await start();
        continue;
      }
      if (ended || stopped) break;
      await new Promise<void>((r) => (wake = r));
      wake = null;
    }
    if (stopped) {
      // A stop string ends the request here; its outcome (timings) follows at once.
      job.cancel();
      outcome = await job.done;
    }
    if (failure) throw failure;
    const o = outcome as ScheduledOutcome | null;
    if (o) {
      // Ids the caller never saw because it aborted first make this an abort, even if the request
      // had already run to its end on the GPU.
      finish = stopped ? 'stop' : queue.length > 0 && aborted() ? 'abort' : o.finishReason;
      // A request that ended before its first token (aborted while waiting) ran nothing.
      if (o.firstTokenAt !== null) {
        out.timings.prefillMs = o.firstTokenAt - o.submittedAt;
        out.timings.decodeMs = o.finishedAt - o.firstTokenAt;
      }
      out.cachedPromptTokens = o.cachedPromptTokens;
    }
    if (!stopped) {
      let rest = emit(decoder.flush());
      if (!stopped && stops) rest += stops.flush();
      if (stopped) finish = 'stop';
      if (rest) {
        out.text += rest;
        yield { id: null, text: rest };
      }
    }
  } finally {
    if (!ended) job.cancel();
    out.finishReason = finish ?? 'abort';
    const t = out.timings;
    t.prefillTokensPerS = t.prefillMs > 0 ? (promptIds.length / t.prefillMs) * 1000 : 0;
    const decoded = Math.max(0, out.tokenIds.length - 1);
    t.decodeTokensPerS = t.decodeMs > 0 && decoded > 0 ? (decoded / t.decodeMs) * 1000 : 0;
  }
}

/** A running (or finished) generation: async-iterate it for tokens, or await `result()`. */
export class Generation implements AsyncIterable<GeneratedToken> {
  private readonly out: GenerateResult;
  private started = false;
  /** Settles when the run ends: with the result, or with the error that ended it. */
  private finished: Promise<GenerateResult> | null = null;

  constructor(
    private readonly host: GenerationHost,
    promptIds: number[],
    private readonly opts: GenerateOptions,
  ) {
    this.out = {
      text: '',
      tokenIds: [],
      promptTokenIds: promptIds,
      finishReason: 'length',
      timings: { prefillMs: 0, decodeMs: 0, prefillTokensPerS: 0, decodeTokensPerS: 0 },
      cachedPromptTokens: 0,
    };
  }

  get promptTokenIds(): readonly number[] {
    return this.out.promptTokenIds;
  }

  async *[Symbol.asyncIterator](): AsyncIterator<GeneratedToken> {
    if (this.started) throw new KilnError('a Generation can be iterated once');
    this.started = true;
    let settle!: (error: unknown) => void;
    this.finished = new Promise<GenerateResult>((resolve, reject) => {
      settle = (error) => (error === undefined ? resolve(this.out) : reject(error));
    });
    // Whoever awaits result() sees the error; nobody awaiting it is not an unhandled rejection.
    this.finished.catch(() => undefined);
    let error: unknown;
    try {
      // A consumer that stops early ends the loop through return(), which frees the KV blocks.
      yield* generateTokens(this.host, this.out.promptTokenIds, this.opts, this.out);
    } catch (e) {
      error = e;
      throw e;
    } finally {
      settle(error);
    }
  }

  /** Runs the generation to the end (if nobody iterates it) and returns everything. */
  async result(): Promise<GenerateResult> {
    if (!this.started) {
      for await (const _ of this) {
        // consume
      }
      return this.out;
    }
    return this.finished as Promise<GenerateResult>;
  }
}

function isRetriable(e: unknown): boolean {
  return e instanceof GpuDeviceError && e.retriable;
}
