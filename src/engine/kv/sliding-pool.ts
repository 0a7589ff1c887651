/**
 * The sliding layers' own KV pool. A layer with a sliding window W (ModelSpec.layerWindows) never
 * reads a key more than W - 1 positions behind the row that asks, and every attention kernel
 * starts at the 16-token block of the window's first key, so once every row a sequence will
 * still compute is past a block's window, that block is dead for those layers. Sliding layers
 * therefore keep their K/V in buffers of their own, with a block table of their own per
 * sequence, and this pool hands their blocks out as positions are written and takes them back as
 * the windows move on; full-attention layers keep every block in the BlockManager's pool.
 *
 * The sliding table of a sequence has one entry per logical block, like its full table (so both
 * share the step's block-table offsets); the entries below the window and past the step are
 * RELEASED (a sentinel no kernel reads: the window guarantees it).
 *
 * Safety of a release: a step of rows [from, to) of a sequence is built after every earlier step
 * of it was submitted, and every later step of it starts at a position >= from (speculative
 * rejections truncate forward, preemption frees the sequence whole). A block whose keys all lie
 * before from - W + 1 is read by no later step; the steps already submitted that read it run
 * first, because the GPU runs submissions in queue order, so it may go to another sequence now.
 *
 * Each sequence reserves, at admission, the most blocks it can hold at once (`blocksPerSeq`,
 * bounded by the window plus one step's rows), so allocation inside a step never fails and the
 * sliding pool never preempts: admission waits for a reservation as it waits for full blocks.
 * No GPU code: the scheduler turns the tables and slots into step inputs.
 */
import { KilnError } from '../../errors.js';
import type { ModelSpec } from '../../model/spec.js';
import { OutOfBlocksError } from './block-types.js';

/** Which layers slide and the most blocks one sequence can hold in their pool. */
export interface SlidingLayout {
  /** Per layer: its K/V live in the sliding pool. */
  readonly layers: readonly boolean[];
  /** The widest window of those layers (what a release must keep). */
  readonly window: number;
  /** Blocks of the sliding pool one sequence can hold at once (its reservation). */
  readonly blocksPerSeq: number;
}

/** A released (or not yet written) entry of a sliding block table: never read by a kernel. */
export const RELEASED_BLOCK = 0xffffffff;

/**
 * The sliding pool's layout for a model served at `contextLength` with steps of at most `maxRows`
 * rows per sequence, or null when it would save nothing: no layer has a window shorter than the
 * context, or a sequence could hold as many sliding blocks as a whole context has.
 *
 * A step of n rows from position p holds the blocks from the one of p - W + 1 to the one of
 * p + n - 1: at most floor((W + n - 2) / 16) + 2 of them.
 */
export function slidingLayout(
  spec: ModelSpec,
  contextLength: number,
  maxRows: number,
  blockSize: number,
): SlidingLayout | null {
  const layers = spec.layerWindows.map((w) => w > 0 && w < contextLength);
  const windows = spec.layerWindows.filter((w, l) => layers[l]);
  if (windows.length === 0) return null;
  const window = Math.max(...windows);
  const blocksPerSeq = Math.floor((window + maxRows - 2) / blockSize) + 2;
  if (blocksPerSeq >= Math.ceil(contextLength / blockSize)) return null;
  return { layers, window, blocksPerSeq };
}

/**
 * Blocks of the sliding pool beside a full pool of `fullBlocks`: the windows of as many
 * whole-context sequences as the full pool holds (at least one), never more than the full pool.
 */
export function slidingPoolBlocks(
  layout: SlidingLayout,
  fullBlocks: number,
  contextLength: number,
  blockSize: number,
): number {
  const sequences = Math.max(1, Math.ceil(fullBlocks / Math.ceil(contextLength / blockSize)));
  return Math.min(fullBlocks, sequences * layout.blocksPerSeq);
}

export interface SlidingPoolStats {
  readonly totalBlocks: number;
  readonly usedBlocks: number;
  readonly peakUsedBlocks: number;
  /** Blocks promised to admitted sequences (their `blocksPerSeq` or less), used or not. */
  readonly reservedBlocks: number;
  /** The most blocks any one sequence has held at once. */
  readonly peakSeqBlocks: number;
}

interface SlidingSeq {
  /** Physical block of each logical block, or RELEASED_BLOCK. */
  readonly table: number[];
  readonly reserved: number;
  held: number;
}

export class SlidingPool {
  private readonly freeList: number[] = [];
  private readonly seqs = new Map<number, SlidingSeq>();
  private reservedTotal = 0;
  private peakUsed = 0;
  private peakSeq = 0;

  constructor(
    readonly layout: SlidingLayout,
    readonly numBlocks: number,
    readonly blockSize: number,
  ) {
    if (!Number.isSafeInteger(numBlocks) || numBlocks < layout.blocksPerSeq)
      throw new RangeError(
        `a sliding KV pool needs at least ${layout.blocksPerSeq} blocks (one sequence's), got ${numBlocks}`,
      );
    for (let b = numBlocks - 1; b >= 0; b--) this.freeList.push(b);
  }

  /** Blocks a sequence of at most `maxTokens` tokens reserves. */
  reservation(maxTokens: number): number {
    return Math.min(this.layout.blocksPerSeq, Math.ceil(maxTokens / this.blockSize));
  }

  /** Whether a sequence of at most `maxTokens` tokens can be reserved for now. */
  canReserve(maxTokens: number): boolean {
    return this.reservedTotal + this.reservation(maxTokens) <= this.numBlocks;
  }

  /** Admits `seq`, reserving its blocks. Throws OutOfBlocksError (nothing changed) when short. */
  reserve(seq: number, maxTokens: number): void {
    if (this.seqs.has(seq)) throw new Error(`sliding pool: sequence ${seq} already exists`);
    const n = this.reservation(maxTokens);
    if (this.reservedTotal + n > this.numBlocks)
      throw new OutOfBlocksError(n, this.numBlocks - this.reservedTotal);
    this.reservedTotal += n;
    this.seqs.set(seq, { table: [], reserved: n, held: 0 });
  }

  has(seq: number): boolean {
    return this.seqs.has(seq);
  }

  /**
   * Readies `seq` for a step of its rows [from, to): releases the blocks below the window of
   * position `from` and past the block of `to - 1` (rejected guesses' slots), and allocates the
   * blocks between. Returns the sequence's table (a live view), `blocksFor(to)` entries long.
   */
  prepare(seq: number, from: number, to: number): readonly number[] {
    const s = this.get(seq);
    if (!Number.isSafeInteger(from) || from < 0 || !(to > from))
      throw new RangeError(`sliding pool: bad rows [${from}, ${to})`);
    const B = this.blockSize;
    const lo = Math.floor(Math.max(0, from - this.layout.window + 1) / B);
    const end = Math.ceil(to / B);
    while (s.table.length > end) this.release(s, s.table.length - 1, true);
    for (let k = 0; k < Math.min(lo, s.table.length); k++) this.release(s, k, false);
    while (s.table.length < end) s.table.push(RELEASED_BLOCK);
    for (let k = lo; k < end; k++) {
      if (s.table[k] !== RELEASED_BLOCK) continue;
      if (s.held >= s.reserved)
        throw new KilnError(
          `internal: sliding pool sequence ${seq} needs more than its ${s.reserved} reserved blocks`,
        );
      const b = this.freeList.pop();
      if (b === undefined) throw new KilnError('internal: sliding pool has no free block for a reservation');
      s.table[k] = b;
      s.held++;
    }
    this.peakUsed = Math.max(this.peakUsed, this.numBlocks - this.freeList.length);
    this.peakSeq = Math.max(this.peakSeq, s.held);
    return s.table;
  }

  /** The slot of `position` of `seq` (its block must be live: within the last `prepare`). */
  slotFor(seq: number, position: number): number {
    const b = this.get(seq).table[Math.floor(position / this.blockSize)];
    if (b === undefined || b === RELEASED_BLOCK)
      throw new RangeError(`sliding pool: position ${position} of sequence ${seq} holds no block`);
    return b * this.blockSize + (position % this.blockSize);
  }

  /** Blocks `seq` holds now. */
  heldBlocks(seq: number): number {
    return this.get(seq).held;
  }

  /** Drops `seq`: its blocks and its reservation go back. */
  free(seq: number): void {
    const s = this.get(seq);
    for (let k = s.table.length - 1; k >= 0; k--) this.release(s, k, false);
    this.reservedTotal -= s.reserved;
    this.seqs.delete(seq);
  }

  stats(): SlidingPoolStats {
    return {
      totalBlocks: this.numBlocks,
      usedBlocks: this.numBlocks - this.freeList.length,
      peakUsedBlocks: this.peakUsed,
      reservedBlocks: this.reservedTotal,
      peakSeqBlocks: this.peakSeq,
    };
  }

  /** Throws unless every block is free or held by exactly one sequence within its reservation. */
  checkInvariants(): void {
    const owner = new Map<number, number>();
    let reserved = 0;
    for (const [id, s] of this.seqs) {
      let held = 0;
      for (const b of s.table) {
        if (b === RELEASED_BLOCK) continue;
        if (owner.has(b)) throw new Error(`sliding pool: block ${b} held by ${owner.get(b)} and ${id}`);
        owner.set(b, id);
        held++;
      }
      if (held !== s.held || held > s.reserved)
        throw new Error(
          `sliding pool: sequence ${id} holds ${held} blocks (${s.held} counted, ${s.reserved} reserved)`,
        );
      reserved += s.reserved;
    }
    if (reserved !== this.reservedTotal || reserved > this.numBlocks)
      throw new Error(
        `sliding pool: ${reserved} reserved, ${this.reservedTotal} counted, ${this.numBlocks} in all`,
      );
    const free = new Set(this.freeList);
    if (free.size !== this.freeList.length) throw new Error('sliding pool: a block is free twice');
    for (let b = 0; b < this.numBlocks; b++)
      if (free.has(b) === owner.has(b))
        throw new Error(`sliding pool: block ${b} is not exactly one of free, held`);
  }

  private get(seq: number): SlidingSeq {
    const s = this.seqs.get(seq);
    if (!s) throw new Error(`sliding pool: unknown sequence ${seq}`);
    return s;
  }

  private release(s: SlidingSeq, k: number, pop: boolean): void {
    const b = s.table[k] as number;
    if (pop) s.table.pop();
    else s.table[k] = RELEASED_BLOCK;
    if (b === RELEASED_BLOCK) return;
    this.freeList.push(b);
    s.held--;
  }
}

/**
 * Adds `seq`'s rows [from, to) to a step's sliding inputs, readying its blocks first (`prepare`):
 * each row's slot, and its sliding table padded with released entries to `fullTableLength`, the
 * length of its full table in the same step, so both tables share the rows' offsets.
 */
export function pushSlidingRows(
  rows: { slidingSlots: number[]; slidingBlockTable: number[] },
  pool: SlidingPool | null,
  seq: number,
  from: number,
  to: number,
  fullTableLength: number,
): void {
  if (!pool) return;
  const table = pool.prepare(seq, from, to);
  for (let k = 0; k < fullTableLength; k++) rows.slidingBlockTable.push(table[k] ?? RELEASED_BLOCK);
  for (let p = from; p < to; p++) rows.slidingSlots.push(pool.slotFor(seq, p));
}
