/**
 * Kiln's public API (browser and Node). Node users import `kiln/node`, which re-exports this and
 * adds local folders, Hub ids and Dawn.
 */
export { createEngine, Engine, Generation, type EngineOptions } from './runtime/engine.js';
export type {
  GenerateOptions,
  GenerateResult,
  GeneratedToken,
  FinishReason,
  GenerationTimings,
} from './runtime/generation.js';
export type { ChatCompletion, ChatCompletionChunk, ChatCompletionRequest } from './runtime/chat.js';
export type { ChatMessage } from './io/tokenizer.js';
export { KilnTokenizer, IncrementalDecoder } from './io/tokenizer.js';
export type { ModelSpec } from './runtime/model-spec.js';
export type { AdapterSummary } from './gpu/device.js';
export type { ByteSource, ModelDir } from './io/byte-source.js';
export { httpModelDir } from './io/http-model-dir.js';
export { parseModelConfig } from './io/config.js';
export { openCheckpoint, parseSafetensorsHeader, encodeSafetensors } from './io/safetensors.js';
export * from './errors.js';
