/**
 * The block manager's vocabulary: what its calls return (admissions, appends with their
 * copy-on-write copies, statistics), its options, and the error for a pool short right now.
 * Apart from block-manager.ts so the scheduler's types read them without the bookkeeping;
 * block-manager.ts re-exports them.
 */
import { KilnError } from '../../errors.js';
import type { BlockHashFn } from './prefix-index.js';

/**
 * Not enough free or evictable blocks right now. Nothing was changed; the scheduler can preempt a
 * sequence (free it) and retry, or wait.
 */
export class OutOfBlocksError extends KilnError {
  override name = 'OutOfBlocksError';
  constructor(
    readonly needed: number,
    readonly available: number,
  ) {
    super(`out of KV cache blocks: ${needed} needed, ${available} free or evictable`);
  }
}

/** Copy physical block `src` to `dst` (every layer's K and V) before this step's writes. */
export interface BlockCopy {
  readonly src: number;
  readonly dst: number;
}

export interface Admission {
  /** Leading prompt tokens whose KV is already in the cache: a multiple of the block size. */
  readonly cachedTokens: number;
  /** Slot of every prompt position in [cachedTokens, promptLength): where their KV must be written. */
  readonly slots: number[];
}

export interface Append {
  /** Slot of each appended token, in order. */
  readonly slots: number[];
  /** Copy-on-write copies to run before writing `slots` (at most one per append). */
  readonly copies: BlockCopy[];
}

export interface BlockManagerStats {
  readonly totalBlocks: number;
  /** Blocks holding nothing. */
  readonly freeBlocks: number;
  /** Blocks referenced by at least one sequence. */
  readonly usedBlocks: number;
  /** Unreferenced blocks kept for prefix hits (evictable). */
  readonly cachedBlocks: number;
  /** freeBlocks + cachedBlocks: what an allocation may take. */
  readonly availableBlocks: number;
  /** Blocks listed in the prefix hash table, in use or cached. */
  readonly hashedBlocks: number;
  readonly peakUsedBlocks: number;
  /** Prompt tokens passed to successful `admit` calls. */
  readonly queriedTokens: number;
  /** Of those, tokens served from the prefix cache. */
  readonly hitTokens: number;
  /** hitTokens / queriedTokens (0 before any admission). */
  readonly hitRate: number;
  /** Cached blocks dropped from the hash table to make room. */
  readonly evictions: number;
}

export interface BlockManagerOptions {
  numBlocks: number;
  /** Tokens per block (default 16). */
  blockSize?: number;
  /** Override the block hash (tests force collisions with it). */
  hashBlock?: BlockHashFn;
  /**
   * false: no prompt is served from the prefix cache (every prompt is computed whole). Default
   * true. Off beside a sliding pool, which keeps no KV of a cached prefix for its layers.
   */
  prefixCaching?: boolean;
}
