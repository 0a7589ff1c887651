/**
 * Messages between a page's WorkerEngine (src/worker/proxy.ts) and the engine handler in the Web
 * Worker (src/worker/handler.ts): two discriminated unions on `type`, so both sides switch on it
 * and TypeScript narrows each message without casts. Every request carries an `id`; the events
 * that answer it carry the same `id`. Payloads are structured-cloneable (no functions, no
 * AbortSignal: a stop is its own `abort` message). Only the engine's own operations cross (load,
 * tokenize, generate, abort, dispose): the OpenAI layer runs page-side over them, the same code
 * as in-thread.
 */
import {
  DeviceMemoryError,
  DownloadError,
  GpuDeviceError,
  InvalidModelFileError,
  InvalidRequestError,
  KilnError,
  UnsupportedModelError,
} from '../errors.js';
import type { AdapterSummary } from '../gpu/device.js';
import { StorageQuotaError } from '../io/model-cache.js';
import type { ChatMessage } from '../io/tokenizer.js';
import type { ToolFormatName } from '../api/openai/tools.js';
import type {
  GenerateOptions,
  GenerateResult,
  GeneratedToken,
  GrammarSpec,
  MemoryPlan,
  TuningStatus,
} from '../api/types.js';
import type { KvDtype } from '../kernels/kv-dtype.js';
import type { KvCacheOption } from '../engine/options.js';

/** Where the worker loads a model from. */
export type ModelSource =
  /**
   * A Hugging Face-layout folder, or a GGUF file (`.../name.gguf`, the first shard of a split
   * one), over HTTP (Range requests), cached in the Cache API.
   */
  | { kind: 'url'; url: string; revision: string }
  /** Files the user picked (a local folder), read in place. */
  | { kind: 'files'; name: string; files: { path: string; blob: Blob }[] };

export interface LoadOptions {
  source: ModelSource;
  /** Tokens of context (default min(max_position_embeddings, 4096)). */
  contextLength?: number;
  /**
   * Refuse a model whose estimated GPU memory is over this many bytes, before downloading its
   * weights. Default: the device memory the browser reports, when it reports under 8 GiB.
   */
  memoryLimitBytes?: number;
  /**
   * Store URL models in the Cache API and reuse them (default true). Without it a model is read
   * over the network on every load, and a lost GPU device is not recovered (that would download it
   * again).
   */
  cache?: boolean;
  /**
   * Tune the kernels to this adapter in the background (default true): choices are cached in
   * IndexedDB per adapter, so only the first visit on a device pays for it.
   */
  tune?: boolean;
  /**
   * KV cache format (EngineOptions.kvCache): 'auto' (default: f16 with shader-f16), or a
   * compressed one ('int4', 'gear4', ...) for longer contexts in the same memory.
   */
  kvCache?: KvCacheOption;
}

/**
 * Load progress. `checking` reads config and safetensors headers (bytes not counted), `downloading`
 * stores the folder's files in the cache (bytes of all its files; files cached earlier count at
 * once), `uploading` copies the weights to the GPU (bytes of all its tensors).
 */
export interface LoadProgress {
  phase: 'checking' | 'downloading' | 'uploading';
  /** The file or tensor at hand. */
  item: string;
  loadedBytes: number;
  totalBytes: number;
}

/** What the page knows about a loaded engine (the KilnEngine properties, as data). */
export interface EngineInfo {
  modelName: string;
  contextLength: number;
  adapter: AdapterSummary;
  kvCacheDtype: KvDtype;
  weightFormat: string;
  hasChatTemplate: boolean;
  toolCallFormat: ToolFormatName;
  loadMs: number;
  gpuMemoryBytes: number;
  memoryPlan: MemoryPlan | null;
  /** True when every file came from the cache (no network). */
  fromCache: boolean;
  tuning: TuningStatus;
}

export type GenerateOptionsData = Omit<GenerateOptions, 'signal'>;

/** Page -> worker. */
export type WorkerRequest =
  | { type: 'load'; id: number; options: LoadOptions }
  | { type: 'generate'; id: number; prompt: string | number[]; options: GenerateOptionsData }
  /** Token ids of a prompt or of a conversation through the chat template (KilnEngine.tokenize). */
  | {
      type: 'tokenize';
      id: number;
      input:
        string | { messages: ChatMessage[]; tools?: unknown[]; chatTemplateKwargs?: Record<string, unknown> };
    }
  /** Compiles a grammar (KilnEngine.checkGrammar); answered by `checked` or `error`. */
  | { type: 'check-grammar'; id: number; grammar: GrammarSpec }
  /** Stops the generation `id` (it then ends with finish reason "abort"). */
  | { type: 'abort'; id: number }
  | { type: 'dispose'; id: number };

/** An error as data; `name` picks the class it is rebuilt as. */
export interface SerializedError {
  name: string;
  message: string;
  /** A GpuDeviceError of a request cut off by a device loss the engine recovers from. */
  retriable?: boolean;
}

/** Worker -> page. */
export type WorkerEvent =
  | { type: 'progress'; id: number; progress: LoadProgress }
  | { type: 'loaded'; id: number; info: EngineInfo }
  | { type: 'token'; id: number; token: GeneratedToken }
  | { type: 'checked'; id: number }
  | { type: 'result'; id: number; result: GenerateResult; gpuMemoryBytes: number }
  | { type: 'tokens'; id: number; ids: number[] }
  | { type: 'disposed'; id: number }
  | { type: 'error'; id: number; error: SerializedError }
  /** Not an answer: background kernel tuning of the loaded engine is over. */
  | { type: 'tuned'; status: TuningStatus }
  /**
   * Not an answer: the GPU device went away and the engine is rebuilding on a new one, reading the
   * weights again from the cache or the picked files. Requests sent meanwhile wait for it; the
   * ones it cut off ended with a retriable GpuDeviceError.
   */
  | { type: 'recovering'; reason: GPUDeviceLostReason; message: string }
  /** Not an answer: the recovery is over and the engine runs on its new device. */
  | { type: 'recovered'; adapter: AdapterSummary; gpuMemoryBytes: number }
  /**
   * Not an answer: the GPU device went away while the engine was in use and the engine cannot go
   * on (nothing local to rebuild from, or the rebuild failed: `message` says why).
   */
  | { type: 'device-lost'; reason: GPUDeviceLostReason; message: string };

/** One side of the channel: a Worker on the page, the worker's global scope inside it. */
export interface Endpoint<In, Out> {
  postMessage(message: Out): void;
  addEventListener(type: 'message', listener: (ev: MessageEvent<In>) => void): void;
}

export function serializeError(e: unknown): SerializedError {
  if (e instanceof GpuDeviceError && e.retriable)
    return { name: e.name, message: e.message, retriable: true };
  if (e instanceof Error) return { name: e.name, message: e.message };
  return { name: 'Error', message: String(e) };
}

const ERROR_CLASSES: Record<string, new (message: string) => Error> = {
  KilnError,
  InvalidModelFileError,
  UnsupportedModelError,
  InvalidRequestError,
  GpuDeviceError,
  DeviceMemoryError,
  DownloadError,
  StorageQuotaError,
};

/** Rebuilds an error as its Kiln class (so `instanceof` works on the page), else a plain Error. */
export function deserializeError(e: SerializedError): Error {
  const Class = ERROR_CLASSES[e.name];
  if (Class) {
    const err = new Class(e.message);
    if (e.retriable && err instanceof GpuDeviceError) err.retriable = true;
    return err;
  }
  const err = new Error(e.message);
  err.name = e.name;
  return err;
}
