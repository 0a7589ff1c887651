/**
 * Public types of text generation, shared by the engine, the CLI and (later) the worker proxy.
 */
import type { SamplingParams } from '../engine/sampling.js';

export interface GenerateOptions extends Partial<SamplingParams> {
  /** Most tokens to generate (default: up to the context length). */
  maxTokens?: number;
  /** Seed of the sampler (default: random); ignored by greedy decoding. */
  seed?: number;
  /** Keep going past end-of-sequence tokens. */
  ignoreEos?: boolean;
  /** Add the tokenizer's BOS and other special tokens to a string prompt (default true). */
  addSpecialTokens?: boolean;
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
