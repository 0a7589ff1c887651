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

export interface GenerateOptions extends Partial<SamplingParams> {
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
