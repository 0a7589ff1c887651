/**
 * CPU-side bookkeeping of the paged KV cache with prefix sharing (vLLM PagedAttention plus its
 * automatic prefix caching, DESIGN-NOTES §4): which physical block holds which part of which
 * sequence, how many sequences share each block, and which full blocks a later prompt with the same
 * prefix may reuse. No GPU code: the scheduler turns the answers (slot mappings, block tables, block
 * copies) into buffer writes against the pool that cache.ts allocates.
 *
 * A physical block is in exactly one of three states:
 *   - free:    holds nothing worth keeping (a stack, taken first by allocation);
 *   - in use:  refCount ≥ 1, referenced by that many sequences' block tables;
 *   - cached:  refCount 0 but holds a committed full block still listed in the prefix hash table,
 *              kept in LRU order; allocation evicts the least recently used one once no block is
 *              free, and a prefix hit revives it.
 *
 * Only *full* blocks whose KV the caller has declared written (`markComputed`) are ever shared
 * through the hash table, so a shared block is never written again; the one place a shared block
 * can be written is a partial last block shared by `fork`, which `appendSlots` copies first
 * (copy-on-write).
 *
 * The prefix hash table (which block holds which prefix) is prefix-index.ts; the types of the
 * answers and the out-of-blocks error are block-types.ts (re-exported here).
 */
import { InvalidRequestError } from '../../errors.js';
import {
  OutOfBlocksError,
  type Admission,
  type Append,
  type BlockCopy,
  type BlockManagerOptions,
  type BlockManagerStats,
} from './block-types.js';
import { defaultBlockHash, PrefixIndex, sameTokens, type BlockContent } from './prefix-index.js';

export * from './block-types.js';
export { defaultBlockHash, type BlockHashFn } from './prefix-index.js';

/** Tokens per block; the same 16 as BLOCK_TOKENS in cache.ts (not imported: that file is GPU code). */
export const DEFAULT_BLOCK_SIZE = 16;

interface Sequence {
  /** Physical block of each logical block; only the last may be partially filled. */
  readonly table: number[];
  /** Token id of every position (needed to hash blocks as they fill). */
  readonly tokens: number[];
  /** Positions [0, computed) have their KV written. */
  computed: number;
  /** Identity of each full computed block: length floor(computed / blockSize). */
  readonly chain: BlockContent[];
}

export class BlockManager {
  readonly numBlocks: number;
  readonly blockSize: number;
  private readonly refCount: Uint32Array;
  /** Which full blocks hold which prefix (the prefix cache's hash table). */
  private readonly index: PrefixIndex;
  /** Free blocks; popped from the end (so block 0 is handed out first). */
  private readonly freeList: number[] = [];
  /** Cached blocks, least recently used first (a Set iterates in insertion order, deletes in O(1)). */
  private readonly lru = new Set<number>();
  private readonly seqs = new Map<number, Sequence>();
  private peakUsed = 0;
  private readonly prefixCaching: boolean;
  private queried = 0;
  private hits = 0;

  constructor(options: BlockManagerOptions) {
    const { numBlocks, blockSize = DEFAULT_BLOCK_SIZE, hashBlock = defaultBlockHash } = options;
    if (!Number.isSafeInteger(numBlocks) || numBlocks < 1)
      throw new RangeError(`numBlocks must be a positive integer, got ${numBlocks}`);
    if (!Number.isSafeInteger(blockSize) || blockSize < 1)
      throw new RangeError(`blockSize must be a positive integer, got ${blockSize}`);
    this.numBlocks = numBlocks;
    this.blockSize = blockSize;
    this.refCount = new Uint32Array(numBlocks);
    this.index = new PrefixIndex(numBlocks, blockSize, hashBlock);
    this.prefixCaching = options.prefixCaching ?? true;
    for (let b = numBlocks - 1; b >= 0; b--) this.freeList.push(b);
  }

  has(seq: number): boolean {
    return this.seqs.has(seq);
  }

  numTokens(seq: number): number {
    return this.get(seq).tokens.length;
  }

  /** Positions whose KV is written (see `markComputed`). */
  numComputed(seq: number): number {
    return this.get(seq).computed;
  }

  /** The sequence's block table (a live view: appends and copy-on-write change it). */
  blockTable(seq: number): readonly number[] {
    return this.get(seq).table;
  }

  /** The physical slot (block · blockSize + offset) of an existing position of `seq`. */
  slotFor(seq: number, position: number): number {
    const s = this.get(seq);
    if (!Number.isSafeInteger(position) || position < 0 || position >= s.tokens.length)
      throw new RangeError(`position ${position} is outside sequence ${seq} (${s.tokens.length} tokens)`);
    return this.slot(s, position);
  }

  /** Leading tokens of this prompt that `admit` would find cached now (no side effects). */
  cachedPrefixLength(tokenIds: readonly number[]): number {
    checkTokens(tokenIds);
    return this.lookup(tokenIds).blocks.length * this.blockSize;
  }

  /**
   * Blocks `admit` would take from the free and cached pools for this prompt now (prefix hits
   * excluded). Throws InvalidRequestError if the prompt can never fit the pool.
   */
  blocksToAdmit(tokenIds: readonly number[]): number {
    return this.planAdmission(tokenIds).fresh;
  }

  /** Whether `admit` would succeed now. Throws InvalidRequestError if the prompt can never fit. */
  canAdmit(tokenIds: readonly number[]): boolean {
    const plan = this.planAdmission(tokenIds);
    return plan.fresh <= plan.available;
  }

  /**
   * Creates sequence `seq` holding the whole prompt: reuses the longest cached chain of full blocks
   * (their KV need not be recomputed) and allocates fresh blocks for the rest.
   *
   * The cached part is capped at floor((length − 1) / blockSize) blocks, so at least the last prompt
   * token is always computed: the model needs its logits. When the whole prompt is cached and ends
   * on a block boundary this recomputes the last block (up to blockSize tokens) rather than reusing
   * it and writing its last slot, which would need a copy-on-write of a full shared block; vLLM v1
   * makes the same choice.
   *
   * Throws OutOfBlocksError (nothing changed) when the pool is short right now, InvalidRequestError
   * when the prompt needs more blocks than the pool has.
   */
  admit(seq: number, tokenIds: readonly number[]): Admission {
    this.checkNewId(seq);
    const { hit, fresh, available } = this.planAdmission(tokenIds);
    if (fresh > available) throw new OutOfBlocksError(fresh, available);
    // Revive the hits before allocating, so eviction cannot take them.
    for (const b of hit.blocks) this.retain(b);
    const table = [...hit.blocks];
    for (let i = 0; i < fresh; i++) table.push(this.allocate());
    const cachedTokens = hit.blocks.length * this.blockSize;
    const s: Sequence = { table, tokens: [...tokenIds], computed: cachedTokens, chain: hit.chain };
    this.seqs.set(seq, s);
    this.queried += tokenIds.length;
    this.hits += cachedTokens;
    return { cachedTokens, slots: this.slots(s, cachedTokens, tokenIds.length) };
  }

  /**
   * Blocks appending `n` tokens to `seq` would take from the pool: new blocks past the last
   * boundary plus one if the partial last block is shared (copy-on-write). Throws
   * InvalidRequestError if the sequence would outgrow the pool.
   */
  blocksNeeded(seq: number, n: number): number {
    const s = this.get(seq);
    if (!Number.isSafeInteger(n) || n < 0) throw new RangeError(`cannot append ${n} tokens`);
    const length = s.tokens.length + n;
    const total = this.blocksFor(length);
    this.checkFits(total, `sequence ${seq} at ${length} tokens`);
    return total - s.table.length + (n > 0 && this.lastBlockIsShared(s) ? 1 : 0);
  }

  /** Whether `appendSlots` of `n` tokens would succeed now (throws if it never could). */
  canAppend(seq: number, n: number): boolean {
    return this.blocksNeeded(seq, n) <= this.available();
  }

  /**
   * Grows `seq` by these tokens (their ids are kept so full blocks can be hashed), allocating
   * blocks as boundaries are crossed, and returns where to write their KV. If the partial last block
   * is shared (after `fork`), it is first copied to a fresh block that replaces it in this
   * sequence's table; the copy must run before the writes.
   *
   * Throws OutOfBlocksError (nothing changed) or InvalidRequestError as `admit` does.
   */
  appendSlots(seq: number, tokenIds: readonly number[]): Append {
    const s = this.get(seq);
    checkTokens(tokenIds);
    const needed = this.blocksNeeded(seq, tokenIds.length);
    if (needed > this.available()) throw new OutOfBlocksError(needed, this.available());
    const copies: BlockCopy[] = [];
    if (tokenIds.length > 0 && this.lastBlockIsShared(s)) {
      const last = s.table.length - 1;
      const src = s.table[last] as number;
      const dst = this.allocate();
      this.release(src); // still referenced by the other sharers, so it stays in use
      s.table[last] = dst;
      copies.push({ src, dst });
    }
    const from = s.tokens.length;
    for (const t of tokenIds) s.tokens.push(t);
    while (s.table.length < this.blocksFor(s.tokens.length)) s.table.push(this.allocate());
    return { slots: this.slots(s, from, s.tokens.length), copies };
  }

  /**
   * Sets the token id of a position appended ahead of its token (pipelined decode reserves the
   * next step's slot while the id that fills it is still on the GPU). Only positions not yet
   * computed: a computed position may already be hashed into the prefix table.
   */
  setToken(seq: number, position: number, token: number): void {
    const s = this.get(seq);
    if (!Number.isSafeInteger(position) || position < s.computed || position >= s.tokens.length)
      throw new RangeError(
        `cannot set the token at ${position}: sequence ${seq} has ${s.tokens.length} positions, ${s.computed} computed`,
      );
    s.tokens[position] = token;
  }

  /**
   * Drops positions [length, end) of `seq` (slots appended for speculative guesses the model
   * rejected) and returns the blocks that held only them. Only positions not yet computed: a
   * computed position may already be hashed into the prefix table.
   */
  truncate(seq: number, length: number): void {
    const s = this.get(seq);
    if (!Number.isSafeInteger(length) || length < Math.max(1, s.computed) || length > s.tokens.length)
      throw new RangeError(
        `cannot truncate sequence ${seq} to ${length}: it has ${s.tokens.length} positions, ${s.computed} computed`,
      );
    s.tokens.length = length;
    while (s.table.length > this.blocksFor(length)) this.release(s.table.pop() as number);
  }

  /** Blocks an allocation may take now (free, or cached and evictable). */
  get availableBlocks(): number {
    return this.available();
  }

  /**
   * Declares the KV of positions [0, upTo) of `seq` written. Full blocks among them are registered
   * in the prefix hash table (they become shareable, and stay cached after `free`). Registration
   * waits for this call, not `appendSlots`, so a block whose KV was never written (a step that
   * failed or was preempted) can never be served to another prompt. Lower values are a no-op.
   */
  markComputed(seq: number, upTo?: number): void {
    const s = this.get(seq);
    const n = upTo ?? s.tokens.length;
    if (!Number.isSafeInteger(n) || n < 0 || n > s.tokens.length)
      throw new RangeError(`cannot mark ${n} tokens computed: sequence ${seq} has ${s.tokens.length}`);
    if (n <= s.computed) return;
    s.computed = n;
    for (let k = s.chain.length; k < Math.floor(n / this.blockSize); k++) this.commitBlock(s, k);
  }

  /**
   * Creates `child` sharing every block of `parent` (parallel sampling): no copy now; the first of
   * them to write into the shared partial last block copies it. The parent must be fully computed,
   * or the two would later write the same uncomputed slots.
   */
  fork(parent: number, child: number): void {
    const p = this.get(parent);
    this.checkNewId(child);
    if (p.computed < p.tokens.length)
      throw new Error(
        `cannot fork sequence ${parent}: only ${p.computed} of its ${p.tokens.length} tokens are computed`,
      );
    for (const b of p.table) this.retain(b);
    this.seqs.set(child, {
      table: [...p.table],
      tokens: [...p.tokens],
      computed: p.computed,
      chain: [...p.chain],
    });
  }

  /**
   * Drops `seq`. Its blocks no other sequence holds become cached (if registered) or free. They
   * enter the LRU last block first, so a sequence's tail is evicted before its prefix, which more
   * prompts are likely to share.
   */
  free(seq: number): void {
    const s = this.get(seq);
    for (let k = s.table.length - 1; k >= 0; k--) this.release(s.table[k] as number);
    this.seqs.delete(seq);
  }

  stats(): BlockManagerStats {
    const free = this.freeList.length;
    const cached = this.lru.size;
    return {
      totalBlocks: this.numBlocks,
      freeBlocks: free,
      usedBlocks: this.numBlocks - free - cached,
      cachedBlocks: cached,
      availableBlocks: free + cached,
      hashedBlocks: this.index.size,
      peakUsedBlocks: this.peakUsed,
      queriedTokens: this.queried,
      hitTokens: this.hits,
      hitRate: this.queried > 0 ? this.hits / this.queried : 0,
      evictions: this.index.evictions,
    };
  }

  /**
   * Throws, naming the first violation, unless the bookkeeping is consistent: every block is
   * exactly one of free, cached or in use; refcounts equal the number of table entries; only a
   * sequence's last block is partial; sharers of a block agree on its tokens; hash table entries
   * are full blocks whose contents match their hash and every sequence holding them.
   */
  checkInvariants(): void {
    const fail = (why: string): never => {
      throw new Error(`BlockManager invariant violated: ${why}`);
    };
    const B = this.blockSize;
    const refs = new Array<number>(this.numBlocks).fill(0);
    /** Tokens of each referenced block, as first seen, to compare with the other sharers. */
    const seen = new Map<number, { seq: number; tokens: number[] }>();
    for (const [id, s] of this.seqs) {
      const n = s.tokens.length;
      if (s.table.length !== this.blocksFor(n))
        fail(`sequence ${id} has ${s.table.length} blocks for ${n} tokens (only the last may be partial)`);
      if (s.computed > n) fail(`sequence ${id} has ${s.computed} of ${n} tokens computed`);
      if (s.chain.length !== Math.floor(s.computed / B))
        fail(`sequence ${id} has ${s.chain.length} committed blocks for ${s.computed} computed tokens`);
      s.chain.forEach((c, k) => {
        if (c.parent !== (s.chain[k - 1] ?? null)) fail(`sequence ${id} block ${k} has the wrong parent`);
        if (!sameTokens(c.tokens, s.tokens.slice(k * B, (k + 1) * B)))
          fail(`sequence ${id} block ${k}'s identity does not match its tokens`);
      });
      s.table.forEach((b, k) => {
        if (!Number.isInteger(b) || b < 0 || b >= this.numBlocks) fail(`sequence ${id} holds block ${b}`);
        refs[b] = (refs[b] ?? 0) + 1;
        const tokens = s.tokens.slice(k * B, (k + 1) * B);
        const c = this.index.contentOf(b);
        if (c && !sameTokens(c.tokens, tokens))
          fail(`hashed block ${b} does not hold sequence ${id}'s tokens of block ${k} (or is partial there)`);
        const first = seen.get(b);
        if (!first) seen.set(b, { seq: id, tokens });
        else if (!sameTokens(first.tokens, tokens))
          fail(`sequences ${first.seq} and ${id} share block ${b} with different tokens`);
      });
    }
    const free = new Set(this.freeList);
    if (free.size !== this.freeList.length) fail('a block is on the free list twice');
    for (let b = 0; b < this.numBlocks; b++) {
      const rc = this.refCount[b] as number;
      if (rc !== refs[b]) fail(`block ${b} has refcount ${rc} but ${refs[b]} table entries`);
      const states = (free.has(b) ? 1 : 0) + (this.lru.has(b) ? 1 : 0) + (rc > 0 ? 1 : 0);
      if (states !== 1) fail(`block ${b} is in ${states} of the states free, cached, in use`);
      const c = this.index.contentOf(b);
      if (free.has(b) && c) fail(`free block ${b} is still hashed`);
      if (this.lru.has(b) && !c) fail(`cached block ${b} holds no hashed content`);
      if (c && this.index.holder(c.hash) !== b) fail(`block ${b}'s content is not in the hash table`);
    }
    this.index.checkEntries(fail);
    if (this.peakUsed < this.numBlocks - free.size - this.lru.size) fail('peak used is below current use');
  }

  private get(seq: number): Sequence {
    const s = this.seqs.get(seq);
    if (!s) throw new Error(`unknown sequence ${seq}`);
    return s;
  }

  private checkNewId(seq: number): void {
    if (!Number.isSafeInteger(seq)) throw new RangeError(`sequence id must be an integer, got ${seq}`);
    if (this.seqs.has(seq)) throw new Error(`sequence ${seq} already exists`);
  }

  private checkFits(blocks: number, what: string): void {
    if (blocks > this.numBlocks)
      throw new InvalidRequestError(
        `${what} needs ${blocks} KV cache blocks of ${this.blockSize} tokens, but the pool has only ${this.numBlocks}`,
      );
  }

  private blocksFor(tokens: number): number {
    return Math.ceil(tokens / this.blockSize);
  }

  private available(): number {
    return this.freeList.length + this.lru.size;
  }

  private lastBlockIsShared(s: Sequence): boolean {
    if (s.tokens.length % this.blockSize === 0) return false; // the next write opens a new block
    return (this.refCount[s.table[s.table.length - 1] as number] as number) > 1;
  }

  private slot(s: Sequence, position: number): number {
    const block = s.table[Math.floor(position / this.blockSize)] as number;
    return block * this.blockSize + (position % this.blockSize);
  }

  private slots(s: Sequence, from: number, to: number): number[] {
    const out: number[] = [];
    for (let p = from; p < to; p++) out.push(this.slot(s, p));
    return out;
  }

  private planAdmission(tokenIds: readonly number[]): {
    hit: { blocks: number[]; chain: BlockContent[] };
    fresh: number;
    available: number;
  } {
    checkTokens(tokenIds);
    if (tokenIds.length === 0) throw new RangeError('a prompt needs at least one token');
    const total = this.blocksFor(tokenIds.length);
    this.checkFits(total, `a prompt of ${tokenIds.length} tokens`);
    const hit = this.lookup(tokenIds);
    // Cached hits are revived rather than allocated, so they do not count as available.
    const revived = hit.blocks.filter((b) => this.refCount[b] === 0).length;
    return { hit, fresh: total - hit.blocks.length, available: this.available() - revived };
  }

  private lookup(tokenIds: readonly number[]): { blocks: number[]; chain: BlockContent[] } {
    return this.prefixCaching ? this.index.lookup(tokenIds) : { blocks: [], chain: [] };
  }

  /** Registers full computed block k of `s` in the hash table, or adopts the identical registered one. */
  private commitBlock(s: Sequence, k: number): void {
    const B = this.blockSize;
    const parent = s.chain[k - 1] ?? null;
    const tokens = s.tokens.slice(k * B, (k + 1) * B);
    const hash = this.index.hashOf(parent, tokens);
    let holder = this.index.holder(hash);
    const existing = holder === undefined ? null : this.index.match(holder, parent, tokens);
    if (existing) {
      // Same content already registered (another sequence computed it too, or this block itself
      // after a fork): reuse its identity so later blocks chain to it; this copy stays unhashed.
      s.chain.push(existing);
      return;
    }
    const content: BlockContent = { hash, tokens, parent };
    s.chain.push(content);
    // The key is taken by different content: a true collision, or a block whose prefix was
    // evicted (unreachable now). An unreferenced holder gives way to the live block; one in use
    // keeps the key, and this block is simply not shared.
    if (holder !== undefined && this.refCount[holder] === 0) {
      this.lru.delete(holder);
      this.index.unhash(holder);
      this.freeList.push(holder);
      holder = undefined;
    }
    const block = s.table[k] as number;
    // A block already hashed under another identity (sharers that committed it with different
    // prefix objects) keeps its entry.
    if (holder === undefined && this.index.contentOf(block) === null) this.index.register(block, content);
  }

  /** A block from the free list, else the least recently used cached block. Callers check availability. */
  private allocate(): number {
    let b = this.freeList.pop();
    if (b === undefined) {
      b = this.lru.values().next().value;
      if (b === undefined) throw new Error('BlockManager: allocate with no available block'); // a bug here
      this.lru.delete(b);
      this.index.unhash(b);
    }
    this.refCount[b] = 1;
    this.notePeak();
    return b;
  }

  private retain(b: number): void {
    const rc = this.refCount[b] as number;
    if (rc === 0) this.lru.delete(b); // a prefix hit revives a cached block
    this.refCount[b] = rc + 1;
    if (rc === 0) this.notePeak();
  }

  private release(b: number): void {
    const rc = (this.refCount[b] as number) - 1;
    this.refCount[b] = rc;
    if (rc > 0) return;
    if (this.index.contentOf(b)) this.lru.add(b);
    else this.freeList.push(b);
  }

  private notePeak(): void {
    this.peakUsed = Math.max(this.peakUsed, this.numBlocks - this.freeList.length - this.lru.size);
  }
}

function checkTokens(tokenIds: readonly number[]): void {
  for (const t of tokenIds)
    if (!Number.isInteger(t) || t < 0 || t > 0xffffffff)
      throw new RangeError(`token ids must be integers in [0, 2^32), got ${t}`);
}
