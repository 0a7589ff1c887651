/**
 * How much GPU memory a model takes (weights, KV cache, one prefill chunk's activations), from
 * config.json and the safetensors headers alone, so that a model that cannot fit is refused before
 * anything is allocated or, in the browser app, before its weights are downloaded.
 */
import { DeviceMemoryError } from '../errors.js';
import { formatBytes } from '../gpu/device.js';
import type { Checkpoint } from '../io/safetensors-checkpoint.js';
import type { ModelSpec } from '../model/spec.js';
import { weightBytes } from '../weights/loader.js';
import type { WeightSource } from '../weights/source.js';
import { isQuantKv } from '../kernels/kv-dtype.js';
import { BLOCK_TOKENS, kvCacheBytes, type KvDtype } from './kv/cache.js';

/** GPU memory a model will take, by part (what `memoryLimitBytes` is checked against). */
export interface MemoryEstimate {
  weights: number;
  kvCache: number;
  /** One prefill chunk's activations and logits. */
  activations: number;
  total: number;
}

/** The GPU memory a model needs with `kvTokens` tokens of KV cache. */
export function estimateMemory(
  spec: ModelSpec,
  ckpt: Checkpoint,
  source: WeightSource,
  kvTokens: number,
  kvDtype: KvDtype,
  prefillChunk: number,
): MemoryEstimate {
  const weights = weightBytes(spec, ckpt, source);
  const kvCache = kvCacheBytes(spec, kvTokens, kvDtype);
  const activations =
    4 *
    (prefillChunk *
      (3 * spec.hiddenSize +
        2 * spec.numHeads * spec.headDim +
        // qkv's k and v, and a compressed cache's f32 stage of them before kv_quantize.
        (isQuantKv(kvDtype) ? 4 : 2) * spec.numKvHeads * spec.headDim +
        2 * spec.intermediateSize) +
      2 * spec.vocabSize);
  return { weights, kvCache, activations, total: weights + kvCache + activations };
}

/** Refuses a model whose estimate is over the caller's memory limit, saying what it needs. */
export function checkBudget(m: MemoryEstimate, kvTokens: number, limit: number): void {
  if (m.total > limit) {
    throw new DeviceMemoryError(
      `the model needs ${formatBytes(m.total)} of GPU memory (weights ${formatBytes(m.weights)}, KV cache for ${kvTokens} tokens ${formatBytes(m.kvCache)}, activations ${formatBytes(m.activations)}), over the memory limit of ${formatBytes(limit)}`,
    );
  }
}

/**
 * Default KV pool: what 256 MiB of f32 K/V holds, whatever the cache's type (an f16 cache keeps
 * the same tokens in half the memory), and at least one full context; capped by the caller.
 */
export function defaultKvTokens(spec: ModelSpec, contextLength: number): number {
  const perToken = kvCacheBytes(spec, BLOCK_TOKENS, 'f32') / BLOCK_TOKENS;
  return Math.max(contextLength, Math.floor((256 * 2 ** 20) / perToken));
}
