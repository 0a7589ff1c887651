/**
 * Kiln's public API (browser and Node). Node users import `kiln-llm/node`, which re-exports this
 * and adds local folders, Hub ids and Dawn.
 */
export { createEngine, Engine } from './engine/engine.js';
export { Generation } from './engine/generation.js';
export type { EngineOptions, EngineTuneOptions } from './engine/options.js';
export { estimateMemory, type MemoryEstimate } from './engine/memory.js';
export type {
  GenerateOptions,
  GenerateResult,
  GeneratedToken,
  FinishReason,
  GenerationTimings,
  SamplingParams,
  TuningStatus,
} from './api/types.js';
export type { KilnEngine, GenerationStream, DeviceLoss } from './api/engine-api.js';
export { OpenAiChat, OpenAiCompletions, type OpenAiOptions } from './api/openai/openai.js';
export { OpenAiRequestError } from './api/openai/validate.js';
export type {
  ChatCompletion,
  ChatCompletionChunk,
  ChatCompletionRequest,
  ChatMessageParam,
  Completion,
  CompletionChunk,
  CompletionRequest,
  CompletionUsage,
  OpenAiChatApi,
  OpenAiCompletionsApi,
} from './api/openai/types.js';
export type { ChatMessage } from './io/tokenizer.js';
export { KilnTokenizer, IncrementalDecoder } from './io/tokenizer.js';
export type { ModelSpec } from './model/spec.js';
export type { Architecture } from './model/architecture.js';
export { ARCHITECTURES } from './model/registry.js';
export type { AdapterSummary } from './gpu/device.js';
export type { ByteSource, ModelDir } from './io/byte-source.js';
export { httpModelDir } from './io/http-model-dir.js';
export { parseModelConfig } from './model/config.js';
export { parseSafetensorsHeader } from './io/safetensors.js';
export { openCheckpoint } from './io/safetensors-checkpoint.js';
export { encodeSafetensors } from './io/safetensors-writer.js';
export { MemoryTuneStore, type TuneStore, type TunedClass } from './tuner/cache.js';
export { IndexedDbTuneStore } from './tuner/indexeddb-store.js';
export { KernelChoices, type KernelChoice } from './tuner/choices.js';
export { geomeanSpeedup, type TuneReport, type TuneClassReport, type TuneOptions } from './tuner/tuner.js';
export { KILN_VERSION } from './version.js';
export { WorkerEngine, type RecoveryEvent, type WorkerEngineOptions } from './worker/proxy.js';
export { serveEngine } from './worker/handler.js';
export { loadEngine } from './worker/load.js';
export type { EngineInfo, LoadOptions, LoadProgress, ModelSource } from './worker/protocol.js';
export { ModelCache, clearModelCache, StorageQuotaError, MODEL_CACHE_NAME } from './io/model-cache.js';
export { blobModelDir, pickedFolderFiles } from './io/blob-model-dir.js';
export * from './errors.js';
