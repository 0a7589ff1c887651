/**
 * The OpenAI API's request and response shapes for chat and text completions, with its field
 * names, so existing client code reads them unchanged. The library, the HTTP server and the
 * browser's worker engine all speak exactly these (src/api/openai/openai.ts implements them).
 */
import type { ChatMessage } from '../../io/tokenizer.js';
import type { FinishReason } from '../types.js';

/** A message as OpenAI clients send it: `developer` is the newer name of `system`. */
export interface ChatMessageParam {
  role: ChatMessage['role'] | 'developer';
  /** Text, or text parts (the only part type a text model reads). */
  content: string | { type: 'text'; text: string }[];
  name?: string;
}

/** Fields both endpoints take. */
export interface CompletionFields {
  /** The served model's id (the HTTP server checks it; the library ignores it). */
  model?: string;
  stream?: boolean | null;
  stream_options?: { include_usage?: boolean } | null;
  max_tokens?: number | null;
  /** Takes precedence over max_tokens, as in OpenAI's API. */
  max_completion_tokens?: number | null;
  temperature?: number | null;
  top_p?: number | null;
  /** Not in OpenAI's API; as in vLLM and llama.cpp's server. */
  top_k?: number | null;
  /** Not in OpenAI's API; as in vLLM and llama.cpp's server (HF's CTRL-style penalty). */
  repetition_penalty?: number | null;
  seed?: number | null;
  /** Up to 4 strings; generation ends before the first one the text reaches. */
  stop?: string | string[] | null;
  /** Choices per request: 1. */
  n?: number | null;
  /** Not supported: false or absent. */
  logprobs?: boolean | null;
  user?: string;
  /** Stops the request (library only; the server passes the client's disconnect). */
  signal?: AbortSignal;
}

export interface ChatCompletionRequest extends CompletionFields {
  messages: ChatMessageParam[];
}

export interface CompletionRequest extends CompletionFields {
  /** One prompt (a list of one is accepted). */
  prompt: string | string[];
}

export interface CompletionUsage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
}

export interface ChatCompletion {
  id: string;
  object: 'chat.completion';
  created: number;
  model: string;
  choices: {
    index: 0;
    message: { role: 'assistant'; content: string };
    finish_reason: FinishReason;
    logprobs: null;
  }[];
  usage: CompletionUsage;
}

export interface ChatCompletionChunk {
  id: string;
  object: 'chat.completion.chunk';
  created: number;
  model: string;
  /** One choice, or none in the closing usage chunk. */
  choices: {
    index: 0;
    delta: { role?: 'assistant'; content?: string };
    finish_reason: FinishReason | null;
    logprobs: null;
  }[];
  /** Only in the last chunk, when `stream_options.include_usage` asked for it. */
  usage?: CompletionUsage;
}

export interface Completion {
  id: string;
  object: 'text_completion';
  created: number;
  model: string;
  choices: { index: 0; text: string; finish_reason: FinishReason; logprobs: null }[];
  usage: CompletionUsage;
}

export interface CompletionChunk {
  id: string;
  object: 'text_completion';
  created: number;
  model: string;
  choices: { index: 0; text: string; finish_reason: FinishReason | null; logprobs: null }[];
  usage?: CompletionUsage;
}

/** Watches a request as it runs (the server's metrics). */
export interface CompletionObserver {
  /** The prompt's length in tokens, once it is known to fit. */
  onPrompt?(tokens: number): void;
  /** Each generated token. */
  onToken?(): void;
}

export interface OpenAiChatApi {
  create(
    req: ChatCompletionRequest & { stream: true },
    observe?: CompletionObserver,
  ): Promise<AsyncIterable<ChatCompletionChunk>>;
  create(
    req: ChatCompletionRequest & { stream?: false | null },
    observe?: CompletionObserver,
  ): Promise<ChatCompletion>;
}

export interface OpenAiCompletionsApi {
  create(
    req: CompletionRequest & { stream: true },
    observe?: CompletionObserver,
  ): Promise<AsyncIterable<CompletionChunk>>;
  create(
    req: CompletionRequest & { stream?: false | null },
    observe?: CompletionObserver,
  ): Promise<Completion>;
}
