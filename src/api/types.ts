/**
 * The public types of text generation: what the engine (src/engine), its Web Worker proxy
 * (src/worker) and the OpenAI layer (src/api/openai) speak. Types only, so every room can name
 * them without depending on the engine.
 */

/** How the next token is drawn from the logits. */
export interface SamplingParams {
  /** 0 = greedy. */
  temperature: number;
  /** 0 = off. */
  topK: number;
  /** 1 = off. */
  topP: number;
  /** 1 = off; >1 discourages tokens already in the context (CTRL-style, as in HF). */
  repetitionPenalty: number;
}

/**
 * What the output must be, enforced token by token (constrained decoding: tokens that cannot
 * continue a valid output are masked before argmax or sampling): any JSON value, JSON matching a
 * JSON Schema (optionally between fixed texts: the tool-call formats), text matching a regular
 * expression, or an EBNF grammar (xgrammar's dialect, GBNF-like, root rule `root`).
 */
export type GrammarSpec =
  | { type: 'json' }
  | {
      type: 'json_schema';
      schema: Readonly<Record<string, unknown>> | boolean;
      /** Fixed text before and after the JSON (a tool-call format's tags). */
      prefix?: string;
      suffix?: string;
    }
  | { type: 'regex'; pattern: string }
  | { type: 'ebnf'; grammar: string };

/** Logit edits applied before the sampler (and before greedy argmax). */
export interface LogitAdjustments {
  /** Token id -> added to its logit (OpenAI's logit_bias: -100 bans, 100 forces). */
  logitBias?: Readonly<Record<number, number>>;
  /** Subtracted once from the logit of every token generated so far (OpenAI's presence_penalty). */
  presencePenalty?: number;
  /** Subtracted once per occurrence in the generated tokens (OpenAI's frequency_penalty). */
  frequencyPenalty?: number;
  /**
   * In [0, 1]: drops tokens whose probability (at the request's temperature) is below minP times
   * the most likely token's, before top-k / top-p (0 = off; no effect on greedy decoding).
   */
  minP?: number;
}

export interface GenerateOptions extends Partial<SamplingParams>, LogitAdjustments {
  /** The output follows this grammar (see GrammarSpec). */
  grammar?: GrammarSpec;
  /**
   * Report each token's log probability and this many most likely alternatives (0 to 20; 0: the
   * chosen token's only): the log-softmax of the logits the token was chosen from (after bias,
   * penalties and the grammar's mask, before temperature). Alternatives rank by logit, ties by
   * lower id; tokens with no probability (masked) are not listed.
   */
  logprobs?: number;
  /** Most tokens to generate (default: up to the context length). */
  maxTokens?: number;
  /** Seed of the sampler (default: random); ignored by greedy decoding. */
  seed?: number;
  /** Keep going past end-of-sequence tokens. */
  ignoreEos?: boolean;
  /** Add the tokenizer's BOS and other special tokens to a string prompt (default true). */
  addSpecialTokens?: boolean;
  /**
   * Generation ends (finish reason "stop") where the text reaches any of these strings; the text
   * returned stops before it. Text that may be the start of one is held back until it is not.
   */
  stop?: readonly string[];
  /** Stops generation (finish reason "abort") and frees the sequence's KV blocks. */
  signal?: AbortSignal;
}

/**
 * One generated token and the text it completed ("" while a multi-byte character is partial).
 * `id` is null for a last chunk that only flushes held-back text (an unfinished character).
 */
export interface GeneratedToken {
  id: number | null;
  text: string;
  /** With `logprobs`: this token's log probability and the top alternatives (best first). */
  logprob?: TokenLogprobs;
}

/** A token's log probability and the most likely alternatives; `token` is each id's own text. */
export interface TokenLogprobs {
  token: string;
  logprob: number;
  top: { id: number; token: string; logprob: number }[];
}

export type FinishReason = 'length' | 'stop' | 'abort';

export interface GenerationTimings {
  /** From the call to the first token (queueing included): time to first token. */
  prefillMs: number;
  decodeMs: number;
  /** Prompt tokens per second of prefill. */
  prefillTokensPerS: number;
  /** Tokens per second after the first (which prefill produces). */
  decodeTokensPerS: number;
}

export interface GenerateResult {
  text: string;
  /** Generated ids only, in order (an end-of-sequence token that stopped generation is not included). */
  tokenIds: number[];
  /** The prompt as token ids, BOS included. */
  promptTokenIds: number[];
  finishReason: FinishReason;
  timings: GenerationTimings;
  /** Prompt tokens whose KV came from the prefix cache (their prefill was skipped). */
  cachedPromptTokens: number;
}

/** Where background kernel tuning stands (shown by the browser app). */
export interface TuningStatus {
  /** 'off': tuning disabled; 'running': background tuning in progress; 'done'. */
  state: 'off' | 'running' | 'done';
  /** Shape classes whose choice came from the cache at load. */
  cachedClasses: number;
  /** Classes tuned since load (counted as each finishes). */
  tunedClasses: number;
  /** Classes not tuned yet (still running, or the budget was spent): a later load tunes them. */
  leftClasses: number;
  /**
   * The longest slice background tuning held the GPU for (ms): a request arriving while it tunes
   * waits at most about this long. Absent before the first slice.
   */
  longestSliceMs?: number;
  /** Slices background tuning has run (each while no request was running). */
  slices?: number;
}

/** What the engine's memory planner chose before anything was allocated, by part (bytes), and why. */
export interface MemoryPlan {
  /** The context asked for (or the default), and the one chosen. */
  requestedContext: number;
  contextLength: number;
  /** KV pool: tokens and 16-token blocks per layer. */
  kvTokens: number;
  kvBlocks: number;
  /**
   * Blocks of the sliding-window layers' own pool (each such layer holds this many, the others
   * kvBlocks): the windows of as many whole-context sequences as the full pool holds; 0 when
   * every layer keeps every block.
   */
  slidingKvBlocks: number;
  weights: number;
  kvCache: number;
  /** One prefill chunk's hidden states. */
  activations: number;
  /** The logits rows of a step (LM head output and the sampler's copy). */
  scratch: number;
  total: number;
  /** The budget planned against (--memory-limit, a browser's memory hint), or null for none. */
  budgetBytes: number | null;
  /** The largest buffer one layer's K or V may take (min of maxBufferSize and the binding limit). */
  bindingBytes: number;
  /** Why the context or pool is smaller than asked; null when nothing was cut. */
  note: string | null;
}
