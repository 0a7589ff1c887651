/**
 * The scheduler's public types: what a request asks for (`ScheduledRequest`) and how it ended
 * (`ScheduledOutcome`), the scheduler's options, counters and the exclusive `Hold`. Kept apart
 * from the scheduler's moving parts so the engine, the generation loop and the server read them
 * without the batching code; `scheduler.ts` re-exports them.
 */
import type { FinishReason, LogitAdjustments, SamplingParams, TokenLogprobs } from '../../api/types.js';
import type { StepInput } from '../forward/model.js';
import type { TokenMatcher } from '../sampling/grammar.js';
import type { SpeculativeOptions } from '../speculative.js';

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
  /** Report logprobs with this many alternatives (0..20; the logprobs kernel computes them). */
  logprobs?: number | null;
  /** Each generated token, as soon as it is drawn. */
  onToken: (
    id: number,
    logprob?: Omit<TokenLogprobs, 'token' | 'top'> & { top: { id: number; logprob: number }[] },
  ) => void;
  /**
   * false: every step of this sequence needs CPU state computed from its previous token, so it
   * never runs ahead of its ids: batches holding it run one step at a time (pipeline depth 1).
   * Default true. (A grammar's mask and logit edits need the previous id only for the choice,
   * not the forward pass: such sequences pipeline as adjusted bursts, schedule/adjusted-burst.ts.)
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
  /**
   * The sliding layers' own pool (0s without one): its blocks, those held now, the most held at
   * once, and the most any one sequence held at once (bounded by its window, not its length).
   */
  slidingBlocks: number;
  slidingBlocksUsed: number;
  peakSlidingBlocksUsed: number;
  peakSlidingBlocksPerSequence: number;
  preemptions: number;
  steps: number;
  /** Decode steps submitted before their input ids were read back (pipelined decode). */
  aheadSteps: number;
  /**
   * Of those, the steps of batches with a grammar mask or logit edits computed on the CPU from the
   * previous id (adjusted bursts): the forward pass ran while the CPU computed them.
   */
  adjustedAheadSteps: number;
  /**
   * Speculative decoding: sequence-steps that verified guesses, the guesses verified and those
   * accepted (each step also yields the model's own next token).
   */
  speculativeSteps: number;
  draftedTokens: number;
  acceptedTokens: number;
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
   * Speculative decoding of plain greedy sequences (no logit edits or grammar): each
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
