import { describe, expect, test } from 'vitest';
import { InvalidRequestError, KilnError } from '../../src/errors.js';
import {
  BlockManager,
  defaultBlockHash,
  OutOfBlocksError,
  type BlockHashFn,
} from '../../src/engine/kv/block-manager.js';
import { Rng } from '../../src/engine/sampling/rng.js';

const B = 16;
const range = (n: number, start = 0): number[] => Array.from({ length: n }, (_, i) => start + i);
const blocksFor = (tokens: number, blockSize = B): number => Math.ceil(tokens / blockSize);

/** Admits and marks the whole prompt computed, as a finished prefill would. */
function prefill(bm: BlockManager, seq: number, tokens: number[]): number {
  const { cachedTokens } = bm.admit(seq, tokens);
  bm.markComputed(seq);
  return cachedTokens;
}

/** Every position's slot in the sequence, via the public per-position lookup. */
const allSlots = (bm: BlockManager, seq: number): number[] =>
  range(bm.numTokens(seq)).map((p) => bm.slotFor(seq, p));

describe('block tables and slots', () => {
  test.each([1, 15, 16, 17, 33, 4097])(
    'a %i-token prompt takes ceil(n / 16) blocks; slot = block · 16 + offset',
    (n) => {
      const bm = new BlockManager({ numBlocks: 300 });
      const { cachedTokens, slots } = bm.admit(1, range(n, 1000));
      expect(cachedTokens).toBe(0);
      const table = bm.blockTable(1);
      expect(table).toHaveLength(blocksFor(n));
      // A fresh pool hands out blocks 0, 1, 2, …
      expect([...table]).toEqual(range(blocksFor(n)));
      expect(slots).toEqual(range(n).map((p) => (table[Math.floor(p / B)] as number) * B + (p % B)));
      expect(allSlots(bm, 1)).toEqual(slots);
      expect(bm.stats()).toMatchObject({ usedBlocks: blocksFor(n), freeBlocks: 300 - blocksFor(n) });
      bm.checkInvariants();
    },
  );

  test('appending one token at a time opens a block exactly when a boundary is crossed', () => {
    const bm = new BlockManager({ numBlocks: 300 });
    bm.admit(1, [7]);
    for (let n = 2; n <= 4097; n++) {
      const before = bm.blockTable(1).length;
      const { slots, copies } = bm.appendSlots(1, [n]);
      expect(copies).toEqual([]);
      const table = bm.blockTable(1);
      expect(table.length - before).toBe((n - 1) % B === 0 ? 1 : 0);
      expect(slots).toEqual([(table[table.length - 1] as number) * B + ((n - 1) % B)]);
      if ([15, 16, 17, 33, 4097].includes(n)) {
        expect(table).toHaveLength(blocksFor(n));
        bm.checkInvariants();
      }
    }
  });

  test('one append can cross several boundaries', () => {
    const bm = new BlockManager({ numBlocks: 8 });
    bm.admit(1, range(15));
    const { slots } = bm.appendSlots(1, range(34, 100)); // positions 15..48: finishes block 0, fills 1 and 2, opens 3
    expect(bm.blockTable(1)).toEqual([0, 1, 2, 3]);
    expect(slots).toEqual(range(34, 15));
    expect(bm.appendSlots(1, [])).toEqual({ slots: [], copies: [] });
    expect(bm.numTokens(1)).toBe(49);
  });

  test('blocksNeeded / canAppend count only new boundaries', () => {
    const bm = new BlockManager({ numBlocks: 4 });
    bm.admit(1, range(15));
    expect(bm.blocksNeeded(1, 1)).toBe(0);
    expect(bm.blocksNeeded(1, 2)).toBe(1);
    expect(bm.blocksNeeded(1, 49)).toBe(3);
    expect(bm.canAppend(1, 49)).toBe(true);
    expect(() => bm.canAppend(1, 50)).toThrow(InvalidRequestError);
  });
});

describe('many sequences', () => {
  test('interleaved growth: disjoint slots, at most one partial block per sequence', () => {
    const bm = new BlockManager({ numBlocks: 400 });
    const rng = new Rng(7);
    const ids = range(8, 10);
    for (const id of ids) bm.admit(id, [id]);
    for (let round = 0; round < 40; round++) {
      for (const id of ids) bm.appendSlots(id, range(1 + Math.floor(rng.next() * 20), round * 100));
      bm.checkInvariants();
      let used = 0;
      const slots = new Set<number>();
      for (const id of ids) {
        const n = bm.numTokens(id);
        // Fragmentation is bounded by one partial block per sequence.
        expect(bm.blockTable(id)).toHaveLength(blocksFor(n));
        used += blocksFor(n);
        for (const s of allSlots(bm, id)) slots.add(s);
      }
      // No two sequences (and no two positions) write the same slot.
      expect(slots.size).toBe(ids.reduce((sum, id) => sum + bm.numTokens(id), 0));
      expect(bm.stats().usedBlocks).toBe(used);
    }
    const freed = ids.slice(0, 4).reduce((sum, id) => sum + bm.blockTable(id).length, 0);
    const freeBefore = bm.stats().freeBlocks;
    for (const id of ids.slice(0, 4)) bm.free(id);
    expect(bm.stats().freeBlocks).toBe(freeBefore + freed); // nothing was computed, so nothing is cached
    expect(bm.stats().cachedBlocks).toBe(0);
    bm.checkInvariants();
  });
});

describe('prefix sharing', () => {
  const prefix = range(100, 5000);

  test('two prompts with a shared 100-token prefix hold its 6 full blocks once', () => {
    const bm = new BlockManager({ numBlocks: 64 });
    const a = [...prefix, ...range(20, 1)]; // 120 tokens, 8 blocks
    const b = [...prefix, ...range(30, 2)]; // 130 tokens, 9 blocks
    expect(prefill(bm, 1, a)).toBe(0);
    expect(bm.cachedPrefixLength(b)).toBe(96);
    expect(bm.blocksToAdmit(b)).toBe(9 - 6);
    const { cachedTokens, slots } = bm.admit(2, b);
    expect(cachedTokens).toBe(96); // 6 full blocks; block 6 mixes prefix and suffix
    expect(slots).toHaveLength(130 - 96);
    expect(slots[0]).toBe(bm.slotFor(2, 96));
    expect(bm.blockTable(2).slice(0, 6)).toEqual(bm.blockTable(1).slice(0, 6));
    expect(new Set([...bm.blockTable(1), ...bm.blockTable(2)]).size).toBe(8 + 3);
    expect(bm.stats()).toMatchObject({
      usedBlocks: 11,
      queriedTokens: 250,
      hitTokens: 96,
      hitRate: 96 / 250,
    });
    bm.checkInvariants();

    // The shared blocks stay in use until their last holder goes.
    bm.markComputed(2);
    bm.free(1);
    expect(bm.stats().usedBlocks).toBe(9);
    bm.free(2);
    expect(bm.stats()).toMatchObject({ usedBlocks: 0, cachedBlocks: 7 + 2 }); // a's 7 full blocks, b's 2 own
    bm.checkInvariants();
  });

  test('the last prompt token is always computed: a cached whole-block prompt reuses all but one block', () => {
    const bm = new BlockManager({ numBlocks: 8 });
    const a = range(32, 1);
    prefill(bm, 1, a);
    bm.free(1);
    expect(bm.stats().cachedBlocks).toBe(2);
    expect(bm.cachedPrefixLength(a)).toBe(16);
    const { cachedTokens, slots } = bm.admit(2, a);
    expect(cachedTokens).toBe(16);
    expect(slots).toEqual(range(16).map((i) => bm.slotFor(2, 16 + i)));
    bm.markComputed(2);
    // The recomputed block duplicates the cached one: the hash table keeps one copy.
    expect(bm.stats().hashedBlocks).toBe(2);
    bm.free(2);
    // One more token and both blocks are reusable.
    expect(bm.cachedPrefixLength([...a, 99])).toBe(32);
    bm.checkInvariants();
  });

  test('blocks are shared only once their KV is marked computed', () => {
    const bm = new BlockManager({ numBlocks: 16 });
    const a = range(48, 1);
    bm.admit(1, a);
    expect(bm.cachedPrefixLength(a)).toBe(0);
    bm.markComputed(1, 20); // block 0 written, block 1 only partly
    expect(bm.cachedPrefixLength(a)).toBe(16);
    bm.free(1); // block 1 and 2 were never fully written: they go back free, not cached
    expect(bm.stats()).toMatchObject({ cachedBlocks: 1, freeBlocks: 15 });
    bm.checkInvariants();
  });

  test('hits are counted only for admissions that succeed', () => {
    const bm = new BlockManager({ numBlocks: 3 });
    prefill(bm, 1, range(33));
    expect(() => bm.admit(2, range(33))).toThrow(OutOfBlocksError);
    expect(bm.stats()).toMatchObject({ queriedTokens: 33, hitTokens: 0 });
  });
});

describe('hash collisions never share wrong KV', () => {
  test('every block hashing alike: different content misses, identical content still hits', () => {
    const bm = new BlockManager({ numBlocks: 32, hashBlock: () => 42 });
    const a = range(48, 1);
    prefill(bm, 1, a);
    const b = range(48, 500);
    expect(prefill(bm, 2, b)).toBe(0);
    expect(bm.blockTable(2).some((blk) => bm.blockTable(1).includes(blk))).toBe(false);
    // Only block 0 of `a` could take the single key; a prompt starting like `a` shares exactly it.
    const c = [...a.slice(0, 40), 7];
    expect(bm.admit(3, c).cachedTokens).toBe(16);
    expect(bm.blockTable(3)[0]).toBe(bm.blockTable(1)[0]);
    bm.checkInvariants();
  });

  test('a hash that ignores the parent cannot make a block follow the wrong prefix', () => {
    const tokensOnly: BlockHashFn = (_parent, tokens) => defaultBlockHash(0, tokens);
    const bm = new BlockManager({ numBlocks: 32, hashBlock: tokensOnly });
    const x = range(16, 100);
    const x2 = range(16, 200);
    const y = range(16, 300);
    prefill(bm, 1, [...x, ...y, 1]); // registers x, then y after x
    prefill(bm, 2, [...x2, ...y, 1]); // x2 registers; y after x2 finds its key taken by y after x
    // Same key and same tokens for the second block, but it was computed after x, not x2.
    expect(bm.cachedPrefixLength([...x2, ...y, 5])).toBe(16);
    expect(bm.cachedPrefixLength([...x, ...y, 5])).toBe(32);
    bm.checkInvariants();
  });
});

describe('copy-on-write after fork', () => {
  test('the first writer into a shared partial block copies it; the last holder writes in place', () => {
    const bm = new BlockManager({ numBlocks: 8 });
    prefill(bm, 1, range(20, 1)); // block 0 full, block 1 holds 4 tokens
    bm.fork(1, 2);
    const [b0, b1] = bm.blockTable(1) as [number, number];
    expect(bm.blockTable(2)).toEqual([b0, b1]);
    expect(bm.stats().usedBlocks).toBe(2);
    bm.checkInvariants();

    expect(bm.blocksNeeded(2, 1)).toBe(1);
    const child = bm.appendSlots(2, [77]);
    const copy = bm.blockTable(2)[1] as number;
    expect(child.copies).toEqual([{ src: b1, dst: copy }]);
    expect(copy).not.toBe(b1);
    expect(bm.blockTable(2)).toEqual([b0, copy]); // the full block stays shared
    expect(child.slots).toEqual([copy * B + 4]);
    bm.checkInvariants();

    expect(bm.blocksNeeded(1, 1)).toBe(0);
    const parent = bm.appendSlots(1, [88]);
    expect(parent.copies).toEqual([]);
    expect(parent.slots).toEqual([b1 * B + 4]);
    expect(bm.stats().usedBlocks).toBe(3);
    bm.checkInvariants();

    bm.free(1);
    expect(bm.blockTable(2)).toEqual([b0, copy]);
    bm.checkInvariants();
  });

  test('forking at a block boundary needs no copy', () => {
    const bm = new BlockManager({ numBlocks: 8 });
    prefill(bm, 1, range(32));
    bm.fork(1, 2);
    const { copies, slots } = bm.appendSlots(2, [5]);
    expect(copies).toEqual([]);
    expect(bm.blockTable(2)).toEqual([0, 1, 2]);
    expect(slots).toEqual([2 * B]);
    bm.checkInvariants();
  });

  test('fork requires a fully computed parent and a new child id', () => {
    const bm = new BlockManager({ numBlocks: 8 });
    bm.admit(1, range(20));
    expect(() => bm.fork(1, 2)).toThrow(/only 0 of its 20 tokens are computed/);
    bm.markComputed(1);
    bm.admit(3, [1]);
    expect(() => bm.fork(1, 3)).toThrow(/sequence 3 already exists/);
    expect(() => bm.fork(9, 4)).toThrow(/unknown sequence 9/);
  });
});

describe('eviction', () => {
  // 33-token prompts: two full blocks (cacheable) and one partial block.
  const p = (k: number) => range(33, 1000 * k);

  test('cached blocks are evicted least recently used first, a sequence’s tail before its prefix', () => {
    const bm = new BlockManager({ numBlocks: 6 });
    prefill(bm, 1, p(1));
    bm.free(1);
    prefill(bm, 2, p(2));
    bm.free(2);
    // LRU: a1, a0, b1, b0; the 2 free blocks are used before any eviction.
    expect(bm.stats()).toMatchObject({ cachedBlocks: 4, freeBlocks: 2 });
    // Touch `a` again: revived and released, it becomes the most recently used.
    prefill(bm, 1, p(1));
    bm.free(1);
    // LRU: b1, b0, a1, a0.
    bm.admit(3, range(48, 9000)); // 3 blocks: 2 free + evicts b1
    expect(bm.stats().evictions).toBe(1);
    expect(bm.cachedPrefixLength(p(2))).toBe(16);
    expect(bm.cachedPrefixLength(p(1))).toBe(32);
    bm.appendSlots(3, [1]); // one more block: evicts b0
    expect(bm.cachedPrefixLength(p(2))).toBe(0);
    expect(bm.cachedPrefixLength(p(1))).toBe(32);
    bm.appendSlots(3, range(16)); // then a's tail block a1
    expect(bm.cachedPrefixLength(p(1))).toBe(16);
    expect(bm.stats()).toMatchObject({ evictions: 3, cachedBlocks: 1, freeBlocks: 0 });
    bm.checkInvariants();
  });

  test('a prefix hit revives cached blocks: same physical blocks, back in use, no eviction', () => {
    const bm = new BlockManager({ numBlocks: 6 });
    prefill(bm, 1, p(1));
    const [a0, a1] = bm.blockTable(1) as [number, number];
    bm.free(1);
    expect(bm.stats()).toMatchObject({ usedBlocks: 0, cachedBlocks: 2 });
    expect(bm.admit(2, p(1)).cachedTokens).toBe(32);
    expect(bm.blockTable(2).slice(0, 2)).toEqual([a0, a1]);
    expect(bm.stats()).toMatchObject({ usedBlocks: 3, cachedBlocks: 0, evictions: 0 });
    // In use again, they cannot be evicted by a request that needs every other block.
    bm.admit(3, range(48, 7000));
    expect(() => bm.admit(4, [1])).toThrow(OutOfBlocksError);
    expect(bm.blockTable(2).slice(0, 2)).toEqual([a0, a1]);
    bm.checkInvariants();
  });

  test('blocks a prompt would revive do not count as available for its fresh blocks', () => {
    const bm = new BlockManager({ numBlocks: 4 });
    prefill(bm, 1, p(1));
    bm.free(1); // a0, a1 cached; 2 free
    bm.admit(2, range(17, 500)); // takes the 2 free blocks
    expect(bm.blocksToAdmit(p(1))).toBe(1);
    expect(bm.canAdmit(p(1))).toBe(false);
    const err = catchError(() => bm.admit(3, p(1)));
    expect(err).toBeInstanceOf(OutOfBlocksError);
    expect(err).toMatchObject({ needed: 1, available: 0 });
    bm.free(2);
    expect(bm.admit(3, p(1)).cachedTokens).toBe(32);
    bm.checkInvariants();
  });
});

function catchError(fn: () => unknown): unknown {
  try {
    fn();
  } catch (e) {
    return e;
  }
  throw new Error('expected a throw');
}

describe('running out of blocks', () => {
  test('admit: OutOfBlocksError with both numbers and no change; succeeds after a free', () => {
    const bm = new BlockManager({ numBlocks: 4 });
    bm.admit(1, range(40)); // 3 blocks
    const before = bm.stats();
    expect(bm.canAdmit(range(40, 100))).toBe(false);
    const err = catchError(() => bm.admit(2, range(40, 100)));
    expect(err).toBeInstanceOf(OutOfBlocksError);
    expect(err).toBeInstanceOf(KilnError);
    expect(err).toMatchObject({ needed: 3, available: 1, name: 'OutOfBlocksError' });
    expect((err as Error).message).toMatch(/3 needed, 1 free or evictable/);
    expect(bm.has(2)).toBe(false);
    expect(bm.stats()).toEqual(before);
    bm.checkInvariants();
    bm.free(1);
    expect(bm.admit(2, range(40, 100)).slots).toHaveLength(40);
  });

  test('appendSlots: OutOfBlocksError leaves the sequence as it was', () => {
    const bm = new BlockManager({ numBlocks: 2 });
    bm.admit(1, range(16));
    bm.admit(2, range(16));
    expect(bm.canAppend(1, 1)).toBe(false);
    expect(() => bm.appendSlots(1, [1])).toThrow(OutOfBlocksError);
    expect(bm.numTokens(1)).toBe(16);
    expect(bm.blockTable(1)).toEqual([0]);
    bm.checkInvariants();
  });

  test('a copy-on-write needs a block too', () => {
    const bm = new BlockManager({ numBlocks: 3 });
    prefill(bm, 1, range(20));
    bm.fork(1, 2);
    expect(bm.blocksNeeded(2, 1)).toBe(1);
    expect(bm.canAppend(2, 1)).toBe(true);
    bm.appendSlots(2, [1]);
    expect(bm.stats().freeBlocks).toBe(0);
    bm.markComputed(2);
    bm.fork(2, 3);
    expect(bm.canAppend(3, 1)).toBe(false);
    expect(catchError(() => bm.appendSlots(3, [1]))).toMatchObject({ needed: 1, available: 0 });
    bm.checkInvariants();
  });

  test('a request that can never fit is an InvalidRequestError naming both numbers', () => {
    const bm = new BlockManager({ numBlocks: 4 });
    const never = /a prompt of 65 tokens needs 5 KV cache blocks of 16 tokens, but the pool has only 4/;
    expect(() => bm.admit(1, range(65))).toThrow(InvalidRequestError);
    expect(() => bm.admit(1, range(65))).toThrow(never);
    expect(() => bm.canAdmit(range(65))).toThrow(never);
    bm.admit(1, range(64));
    expect(() => bm.appendSlots(1, [1])).toThrow(
      /sequence 1 at 65 tokens needs 5 KV cache blocks of 16 tokens, but the pool has only 4/,
    );
    expect(bm.has(1)).toBe(true);
    bm.checkInvariants();
  });

  test('invalid ids, positions and tokens are named in the error', () => {
    const bm = new BlockManager({ numBlocks: 4 });
    bm.admit(1, range(5));
    expect(() => bm.admit(1, [1])).toThrow(/sequence 1 already exists/);
    expect(() => bm.admit(1.5, [1])).toThrow(/sequence id must be an integer, got 1.5/);
    expect(() => bm.admit(2, [])).toThrow(/at least one token/);
    expect(() => bm.admit(2, [1, -3])).toThrow(/got -3/);
    expect(() => bm.appendSlots(1, [0.5])).toThrow(/got 0.5/);
    for (const call of [
      () => bm.slotFor(9, 0),
      () => bm.appendSlots(9, [1]),
      () => bm.markComputed(9),
      () => bm.blockTable(9),
      () => bm.free(9),
    ])
      expect(call).toThrow(/unknown sequence 9/);
    expect(() => bm.slotFor(1, 5)).toThrow(/position 5 is outside sequence 1 \(5 tokens\)/);
    expect(() => bm.markComputed(1, 6)).toThrow(/cannot mark 6 tokens computed: sequence 1 has 5/);
    bm.free(1);
    expect(() => bm.free(1)).toThrow(/unknown sequence 1/);
    expect(() => new BlockManager({ numBlocks: 0 })).toThrow(/numBlocks must be a positive integer/);
    bm.checkInvariants();
  });
});

describe('randomized stress (seeded)', () => {
  /**
   * Simulates the GPU: each slot holds the prefix its KV was computed from (KV at position p
   * depends on tokens 0..p). Writes land when the test "computes" them, copies when returned. After
   * every operation, each computed position of each sequence must read its own prefix back, so
   * sharing a block computed after a different prefix, or a block never written, is caught.
   */
  const configs: { name: string; blockSize: number; hashBlock?: BlockHashFn }[] = [
    { name: 'blocks of 4, default hash', blockSize: 4 },
    { name: 'blocks of 16, default hash', blockSize: 16 },
    // Three buckets and no parent: nearly every commit and lookup goes through a collision path.
    { name: 'blocks of 4, degenerate hash', blockSize: 4, hashBlock: (_p, t) => (t[0] ?? 0) % 3 },
  ];

  test.each(configs)('$name', ({ blockSize, hashBlock }) => {
    const numBlocks = 24;
    const bm = new BlockManager({ numBlocks, blockSize, hashBlock });
    const rng = new Rng(20240611 + blockSize);
    const int = (n: number) => Math.floor(rng.next() * n);
    const kv: (string | null)[] = new Array<string | null>(numBlocks * blockSize).fill(null);
    const tokens = new Map<number, number[]>();
    /** Per sequence, the prefix key of every position (built as tokens arrive: keys[p] names tokens 0..p). */
    const keys = new Map<number, string[]>();
    const extend = (seq: number, add: readonly number[]) => {
      const k = keys.get(seq) ?? [];
      for (const t of add) k.push(k.length > 0 ? `${k[k.length - 1]},${t}` : `${t}`);
      keys.set(seq, k);
      tokens.set(seq, [...(tokens.get(seq) ?? []), ...add]);
    };
    const pending = new Map<number, { p: number; slot: number }[]>();
    const bases = [range(60, 10), range(60, 10).reverse(), range(60, 10).map((t) => t % 4)];
    const kvOf = (seq: number, p: number): string => {
      const key = keys.get(seq)?.[p];
      if (key === undefined) throw new Error(`test bug: no key for sequence ${seq} position ${p}`);
      return key;
    };
    let nextId = 0;
    const counts = { admit: 0, hits: 0, append: 0, copies: 0, compute: 0, fork: 0, free: 0, outOfBlocks: 0 };

    const live = () => [...tokens.keys()];
    const pick = () => live()[int(live().length)];
    const compute = (seq: number, upTo: number) => {
      const rest: { p: number; slot: number }[] = [];
      for (const w of pending.get(seq) ?? []) {
        expect(bm.slotFor(seq, w.p)).toBe(w.slot); // slots handed out stay valid until computed
        if (w.p < upTo) kv[w.slot] = kvOf(seq, w.p);
        else rest.push(w);
      }
      pending.set(seq, rest);
      bm.markComputed(seq, upTo);
    };
    const expectNoChange = (fn: () => unknown) => {
      const before = JSON.stringify(bm.stats());
      const err = catchError(fn);
      if (!(err instanceof OutOfBlocksError) && !(err instanceof InvalidRequestError)) throw err;
      if (err instanceof OutOfBlocksError) counts.outOfBlocks++;
      expect(JSON.stringify(bm.stats())).toBe(before);
    };

    for (let step = 0; step < 3000; step++) {
      // admit 2/10, append 3/10, compute 2/10, fork 1/10, free 2/10: the population stays bounded.
      const op = int(10);
      const seq = pick();
      if (op < 2 || seq === undefined) {
        const base = bases[int(bases.length)] as number[];
        const prompt = [...base.slice(0, 1 + int(40)), ...range(int(8)).map(() => int(4))];
        const id = nextId++;
        if (bm.canAdmit(prompt)) {
          const { cachedTokens, slots } = bm.admit(id, prompt);
          extend(id, prompt);
          pending.set(
            id,
            slots.map((slot, i) => ({ p: cachedTokens + i, slot })),
          );
          counts.admit++;
          counts.hits += cachedTokens;
          expect(cachedTokens % blockSize).toBe(0);
          expect(cachedTokens).toBeLessThan(prompt.length);
        } else expectNoChange(() => bm.admit(id, prompt));
      } else if (op < 5) {
        const add = range(1 + int(6)).map(() => int(4));
        const fits = (() => {
          try {
            return bm.canAppend(seq, add.length);
          } catch {
            return false;
          }
        })();
        if (!fits) {
          expectNoChange(() => bm.appendSlots(seq, add));
          continue;
        }
        const from = bm.numTokens(seq);
        const { slots, copies } = bm.appendSlots(seq, add);
        for (const { src, dst } of copies)
          for (let o = 0; o < blockSize; o++) kv[dst * blockSize + o] = kv[src * blockSize + o] ?? null;
        extend(seq, add);
        for (const [i, slot] of slots.entries()) pending.get(seq)?.push({ p: from + i, slot });
        counts.append++;
        counts.copies += copies.length;
      } else if (op < 7) {
        const n = bm.numTokens(seq);
        const c = bm.numComputed(seq);
        compute(seq, c + int(n - c + 1));
        counts.compute++;
      } else if (op < 8) {
        compute(seq, bm.numTokens(seq));
        const child = nextId++;
        bm.fork(seq, child);
        tokens.set(child, [...(tokens.get(seq) as number[])]);
        keys.set(child, [...(keys.get(seq) as string[])]);
        pending.set(child, []);
        counts.fork++;
      } else {
        bm.free(seq);
        tokens.delete(seq);
        keys.delete(seq);
        pending.delete(seq);
        counts.free++;
      }

      bm.checkInvariants();
      // Plain comparisons, one expect per step: per-position expects would dominate the run time.
      const wrong: string[] = [];
      for (const s of live()) {
        if (bm.numTokens(s) !== (tokens.get(s) as number[]).length) wrong.push(`sequence ${s} length`);
        for (let p = 0; p < bm.numComputed(s); p++)
          if (kv[bm.slotFor(s, p)] !== kvOf(s, p)) wrong.push(`sequence ${s} position ${p}`);
      }
      expect(wrong, `step ${step}`).toEqual([]);
      const st = bm.stats();
      expect(st.freeBlocks + st.usedBlocks + st.cachedBlocks).toBe(numBlocks);
    }
    // The run exercised every path it is meant to test.
    for (const [what, n] of Object.entries(counts)) expect(n, what).toBeGreaterThan(0);
    for (const s of live()) bm.free(s);
    bm.checkInvariants();
    expect(bm.stats().usedBlocks).toBe(0);
  });
});
