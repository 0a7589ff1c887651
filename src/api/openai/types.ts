/**
 * The OpenAI API's request and response shapes for chat and text completions, with its field
 * names, so existing client code reads them unchanged. The library, the HTTP server and the
 * browser's worker engine all speak exactly these (src/api/openai/openai.ts implements them).
 */
import type { ChatMessage } from '../../io/tokenizer.js';
import type { FinishReason } from '../types.js';

/** A function the model called, as OpenAI shapes it: `arguments` is a JSON text. */
export interface ToolCall {
  id: string;
  type: 'function';
  function: { name: string; arguments: string };
}

/** A message as OpenAI clients send it: `developer` is the newer name of `system`. */
export interface ChatMessageParam {
  role: ChatMessage['role'] | 'developer' | 'tool';
  /** Text, or text parts (the only part type a text model reads); null for an assistant's tool calls. */
  content: string | { type: 'text'; text: string }[] | null;
  name?: string;
  /** An assistant's calls, answered by the `tool` messages that follow. */
  tool_calls?: ToolCall[];
  /** A `tool` message: the call it answers. */
  tool_call_id?: string;
}

/** A function the model may call: its name, description and JSON Schema of the arguments. */
export interface ToolParam {
  type: 'function';
  function: { name: string; description?: string; parameters?: Record<string, unknown>; strict?: boolean };
}

/** none: never call; auto: the model decides; required: at least one call; or this function. */
export type ToolChoice = 'none' | 'auto' | 'required' | { type: 'function'; function: { name: string } };

/** text (default), any JSON object, or JSON matching a schema: constrained decoding enforces it. */
export type ResponseFormat =
  | { type: 'text' }
  | { type: 'json_object' }
  | {
      type: 'json_schema';
      json_schema: {
        name: string;
        description?: string;
        schema?: Record<string, unknown>;
        strict?: boolean | null;
      };
    };

/** The log probabilities of one generated token and its most likely alternatives. */
export interface TokenLogprob {
  token: string;
  logprob: number;
  bytes: number[] | null;
  top_logprobs: { token: string; logprob: number; bytes: number[] | null }[];
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
  /** Not in OpenAI's API; as in vLLM and llama.cpp's server: drops tokens below min_p times the top probability. */
  min_p?: number | null;
  /** In [-2, 2]: subtracted once from the logit of every token already generated. */
  presence_penalty?: number | null;
  /** In [-2, 2]: subtracted from a token's logit once per time it was generated. */
  frequency_penalty?: number | null;
  /** Token id (as a string key) -> bias in [-100, 100] added to its logit. */
  logit_bias?: Record<string, number> | null;
  seed?: number | null;
  /** Up to 4 strings; generation ends before the first one the text reaches. */
  stop?: string | string[] | null;
  /** Choices per request (1 to 16); they share the prompt's KV blocks. */
  n?: number | null;
  /** Accepted and ignored (see README): they change nothing in a local engine. */
  user?: string;
  metadata?: Record<string, string> | null;
  store?: boolean | null;
  service_tier?: string | null;
  /** Stops the request (library only; the server passes the client's disconnect). */
  signal?: AbortSignal;
}

export interface ChatCompletionRequest extends CompletionFields {
  messages: ChatMessageParam[];
  /** The log probability of each generated token (and `top_logprobs` alternatives). */
  logprobs?: boolean | null;
  top_logprobs?: number | null;
  response_format?: ResponseFormat | null;
  tools?: ToolParam[] | null;
  tool_choice?: ToolChoice | null;
  /** Accepted and ignored: a model may call several tools either way. */
  parallel_tool_calls?: boolean | null;
  /**
   * Extension (as vLLM and SGLang name it): extra variables for the model's chat template, such as
   * Qwen3's `{"enable_thinking": false}`.
   */
  chat_template_kwargs?: Record<string, unknown> | null;
}

export interface CompletionRequest extends CompletionFields {
  /** A prompt, or several (one choice each, `n` per prompt). */
  prompt: string | string[];
  /** The log probabilities of this many most likely tokens at each step (0 to 5), with the chosen one's. */
  logprobs?: number | null;
  /** Not in OpenAI's completions API; as in vLLM: the output follows this format. */
  response_format?: ResponseFormat | null;
}

/** Completions' logprobs block. */
export interface CompletionLogprobs {
  tokens: string[];
  token_logprobs: number[];
  top_logprobs: Record<string, number>[] | null;
  text_offset: number[];
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
    index: number;
    message: { role: 'assistant'; content: string | null; refusal: null; tool_calls?: ToolCall[] };
    finish_reason: ChatFinishReason;
    logprobs: { content: TokenLogprob[] } | null;
  }[];
  usage: CompletionUsage;
}

/** Chat adds `tool_calls`: the reply ended with calls of the request's tools. */
export type ChatFinishReason = FinishReason | 'tool_calls';

/** A streamed piece of a tool call: the first carries id, type and name; later ones argument text. */
export interface ToolCallDelta {
  index: number;
  id?: string;
  type?: 'function';
  function: { name?: string; arguments: string };
}

export interface ChatCompletionChunk {
  id: string;
  object: 'chat.completion.chunk';
  created: number;
  model: string;
  /** One choice, or none in the closing usage chunk. */
  choices: {
    index: number;
    delta: { role?: 'assistant'; content?: string | null; tool_calls?: ToolCallDelta[] };
    finish_reason: ChatFinishReason | null;
    logprobs: { content: TokenLogprob[] } | null;
  }[];
  /** Only in the last chunk, when `stream_options.include_usage` asked for it. */
  usage?: CompletionUsage;
}

export interface Completion {
  id: string;
  object: 'text_completion';
  created: number;
  model: string;
  choices: {
    index: number;
    text: string;
    finish_reason: FinishReason;
    logprobs: CompletionLogprobs | null;
  }[];
  usage: CompletionUsage;
}

export interface CompletionChunk {
  id: string;
  object: 'text_completion';
  created: number;
  model: string;
  choices: {
    index: number;
    text: string;
    finish_reason: FinishReason | null;
    logprobs: CompletionLogprobs | null;
  }[];
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
