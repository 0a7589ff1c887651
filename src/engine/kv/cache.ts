/**
 * The paged KV cache (vLLM PagedAttention layout): per layer one K and one V buffer of
 * [numBlocks][kvHeads][BLOCK_TOKENS] token rows of the cache's format (src/kernels/kv-dtype.ts:
 * headDim f32 values, f16 where the adapter has shader-f16, or a compressed int8/int4/int2/GEAR
 * row). A block is a fixed number of bytes in every format, so copies and sharing are the same. This class owns only the
 * buffers: which sequence holds which block (ref counts, prefix sharing, copy-on-write, eviction)
 * is the BlockManager's (block-manager.ts). A token at position p of a sequence lives in slot
 * blockTable[p / 16] · 16 + p % 16.
 */
import { DeviceMemoryError } from '../../errors.js';
import { formatBytes, storageUsage, type GpuContext } from '../../gpu/device.js';
import {
  checkKvDtype,
  isQuantKv,
  kvGroupBytes,
  kvQuantParams,
  type KvDtype,
} from '../../kernels/kv-dtype.js';
import type { ModelSpec } from '../../model/spec.js';
import type { SlidingLayout } from './sliding-pool.js';
import { KV_WINDOW_LANES, KvWindow } from './window.js';

export type { KvDtype };

export const BLOCK_TOKENS = 16;

/** Bytes of one block of one layer's K (or V) buffer in a `dtype` cache. */
export function kvBlockBytes(spec: ModelSpec, dtype: KvDtype = 'f32'): number {
  return spec.numKvHeads * kvGroupBytes(dtype, spec.headDim);
}

/** Bytes of K and V for `tokens` tokens across all layers (rounded up to whole blocks). */
export function kvCacheBytes(spec: ModelSpec, tokens: number, dtype: KvDtype = 'f32'): number {
  return Math.ceil(tokens / BLOCK_TOKENS) * kvBlockBytes(spec, dtype) * 2 * spec.numLayers;
}

/** The sliding layers' own pool (sliding-pool.ts): its layout and blocks per sliding layer. */
export interface SlidingKv {
  readonly layout: SlidingLayout;
  readonly blocks: number;
}

/**
 * Bytes of the whole cache: `blocks` per full-attention layer and, with a sliding pool, its
 * blocks per sliding layer (every layer on `blocks` without one), and a low-rank format's recent
 * window.
 */
export function kvPoolBytes(
  spec: ModelSpec,
  blocks: number,
  dtype: KvDtype,
  sliding: SlidingKv | null = null,
): number {
  const block = kvBlockBytes(spec, dtype) * 2;
  let total = 0;
  for (let l = 0; l < spec.numLayers; l++)
    total += (sliding?.layout.layers[l] ? sliding.blocks : blocks) * block;
  return total + spec.numLayers * kvWindowBytes(spec, dtype, KV_WINDOW_LANES);
}

/**
 * Blocks of the largest K (or V) buffer one layer is given: `blocks` where some layer keeps the
 * full pool, else the sliding pool's (a model whose every layer slides allocates no full-size
 * buffer). What must fit one storage binding.
 */
export function kvLayerBlocks(spec: ModelSpec, blocks: number, sliding: SlidingKv | null = null): number {
  let most = 0;
  for (let l = 0; l < spec.numLayers; l++)
    most = Math.max(most, sliding?.layout.layers[l] ? sliding.blocks : blocks);
  return most;
}

/** Bytes of one layer's window (window.ts) of a low-rank format: 0 for every other format. */
export function kvWindowBytes(spec: ModelSpec, dtype: KvDtype, lanes: number): number {
  if (!isQuantKv(dtype) || kvQuantParams(dtype).rank === 0) return 0;
  return lanes * 2 * spec.numKvHeads * BLOCK_TOKENS * spec.headDim * 4;
}

export class PagedKvCache {
  /** Per layer: K [numBlocks (or the sliding pool's blocks)][kvHeads][16] rows of `dtype`. */
  readonly k: GPUBuffer[] = [];
  /** Per layer: V, same layout as K. */
  readonly v: GPUBuffer[] = [];
  /** Low-rank formats: per layer the recent window's lanes, and which block holds which (window.ts). */
  readonly window: GPUBuffer[] = [];
  readonly lanes: KvWindow | null;

  private constructor(
    private readonly ctx: GpuContext,
    readonly numBlocks: number,
    /** Element type of K and V: what every kernel touching the cache is compiled for. */
    readonly dtype: KvDtype,
    /** The sliding layers' pool, or null: every layer's buffers hold `numBlocks` blocks. */
    readonly sliding: SlidingKv | null,
  ) {
    this.lanes = isQuantKv(dtype) && kvQuantParams(dtype).rank > 0 ? new KvWindow(KV_WINDOW_LANES) : null;
  }

  /** Bytes of the K and V buffers allocated, every layer together. */
  get bytes(): number {
    return [...this.k, ...this.v].reduce((sum, b) => sum + b.size, 0);
  }

  /** Whether layer `l`'s K/V live in the sliding pool (its own slots and block table). */
  isSliding(l: number): boolean {
    return this.sliding?.layout.layers[l] === true;
  }

  /**
   * Allocates a pool of `numBlocks` blocks per layer in format `dtype` (default f32; f16 needs
   * shader-f16), the sliding layers `sliding.blocks` each when given; errors say what was needed.
   */
  static async create(
    ctx: GpuContext,
    spec: ModelSpec,
    numBlocks: number,
    dtype: KvDtype = 'f32',
    sliding: SlidingKv | null = null,
  ): Promise<PagedKvCache> {
    checkKvDtype(ctx, dtype, spec.headDim);
    const bytes = kvPoolBytes(spec, numBlocks, dtype, sliding);
    const cache = new PagedKvCache(ctx, numBlocks, dtype, sliding);
    // Each layer's K (and V) is one binding: the full pool's where a layer keeps every block, the
    // sliding pool's where it slides (an all-sliding model has no full-size buffer to check).
    const limit = ctx.limits.maxStorageBufferBindingSize;
    const blockBytes = kvBlockBytes(spec, dtype);
    const keepsFull = Array.from({ length: spec.numLayers }, (_, l) => !cache.isSliding(l)).includes(true);
    if (keepsFull && numBlocks * blockBytes > limit) {
      throw new DeviceMemoryError(
        `the KV cache for ${numBlocks * BLOCK_TOKENS} tokens needs ${formatBytes(numBlocks * blockBytes)} per layer for K (and as much for V), over this device's maxStorageBufferBindingSize (${formatBytes(limit)}); use a shorter context length`,
      );
    }
    if (sliding && sliding.blocks * blockBytes > limit) {
      throw new DeviceMemoryError(
        `the sliding-window layers' KV pool of ${sliding.blocks * BLOCK_TOKENS} tokens needs ${formatBytes(sliding.blocks * blockBytes)} per layer for K (and as much for V), over this device's maxStorageBufferBindingSize (${formatBytes(limit)}); use fewer KV cache tokens or a shorter prefill chunk`,
      );
    }
    const usage = storageUsage();
    const windowBytes = kvWindowBytes(spec, dtype, KV_WINDOW_LANES);
    await ctx.guardAllocation('the KV cache', bytes, () => {
      for (let l = 0; l < spec.numLayers; l++) {
        const n = cache.isSliding(l) ? (sliding as SlidingKv).blocks : numBlocks;
        cache.k.push(ctx.createBuffer(`kv.k[${l}]`, n * blockBytes, usage));
        cache.v.push(ctx.createBuffer(`kv.v[${l}]`, n * blockBytes, usage));
        if (windowBytes > 0) cache.window.push(ctx.createBuffer(`kv.window[${l}]`, windowBytes, usage));
      }
    });
    return cache;
  }

  destroy(): void {
    for (const b of [...this.k, ...this.v, ...this.window]) this.ctx.destroyBuffer(b);
    this.k.length = 0;
    this.v.length = 0;
    this.window.length = 0;
  }
}
