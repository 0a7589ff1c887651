/**
 * How much GPU memory a model takes (weights, KV cache, one prefill chunk's activations), from
 * config.json and the safetensors headers alone, so that a model that cannot fit is refused before
 * anything is allocated or, in the browser app, before its weights are downloaded.
 */
import { DeviceMemoryError } from '../errors.js';
import { formatBytes } from '../gpu/device.js';
import type { Checkpoint } from '../io/safetensors-checkpoint.js';
import { architectureOf } from '../model/registry.js';
import type { ModelSpec } from '../model/spec.js';
import { weightBytes } from '../weights/loader.js';
import type { WeightSource } from '../weights/source.js';
import { isQuantKv } from '../kernels/kv-dtype.js';
import type { MemoryPlan } from '../api/types.js';
import {
  BLOCK_TOKENS,
  kvBlockBytes,
  kvCacheBytes,
  kvLayerBlocks,
  kvPoolBytes,
  kvWindowBytes,
  type KvDtype,
  type SlidingKv,
} from './kv/cache.js';
import { slidingLayout, slidingPoolBlocks } from './kv/sliding-pool.js';
import { KV_WINDOW_LANES } from './kv/window.js';

export type { MemoryPlan };

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
  // The low-rank formats' recent window (kv/window.ts) is part of the cache.
  const kvCache =
    kvCacheBytes(spec, kvTokens, kvDtype) + spec.numLayers * kvWindowBytes(spec, kvDtype, KV_WINDOW_LANES);
  const activations =
    4 *
    (prefillChunk *
      // x, xn, final; a sandwich-norm block's branch output (Gemma) is one more row of hidden.
      ((architectureOf(spec).block.norm === 'rmsnorm-sandwich' ? 4 : 3) * spec.hiddenSize +
        2 * spec.numHeads * spec.headDim +
        // qkv's k and v, and a compressed cache's f32 stage of them before kv_quantize.
        (isQuantKv(kvDtype) ? 4 : 2) * spec.numKvHeads * spec.headDim +
        2 * spec.intermediateSize) +
      2 * spec.vocabSize);
  return { weights, kvCache, activations, total: weights + kvCache + activations };
}

/**
 * Default KV pool: the blocks that hold what 256 MiB of f32 K/V holds, whatever the cache's type
 * (an f16 cache keeps the same tokens in half the memory), or one full context's allocation
 * where that is more; capped by the caller.
 */
function defaultKvF32Bytes(spec: ModelSpec): number {
  const perToken = kvCacheBytes(spec, BLOCK_TOKENS, 'f32') / BLOCK_TOKENS;
  return kvCacheBytes(spec, Math.floor((256 * 2 ** 20) / perToken), 'f32');
}

export interface PlanInput {
  spec: ModelSpec;
  ckpt: Checkpoint;
  source: WeightSource;
  kvDtype: KvDtype;
  requestedContext: number;
  prefillChunkTokens: number;
  /** The caller's KV pool in tokens; default {@link defaultKvF32Bytes}. */
  kvTokens?: number;
  limits: { maxBufferSize: number; maxStorageBufferBindingSize: number };
  budgetBytes?: number;
  /**
   * 'release' (default): sliding-window layers get their own smaller pool (kv/sliding-pool.ts)
   * where the windows are shorter than the context; 'keep': every layer keeps every block.
   */
  slidingKv?: 'release' | 'keep';
}

/**
 * The sliding layers' pool beside a full pool of `blocks` at context `ctx` with prefill chunks of
 * `chunk` rows, or null when every layer keeps every block.
 */
export function slidingKvFor(
  spec: ModelSpec,
  ctx: number,
  chunk: number,
  blocks: number,
  mode: 'release' | 'keep' = 'release',
): SlidingKv | null {
  const layout = mode === 'release' ? slidingLayout(spec, ctx, chunk, BLOCK_TOKENS) : null;
  return layout ? { layout, blocks: slidingPoolBlocks(layout, blocks, ctx, BLOCK_TOKENS) } : null;
}

/**
 * Chooses the context and the KV pool before loading: each buffer a layer's K (or V) really gets
 * must fit one buffer binding (the full pool's, or for a model whose every layer slides, only the
 * sliding pool's), as must the block table, and weights + KV + activations + scratch must fit the
 * budget. The pool shrinks first (down to one context), then the context (to whole blocks); a
 * model whose weights leave no room for one block is refused with what it needs.
 */
export function planMemory(p: PlanInput): MemoryPlan {
  const { spec, kvDtype } = p;
  const blockBytes = kvBlockBytes(spec, kvDtype);
  const bindingBytes = Math.min(p.limits.maxBufferSize, p.limits.maxStorageBufferBindingSize);
  const minBlocks = (ctx: number) => Math.ceil(ctx / BLOCK_TOKENS);
  const slidingAt = (ctx: number, blocks: number) =>
    slidingKvFor(spec, ctx, Math.min(p.prefillChunkTokens, ctx), blocks, p.slidingKv);
  // Whether every buffer a pool of `blocks` at context `ctx` allocates fits a binding: the largest
  // layer's K (or V), and the block table of 4 bytes a block. Monotone in the blocks at one
  // context, and in the context with one context's blocks: neither shrinks a buffer.
  const binds = (ctx: number, blocks: number) =>
    kvLayerBlocks(spec, blocks, slidingAt(ctx, blocks)) * blockBytes <= bindingBytes &&
    blocks * 4 <= bindingBytes;
  /** The largest n in [lo, hi] with ok(n), given ok(lo). */
  const largest = (lo: number, hi: number, ok: (n: number) => boolean): number => {
    while (lo < hi) {
      const mid = Math.ceil((lo + hi) / 2);
      if (ok(mid)) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  };
  const notes: string[] = [];
  let context = p.requestedContext;
  if (!binds(context, minBlocks(context))) {
    context = BLOCK_TOKENS * largest(0, minBlocks(context) - 1, (c) => c === 0 || binds(c * BLOCK_TOKENS, c));
    if (context === 0) {
      throw new DeviceMemoryError(
        `one 16-token block of one layer's KV cache needs ${formatBytes(blockBytes)}, over the largest buffer binding (${formatBytes(bindingBytes)})`,
      );
    }
    notes.push(
      `one layer's KV cache must fit one buffer binding (${formatBytes(bindingBytes)}), which holds ${context} tokens`,
    );
  }
  const sized = (ctx: number, blocks: number, dtype: KvDtype = kvDtype): MemoryPlan => {
    const chunk = Math.min(p.prefillChunkTokens, ctx);
    const e = estimateMemory(spec, p.ckpt, p.source, blocks * BLOCK_TOKENS, dtype, chunk);
    const sliding = slidingAt(ctx, blocks);
    // What the engine allocates: the full pool for full-attention layers, the sliding pool for the others.
    const kvCache = kvPoolBytes(spec, blocks, dtype, sliding);
    const scratch = 4 * 2 * spec.vocabSize;
    return {
      requestedContext: p.requestedContext,
      contextLength: ctx,
      kvTokens: blocks * BLOCK_TOKENS,
      kvBlocks: blocks,
      slidingKvBlocks: sliding?.blocks ?? 0,
      weights: e.weights,
      kvCache,
      activations: e.activations - scratch,
      scratch,
      total: e.total - e.kvCache + kvCache,
      budgetBytes: p.budgetBytes ?? null,
      bindingBytes,
      note: null,
    };
  };
  /** The most blocks a pool at `ctx` may have: every buffer it allocates fits a binding. */
  const maxBlocks = (ctx: number) =>
    largest(minBlocks(ctx), Math.floor(bindingBytes / 4), (b) => binds(ctx, b));
  /** The most blocks in [from, maxBlocks(context)] whose plan passes `ok` (which holds at `from`). */
  const most = (from: number, ok: (blocks: number) => boolean): number =>
    largest(from, Math.max(from, maxBlocks(context)), ok);
  // The default pool is a memory size: a sliding pool's smaller layers leave it room for more
  // blocks. Its floor is one whole context as the engine allocates it (full layers' blocks plus
  // the sliding pool's), not as if every layer kept every block, which would buy a sliding model
  // many contexts' worth of windows it was never asked for.
  const defaultBytes = Math.max(defaultKvF32Bytes(spec), sized(context, minBlocks(context), 'f32').kvCache);
  const wanted =
    p.kvTokens ??
    most(minBlocks(context), (b) => sized(context, b, 'f32').kvCache <= defaultBytes) * BLOCK_TOKENS;
  let blocks = Math.max(minBlocks(context), Math.min(maxBlocks(context), Math.ceil(wanted / BLOCK_TOKENS)));
  let plan = sized(context, blocks);
  const budget = p.budgetBytes;
  if (budget !== undefined && plan.total > budget) {
    const fit =
      sized(context, minBlocks(context)).total <= budget
        ? most(minBlocks(context), (b) => sized(context, b).total <= budget)
        : 0;
    if (fit >= minBlocks(context)) {
      blocks = fit;
      notes.push(
        `the KV pool was cut to ${fit * BLOCK_TOKENS} tokens to fit the memory limit of ${formatBytes(budget)}`,
      );
    } else {
      // The largest context whose plan fits (the prefill chunk, and so the activations, shrink
      // with it): total grows with the context, so a binary search over whole blocks finds it.
      let lo = 0;
      let hi = minBlocks(context) - 1;
      while (lo < hi) {
        const mid = Math.ceil((lo + hi) / 2);
        if (sized(mid * BLOCK_TOKENS, mid).total <= budget) lo = mid;
        else hi = mid - 1;
      }
      if (lo === 0) {
        const one = sized(BLOCK_TOKENS, 1);
        throw new DeviceMemoryError(
          `the model needs ${formatBytes(one.total)} of GPU memory even with a 16-token context (weights ${formatBytes(one.weights)}, KV cache ${formatBytes(one.kvCache)}, activations ${formatBytes(one.activations + one.scratch)}), over the memory limit of ${formatBytes(budget)}`,
        );
      }
      blocks = lo;
      notes.push(
        `the context was cut from ${context} to ${lo * BLOCK_TOKENS} tokens to fit the memory limit of ${formatBytes(budget)}`,
      );
      context = lo * BLOCK_TOKENS;
    }
    plan = sized(context, blocks);
  }
  return { ...plan, note: notes.length > 0 ? notes.join('; ') : null };
}
