/**
 * The one engine interface a page codes against: the in-thread `Engine` implements it (checked at
 * compile time below), and so does `WorkerEngine` (src/worker/proxy.ts), which forwards every call
 * to an Engine in a Web Worker. Moving inference off the main thread changes how the engine is
 * created, not the code that uses it.
 */
import type { AdapterSummary } from '../gpu/device.js';
import type { ChatCompletion, ChatCompletionChunk, ChatCompletionRequest } from './openai/chat.js';
import type { Engine, TuningStatus } from '../engine/engine.js';
import type { GenerateOptions, GenerateResult, GeneratedToken } from './types.js';

/** A generation in progress: async-iterate it for tokens, or await `result()` for everything. */
export interface GenerationStream extends AsyncIterable<GeneratedToken> {
  result(): Promise<GenerateResult>;
}

/** OpenAI-shaped chat completions (the model's chat template), streaming or not. */
export interface ChatCompletionsApi {
  create(req: ChatCompletionRequest & { stream: true }): Promise<AsyncIterable<ChatCompletionChunk>>;
  create(req: ChatCompletionRequest & { stream?: false }): Promise<ChatCompletion>;
}

/** Why the GPU device went away. */
export interface DeviceLoss {
  readonly reason: GPUDeviceLostReason;
  readonly message: string;
}

export interface KilnEngine {
  /** The model's location, as API responses name it. */
  readonly modelName: string;
  /** Tokens of context (prompt + generated). */
  readonly contextLength: number;
  readonly adapter: AdapterSummary;
  /** Element type of the KV cache ('f16' where the adapter has shader-f16). */
  readonly kvCacheDtype: 'f16' | 'f32';
  /** How the projection weights are stored, e.g. "float" or "int4 g32 asym, quantized at load". */
  readonly weightFormat: string;
  /** Without a chat template, chat requests are refused: use plain completion (`generate`). */
  readonly hasChatTemplate: boolean;
  /** Milliseconds the load took. */
  readonly loadMs: number;
  /** Bytes of GPU buffers the engine holds. */
  readonly gpuMemoryBytes: number;
  /** Where background kernel tuning stands ('off' unless the engine was loaded with `tune`). */
  readonly tuningStatus: TuningStatus;
  /** Settles once background tuning is over, with the final status. */
  whenTuned(): Promise<TuningStatus>;
  /** Settles when the GPU device goes away (reason 'destroyed' after `dispose()`). */
  readonly deviceLost: Promise<DeviceLoss>;
  readonly chat: { readonly completions: ChatCompletionsApi };
  /**
   * Generates a continuation of `prompt` (text, BOS added by the tokenizer's rules, or token ids).
   * `opts.signal` stops it (finish reason "abort").
   */
  generate(prompt: string | readonly number[], opts?: GenerateOptions): GenerationStream;
  /** Frees the GPU memory. */
  dispose(): void;
}

// Compile-time proof that the in-thread engine implements the interface the proxy implements.
const _inThreadEngine = (engine: Engine): KilnEngine => engine;
