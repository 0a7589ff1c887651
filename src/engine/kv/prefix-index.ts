/**
 * The prefix-cache index of the block manager (vLLM's automatic prefix caching): full, computed
 * blocks registered by a chain hash that covers their whole prefix, the lookup of the longest
 * registered chain matching a prompt, and verification of every hash hit against the stored tokens
 * and parent, so a collision costs a miss and never wrong sharing. Which blocks are free, cached
 * or in use is block-manager.ts's; this file only says which block holds which prefix.
 */

/** Parent hash of a sequence's first block. */
export const ROOT_HASH = 0;

/**
 * Hash of one full block given its parent block's hash (ROOT_HASH for the first block), so a
 * block's hash covers its whole prefix. Must be deterministic; collisions cost a cache miss, never
 * wrong sharing, because every hit is verified against the stored tokens and parent.
 */
export type BlockHashFn = (parentHash: number, tokens: readonly number[]) => number;

/**
 * A 53-bit non-cryptographic chain hash: two 32-bit multiply-rotate lanes (cyrb53's mix) seeded
 * with the two halves of the parent hash, so a number fits the hash exactly and can key a Map.
 * Not collision-resistant against an adversary; that is acceptable because hits are verified.
 */
export function defaultBlockHash(parentHash: number, tokens: readonly number[]): number {
  let h1 = 0xdeadbeef ^ (parentHash >>> 0);
  let h2 = 0x41c6ce57 ^ Math.floor(parentHash / 0x100000000);
  for (const t of tokens) {
    h1 = Math.imul(h1 ^ t, 2654435761);
    h2 = Math.imul(h2 ^ t, 1597334677);
    // Multiplication only carries upward; the rotation feeds high bits back into the low ones.
    h1 = (h1 << 13) | (h1 >>> 19);
    h2 = (h2 << 17) | (h2 >>> 15);
  }
  h1 = Math.imul(h1 ^ (h1 >>> 16), 2246822507);
  h1 ^= Math.imul(h2 ^ (h2 >>> 13), 3266489909);
  h2 = Math.imul(h2 ^ (h2 >>> 16), 2246822507);
  h2 ^= Math.imul(h1 ^ (h1 >>> 13), 3266489909);
  return 0x100000000 * (h2 & 0x1fffff) + (h1 >>> 0);
}

/**
 * The identity of a full block's contents: its tokens and, through `parent`, everything before
 * them. Hits compare these objects, not hashes, so two different prefixes can never be taken for
 * one another, whatever the hash does.
 */
export interface BlockContent {
  readonly hash: number;
  readonly tokens: readonly number[];
  readonly parent: BlockContent | null;
}

export class PrefixIndex {
  /** What each block holds while it is listed in `table`, else null. */
  private readonly content: (BlockContent | null)[];
  /** Chain hash → the one block registered under it. */
  private readonly table = new Map<number, number>();
  /** Blocks dropped from the index (to make room, or for a live block under their key). */
  evictions = 0;

  constructor(
    numBlocks: number,
    private readonly blockSize: number,
    private readonly hashBlock: BlockHashFn,
  ) {
    this.content = new Array<BlockContent | null>(numBlocks).fill(null);
  }

  /** Blocks registered. */
  get size(): number {
    return this.table.size;
  }

  /** What block `b` holds if it is registered, else null. */
  contentOf(b: number): BlockContent | null {
    return this.content[b] ?? null;
  }

  /** The hash of a full block of `tokens` after the prefix `parent`. */
  hashOf(parent: BlockContent | null, tokens: readonly number[]): number {
    return this.hashBlock(parent?.hash ?? ROOT_HASH, tokens);
  }

  /** The block registered under `hash`, if any. */
  holder(hash: number): number | undefined {
    return this.table.get(hash);
  }

  /**
   * The longest chain of registered full blocks matching the prompt, capped at
   * floor((length − 1) / blockSize) blocks (see BlockManager.admit).
   */
  lookup(tokenIds: readonly number[]): { blocks: number[]; chain: BlockContent[] } {
    const blocks: number[] = [];
    const chain: BlockContent[] = [];
    const B = this.blockSize;
    const maxBlocks = Math.floor((tokenIds.length - 1) / B);
    let parent: BlockContent | null = null;
    for (let k = 0; k < maxBlocks; k++) {
      const tokens = tokenIds.slice(k * B, (k + 1) * B);
      const b = this.table.get(this.hashOf(parent, tokens));
      const c: BlockContent | null = b === undefined ? null : this.match(b, parent, tokens);
      if (b === undefined || !c) break;
      blocks.push(b);
      chain.push(c);
      parent = c;
    }
    return { blocks, chain };
  }

  /** The block's content if it is exactly these tokens after exactly this prefix (hash hits are verified here). */
  match(b: number, parent: BlockContent | null, tokens: readonly number[]): BlockContent | null {
    const c = this.content[b];
    return c && c.parent === parent && sameTokens(c.tokens, tokens) ? c : null;
  }

  /** Registers block `b` as holding `c` (its key must be free). */
  register(b: number, c: BlockContent): void {
    this.content[b] = c;
    this.table.set(c.hash, b);
  }

  /** Drops block `b` from the index, if it is registered. */
  unhash(b: number): void {
    const c = this.content[b];
    if (!c) return;
    this.table.delete(c.hash);
    this.content[b] = null;
    this.evictions++;
  }

  /** Throws through `fail` unless every entry is a full block whose contents match its hash. */
  checkEntries(fail: (why: string) => never): void {
    for (const [hash, b] of this.table) {
      const c = this.content[b];
      if (!c || c.hash !== hash)
        fail(`hash table entry ${hash} points to block ${b}, which holds other content`);
      else {
        if (c.tokens.length !== this.blockSize) fail(`hashed block ${b} is not full`);
        if (this.hashOf(c.parent, c.tokens) !== hash)
          fail(`hashed block ${b}'s hash does not match its tokens and parent`);
      }
    }
  }
}

export function sameTokens(a: readonly number[], b: readonly number[]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}
