/**
 * The one engine interface applications code against: the in-thread `Engine` (src/engine)
 * implements it, and so does `WorkerEngine` (src/worker/proxy.ts), which runs an Engine in a Web
 * Worker; the OpenAI layer (src/api/openai) is written once over it. Moving inference off the main
 * thread changes how the engine is created, not the code that uses it.
 */
import type { AdapterSummary } from '../gpu/device.js';
import type { ChatMessage } from '../io/tokenizer.js';
import type { ToolFormatName } from './openai/tools.js';
import type { OpenAiChatApi, OpenAiCompletionsApi } from './openai/types.js';
import type {
  GenerateOptions,
  GenerateResult,
  GeneratedToken,
  GrammarSpec,
  MemoryPlan,
  TuningStatus,
} from './types.js';

/** A conversation for the chat template, with the functions the model may call. */
export interface ChatInput {
  messages: readonly ChatMessage[];
  tools?: readonly unknown[];
  /**
   * Extra variables for the template, as transformers' apply_chat_template(**kwargs) takes them
   * (Qwen3's `enable_thinking`); the OpenAI layer's `chat_template_kwargs`.
   */
  chatTemplateKwargs?: Readonly<Record<string, unknown>>;
}
import type { KvDtype } from '../kernels/kv-dtype.js';

/** A generation in progress: async-iterate it for tokens, or await `result()` for everything. */
export interface GenerationStream extends AsyncIterable<GeneratedToken> {
  result(): Promise<GenerateResult>;
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
  /** Format of the KV cache ('f16' where the adapter has shader-f16 unless asked otherwise). */
  readonly kvCacheDtype: KvDtype;
  /** How the projection weights are stored, e.g. "float" or "int4 g32 asym, quantized at load". */
  readonly weightFormat: string;
  /** Without a chat template, chat requests are refused: use plain completion. */
  readonly hasChatTemplate: boolean;
  /** How the model writes tool calls (read off its chat template; 'hermes' when it shows none). */
  readonly toolCallFormat: ToolFormatName;
  /** Milliseconds the load took. */
  readonly loadMs: number;
  /** Bytes of GPU buffers the engine holds. */
  readonly gpuMemoryBytes: number;
  /** The memory plan chosen at load (context, KV pool, bytes by part, why anything was cut). */
  readonly memoryPlan: MemoryPlan | null;
  /** Where background kernel tuning stands ('off' unless the engine was loaded with `tune`). */
  readonly tuningStatus: TuningStatus;
  /** Settles once background tuning is over, with the final status. */
  whenTuned(): Promise<TuningStatus>;
  /** Settles when the GPU device goes away (reason 'destroyed' after `dispose()`). */
  readonly deviceLost: Promise<DeviceLoss>;
  /** OpenAI-shaped chat completions (the model's chat template), streaming or not. */
  readonly chat: { readonly completions: OpenAiChatApi };
  /** OpenAI-shaped text completions, streaming or not. */
  readonly completions: OpenAiCompletionsApi;
  /**
   * Token ids of a prompt (special tokens added as `generate` adds them) or of a conversation
   * rendered with the model's chat template (refused without one).
   */
  tokenize(input: string | ChatInput): Promise<number[]>;
  /**
   * Compiles a grammar for constrained decoding (cached for the requests that use it); an
   * InvalidRequestError if the grammar engine cannot compile it.
   */
  checkGrammar(grammar: GrammarSpec): Promise<void>;
  /**
   * Generates a continuation of `prompt` (text, BOS added by the tokenizer's rules, or token ids).
   * `opts.signal` stops it (finish reason "abort"), `opts.stop` at a string (finish reason "stop").
   */
  generate(prompt: string | readonly number[], opts?: GenerateOptions): GenerationStream;
  /** Frees the GPU memory. */
  dispose(): void;
}
