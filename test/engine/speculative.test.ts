/**
 * Speculative decoding (src/engine/speculative.ts, the scheduler's verifying steps): the drafting
 * rules on their own, the block manager's truncation of rejected slots, and on BabyLlama (a real
 * trained model) the same greedy ids as plain decoding, alone and batched, with every KV block
 * back in the pool afterwards; and on a prompt that the continuation copies, prompt lookup
 * accepting more than one guess per verifying step by the engine's own counters.
 */
import { RECYCLE_TREE, treeRows } from '../../src/engine/token-tree.js';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { InvalidRequestError } from '../../src/errors.js';
import { BlockManager } from '../../src/engine/kv/block-manager.js';
import { SpecClock } from '../../src/engine/schedule/spec-clock.js';
import { guessShare } from '../../src/engine/schedule/verify.js';
import { ATTENTION_DECODE_MAX_ROWS } from '../../src/kernels/attention-decode.js';
import { Speculator, TREE_NODES, checkSpeculative, lookup } from '../../src/engine/speculative.js';
import { convertLlama2cToFolder } from '../../src/node/convert.js';
import { createEngine } from '../../src/node/index.js';
import type { Engine } from '../../src/engine/engine.js';
import type { GenerateOptions } from '../../src/api/types.js';
import { sharedModel } from '../helpers/shared.js';

const RECYCLE_TREE_AS_TREE = { tokens: RECYCLE_TREE.parents.map(() => 0), parents: RECYCLE_TREE.parents };

describe('drafting', () => {
  test('lookup continues the latest earlier occurrence of the longest ending n-gram', () => {
    // "5 6 7" ends the sequence and occurs at 1..3 followed by 8 9; "6 7" alone also at 10..11.
    const t = [4, 5, 6, 7, 8, 9, 1, 6, 7, 2, 6, 7, 3, 5, 6, 7];
    expect(lookup(t, 3)).toEqual([8, 9, 1]);
    // Only a 1-gram match: the latest earlier 7 is followed by 3.
    expect(lookup([7, 3, 1, 7, 9, 7], 2)).toEqual([9, 7]);
    // The continuation stops at the end of the sequence.
    expect(lookup([1, 2, 1], 4)).toEqual([2, 1]);
    expect(lookup([1, 2, 3], 4)).toEqual([]);
    expect(lookup([1], 4)).toEqual([]);
    // Longer than 3: "1 2 3 4 5" occurs at the start, followed by 9; its last 3 tokens alone
    // occur later, followed by 7. The longest match places the copy.
    expect(lookup([1, 2, 3, 4, 5, 9, 8, 3, 4, 5, 7, 6, 1, 2, 3, 4, 5], 2)).toEqual([9, 8]);
    // Matches count up to 16 tokens: the end 1..18 occurs whole at the start (then 81) and as
    // its last 16 later (then 71); both count 16, so the latest wins.
    const x = Array.from({ length: 18 }, (_, i) => i + 1);
    expect(lookup([...x, 81, 82, 99, ...x.slice(2), 71, 72, ...x], 2)).toEqual([71, 72]);
  });

  test('guesses share a decode step within the rows split-K decode attention serves', () => {
    const decoding = (n: number) => Array.from({ length: n }, () => ({ tokens: [1, 2, 3], computed: 2 }));
    const prefilling = { tokens: [1, 2, 3, 4], computed: 0 };
    expect(ATTENTION_DECODE_MAX_ROWS).toBe(32);
    // One sequence: 31 guesses (maxDraft caps them further); 4: 7 each, 32 rows in all; 32
    // sequences fill the rows: none.
    expect(guessShare(decoding(1))).toBe(31);
    expect(guessShare(decoding(4))).toBe(7);
    expect(guessShare(decoding(5))).toBe(5);
    expect(guessShare(decoding(32))).toBe(0);
    // Steps that run the prefill kernels anyway (more sequences than those rows, or a prefill
    // chunk beside them): no share, the token budget bounds them.
    expect(guessShare(decoding(33))).toBe(Infinity);
    expect(guessShare([...decoding(4), prefilling])).toBe(Infinity);
  });

  test('a wholly accepted lookup draft doubles the next one (up to maxDraft); a miss: accepted + 1', () => {
    const s = new Speculator({ method: 'lookup', maxDraft: 8, timed: false, tree: true });
    const text = Array.from({ length: 40 }, (_, i) => 10 + ((i * 7) % 31));
    const seq = [...text, ...text.slice(0, 4)];
    const depth = () => s.draft(seq, 16).tokens.length;
    expect(depth()).toBe(2);
    s.record([0, 0, 0], [0, 0, 0], 2);
    expect(depth()).toBe(4);
    s.record([0, 0, 0, 0, 0], [0, 0, 0, 0, 0], 4);
    expect(depth()).toBe(8);
    s.record(new Array<number>(9).fill(0), new Array<number>(9).fill(0), 8);
    expect(depth()).toBe(8);
    s.record(new Array<number>(9).fill(0), new Array<number>(9).fill(0), 3);
    expect(depth()).toBe(4);
  });

  test('timed: the guesses per sequence follow the cap, which climbs while the rows pay', () => {
    let steps = 0;
    const clock = new SpecClock(() => steps);
    const s = new Speculator({ method: 'lookup', maxDraft: 16, timed: true, tree: true }, clock);
    const text = Array.from({ length: 40 }, (_, i) => 10 + ((i * 7) % 31));
    const seq = [...text, ...text.slice(0, 4)];
    const depth = () => s.draft(seq, 32).tokens.length;
    clock.add('plain', 40, 8);
    // Wholly accepted drafts would double to 16 guesses; the engine's cap holds them at 2 until
    // verifying steps of 2 guesses are measured, then lets them grow a level at a time.
    expect(depth()).toBe(2);
    s.record([0, 0, 0], [0, 0, 0], 2);
    expect(depth()).toBe(2);
    steps++;
    clock.add('spec', 2, 3);
    steps++;
    clock.add('spec', 2, 3);
    expect(depth()).toBe(4);
    s.record([0, 0, 0, 0, 0], [0, 0, 0, 0, 0], 4);
    // 4 guesses faster than 2: on to 8.
    steps++;
    clock.add('spec', 2, 5);
    expect(depth()).toBe(8);
    // 8 guesses slower than 4 (rows that cost more than they return): back to 4, where it stays
    // while 8's rate is fresh (RETRY engine steps) and tries 8 again after.
    steps++;
    clock.add('spec', 8, 5);
    expect(clock.cap).toBe(4);
    steps++;
    clock.add('spec', 2, 5);
    expect(clock.cap).toBe(4);
    expect(clock.slower()).toBe(false);
    steps += 32;
    clock.add('spec', 2, 5);
    expect(clock.cap).toBe(8);
  });

  test('timed: a cap whose steps had every guess accepted climbs though it does not pay yet', () => {
    const clock = new SpecClock(() => 0);
    clock.add('plain', 8, 8);
    // 2 guesses per step, both accepted (3 rows, 3 tokens), slower than plain decoding: copying,
    // where each step's fixed cost needs more guesses to pay for it.
    clock.add('spec', 6, 3, 3);
    clock.add('spec', 6, 3, 3);
    expect(clock.cap).toBe(4);
    expect(clock.slower()).toBeNull();
    clock.add('spec', 4, 5, 5);
    expect(clock.slower()).toBe(false);
    expect(clock.cap).toBe(8);
  });

  test('timed: a cap dropped from again is held off twice as long, whole drafts or not', () => {
    let steps = 0;
    const clock = new SpecClock(() => steps);
    clock.add('plain', 40, 8);
    // One engine step later, a verifying step of `ms` that accepted every guess (tokens = rows).
    const whole = (ms: number, tokens: number) => {
      steps++;
      clock.add('spec', ms, tokens, tokens);
      return clock.cap;
    };
    // Two steps of 2 guesses, faster than plain decoding: on to 4.
    const atTwo = () => {
      whole(2, 3);
      return whole(2, 3);
    };
    expect(atTwo()).toBe(4);
    // 4 guesses cost more than they return: back to 2, held off for 32 engine steps.
    expect(whole(12, 5)).toBe(2);
    steps += 31;
    expect(atTwo()).toBe(4);
    // Slower again: held off for 64 steps now, which wholly accepted drafts at 2 do not lift.
    expect(whole(12, 5)).toBe(2);
    steps += 40;
    expect(atTwo()).toBe(2);
    steps += 20;
    expect(atTwo()).toBe(4);
    // Faster than 2 this time: it stays (and climbs on), and its next hold is 32 steps again.
    expect(whole(2, 5)).toBe(8);
    expect(whole(40, 9)).toBe(4);
    expect(whole(30, 5)).toBe(2);
    steps += 31;
    expect(atTwo()).toBe(4);
  });

  test('recycling chains the most recent successors, learnt from the sequence and the verified rows', () => {
    const s = new Speculator({ method: 'recycling', maxDraft: 3, timed: false, tree: true });
    // The sequence's bigrams 1→2, 2→3, 3→2: from the last 2, the chain cycles (2 guesses at first).
    expect(s.draft([1, 2, 3, 2], 8).tokens).toEqual([3, 2]);
    // 2→4 is newer than 2→3; 4 has no successor yet.
    expect(s.draft([1, 2, 3, 2, 4], 8).tokens).toEqual([]);
    // A verified step: rows [4, 7], the model chose 5 after 4 and 6 after 7.
    s.record([4, 7], [5, 6], 0);
    expect(s.draft([1, 2, 3, 2, 4], 8).tokens).toEqual([5]);
    // Nothing was accepted: one guess next; all accepted: one more each time, up to maxDraft.
    expect(s.draft([1, 2, 3, 2, 4, 2], 8).tokens).toEqual([4]);
    s.record([2, 4], [4, 2], 1);
    expect(s.draft([1, 2, 3, 2, 4, 2], 8).tokens).toEqual([4, 2]);
    s.record([2, 4, 2], [4, 2, 4], 2);
    s.record([2, 4, 2, 4], [4, 2, 4, 2], 3);
    expect(s.draft([1, 2, 3, 2, 4, 2], 8).tokens).toEqual([4, 2, 4]);
    expect(s.steps).toBe(4);
  });

  test('both: lookup first, recycling when no n-gram matches; it rests when guesses fail', () => {
    const s = new Speculator({ method: 'both', maxDraft: 4, timed: false, tree: true });
    s.record([2, 3, 1], [3, 1, 2], 2);
    expect(s.draft([1, 2, 3, 1, 2], 4).tokens).toEqual([3, 1, 2]);
    // No n-gram ending [.., 8, 5] occurs earlier, and the store has no successor of 5.
    expect(s.draft([1, 2, 3, 1, 2, 8, 5], 4).tokens).toEqual([]);
    expect(s.draft([1, 2, 3, 1, 2, 8, 5, 2], 4).tokens).toEqual([8, 5, 2]);
  });

  test('a probe that does not pay rests: plain decoding for 32 tokens, doubling, reset once it pays', () => {
    const s = new Speculator({ method: 'recycling', maxDraft: 4, timed: false, tree: true });
    const at = (n: number) => Array.from({ length: n }, (_, i) => [1, 2, 3][i % 3] as number);
    // A probe of 2 verifying steps that accept nothing, after a draft at length 8.
    expect(s.draft(at(8), 4).tokens).toEqual([3, 1]);
    s.record([3, 1, 2], [9, 9, 9], 0);
    expect(s.resting(at(9))).toBe(false);
    s.record([3, 1, 2], [9, 9, 9], 0);
    expect(s.resting(at(39))).toBe(true);
    expect(s.draft(at(39), 4).tokens).toEqual([]);
    expect(s.wants(at(39))).toBe(false);
    expect(s.wants(at(40))).toBe(true);
    // The next failed probe (its last draft at 40) rests twice as long.
    s.record([3, 1, 2], [9, 9, 9], 0);
    s.record([3, 1, 2], [9, 9, 9], 0);
    expect(s.resting(at(40 + 63))).toBe(true);
    expect(s.resting(at(40 + 64))).toBe(false);
    // A probe that accepts one guess per step (of 4 steps) pays: speculation goes on.
    for (let i = 0; i < 4; i++) s.record([3, 1, 2], [1, 2, 3], 1);
    expect(s.wants(at(104))).toBe(true);
    expect(s.steps).toBe(8);
  });

  test('recycling prefers the guesses the GPU table offers for the current length', () => {
    const s = new Speculator({ method: 'recycling', maxDraft: 3, timed: false, tree: true });
    // The CPU store alone: 1→2, 2→3, 3→2.
    expect(s.draft([1, 2, 3, 2], 8).tokens).toEqual([3, 2]);
    // Guesses built on the GPU to follow the 4-token sequence: taken (up to the draft length).
    s.offer([7, 8, 9, 10], 4);
    expect(s.draft([1, 2, 3, 2], 8).tokens).toEqual([7, 8]);
    // Offered for another length (stale): the CPU store again; none offered: the same.
    expect(s.draft([1, 2, 3, 2, 3], 8).tokens).toEqual([2, 3]);
    s.offer([], 5);
    expect(s.draft([1, 2, 3, 2, 3], 8).tokens).toEqual([2, 3]);
  });

  test('recycling drafts a token tree from the GPU-filled shape where the KV cache takes trees', () => {
    const s = new Speculator({ method: 'recycling', maxDraft: 3, timed: false, tree: true });
    const filled = RECYCLE_TREE.parents.map((_, i) => 100 + i);
    // The first draft is the chain; after a miss (1 of 2 levels), trees.
    s.offer(filled, 4);
    expect(s.draft([1, 2, 3, 2], 32, true).tokens).toEqual([100, 101]);
    s.record([2, 100, 101], [100, 9, 9], 1, 2);
    s.offer(filled, 4);
    // Depth follows the accepted lengths (2 at first), at most TREE_NODES nodes, in shape order.
    const t = s.draft([1, 2, 3, 2], 32, true);
    const within = RECYCLE_TREE.parents.filter(
      (_, i) => (treeRows(RECYCLE_TREE_AS_TREE).depth[i] as number) <= 2,
    );
    expect(t.tokens.length).toBe(Math.min(TREE_NODES, within.length));
    expect(treeRows(t).depth.every((d) => d <= 2)).toBe(true);
    expect(t.parents.every((p, i) => p < i)).toBe(true);
    // A cache without trees verifies the top-1 path; a step with room for 3 rows gets 3 nodes.
    expect(s.draft([1, 2, 3, 2], 32, false).tokens).toEqual([100, 101]);
    expect(s.draft([1, 2, 3, 2], 3, true).tokens).toEqual([100, 101, 102]);
  });

  test('after a wholly accepted draft 3 deep the next recycled draft is the chain; after a miss, a tree', () => {
    const s = new Speculator({ method: 'recycling', maxDraft: 4, timed: false, tree: true });
    const filled = RECYCLE_TREE.parents.map((_, i) => 100 + i);
    const seq = [1, 2, 3, 2];
    // A tree of depth 3 wholly accepted (3 of 3 levels): a chain next, one level deeper.
    s.record([2, 5, 6, 7, 8], [5, 6, 7, 9, 9], 3, 3);
    s.offer(filled, 4);
    const chain = s.draft(seq, 32, true);
    expect(chain.parents).toEqual([-1, 0, 1, 2]);
    // A miss: a tree again.
    s.record([2, 5, 6, 7, 8], [5, 9, 9, 9, 9], 1, 4);
    s.offer(filled, 4);
    expect(s.draft(seq, 32, true).tokens.length).toBeGreaterThan(2);
    expect(s.draft(seq, 32, true).parents.filter((p) => p === -1).length).toBeGreaterThan(1);
    // Wholly accepted but shallow (2 levels): still a tree.
    s.record([2, 5, 6], [5, 6, 9], 2, 2);
    s.offer(filled, 4);
    expect(s.draft(seq, 32, true).parents.filter((p) => p === -1).length).toBeGreaterThan(1);
  });

  test('timed: greedy sequences rest together while verifying is slower in wall time than plain steps', () => {
    let steps = 0;
    const clock = new SpecClock(() => steps);
    expect(clock.slower()).toBeNull();
    const s = new Speculator({ method: 'recycling', maxDraft: 4, timed: true, tree: true }, clock);
    const other = new Speculator({ method: 'recycling', maxDraft: 4, timed: true, tree: true }, clock);
    const at = (n: number) => Array.from({ length: n }, (_, i) => [1, 2, 3][i % 3] as number);
    // Plain decoding not timed yet: the first 8 tokens from the first draft decode plainly.
    expect(s.draft(at(10), 4).tokens).toEqual([]);
    expect(s.wants(at(17))).toBe(false);
    // Plain: 8 tokens in 8 ms. Verifying at the first cap (2 guesses): 3 tokens per 6 ms step,
    // slower; 2 accepted per step would pay by acceptance alone, but after 2 steps (the cap
    // measured; a cap that neither pays nor had every guess accepted does not climb) the clock
    // rests every sequence for 32 steps of the engine.
    clock.add('plain', 8, 8);
    expect(clock.cap).toBe(2);
    expect(s.draft(at(18), 4).tokens).toEqual([1, 2]);
    clock.add('spec', 6, 3, 4);
    s.record([3, 1, 2], [1, 2, 9], 2);
    expect(clock.slower()).toBeNull();
    clock.add('spec', 6, 3, 4);
    expect(clock.cap).toBe(2);
    expect(clock.slower()).toBe(true);
    s.record([3, 1, 2], [1, 2, 9], 2);
    steps = 31;
    expect(s.resting(at(20))).toBe(true);
    // A sequence that has not probed yet probes once; one that has rests with the others.
    expect(other.wants(at(40))).toBe(true);
    other.record([1, 2], [2, 3], 1);
    expect(other.wants(at(40))).toBe(false);
    steps = 32;
    expect(other.wants(at(40))).toBe(true);
    // Faster verifying steps (the rates before the rest are stale by now): the next probe goes
    // on, and the cap climbs.
    clock.add('spec', 1, 40);
    expect(clock.cap).toBe(4);
    expect(clock.slower()).toBe(false);
    expect(s.draft(at(50), 4).tokens.length).toBeGreaterThan(0);
    s.record([2, 3, 1], [3, 1, 9], 1);
    s.record([2, 3, 1], [3, 1, 9], 1);
    expect(s.resting(at(51))).toBe(false);
    // Two probes in a row slower: the engine has settled, and a new sequence rests with the rest.
    const fresh = new Speculator({ method: 'recycling', maxDraft: 4, timed: true, tree: true }, clock);
    clock.paid();
    clock.restAll();
    expect(clock.settled).toBe(false);
    expect(fresh.wants(at(40))).toBe(true);
    clock.restAll();
    expect(clock.settled).toBe(true);
    expect(fresh.wants(at(40))).toBe(false);
    // A probe that pays unsettles it.
    clock.paid();
    expect(clock.settled).toBe(false);
    expect(fresh.wants(at(40))).toBe(true);
  });

  test('options are checked by name', () => {
    expect(checkSpeculative(undefined)).toBeNull();
    expect(checkSpeculative({ method: 'lookup' })).toEqual({
      method: 'lookup',
      maxDraft: 12,
      timed: true,
      tree: true,
    });
    expect(checkSpeculative({ method: 'recycling' })?.maxDraft).toBe(4);
    expect(checkSpeculative({ method: 'both' })?.maxDraft).toBe(4);
    expect(() => checkSpeculative({ method: 'lookup', timed: 1 as unknown as boolean })).toThrow(
      /speculative.timed/,
    );
    expect(() => checkSpeculative({ method: 'tree' as 'lookup' })).toThrow(InvalidRequestError);
    expect(() => checkSpeculative({ method: 'both', maxDraft: 0 })).toThrow(/speculative.maxDraft/);
    expect(() => checkSpeculative({ method: 'both', maxDraft: 2.5 })).toThrow(/speculative.maxDraft/);
  });

  test('truncate returns the blocks that held only rejected slots', () => {
    const b = new BlockManager({ numBlocks: 8, blockSize: 4 });
    b.admit(1, [1, 2, 3]);
    b.markComputed(1, 3);
    b.appendSlots(1, [4, 5, 6, 7, 8, 9]); // 9 positions: 3 blocks
    expect(b.stats().freeBlocks).toBe(5);
    b.truncate(1, 5);
    expect(b.numTokens(1)).toBe(5);
    expect(b.stats().freeBlocks).toBe(6);
    expect(() => b.truncate(1, 2)).toThrow(RangeError);
    b.checkInvariants();
  });
});

describe('on BabyLlama', () => {
  let dir = '';
  let plain: Engine;
  const spec: Record<'recycling' | 'lookup' | 'both', Engine | null> = {
    recycling: null,
    lookup: null,
    both: null,
  };
  const GREEDY: GenerateOptions = { maxTokens: 200, temperature: 0, ignoreEos: true };
  let golden: number[] = [];

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'kiln-spec-'));
    await convertLlama2cToFolder(sharedModel('babyllama-tok105', 'model5000.bin'), {
      outDir: dir,
      tokenizer: sharedModel('babyllama-tok105', 'tok105.model'),
    });
    golden = (
      JSON.parse(readFileSync(sharedModel('babyllama-tok105', 'reference_greedy.json'), 'utf8')) as {
        greedy_ids_after_bos: number[];
      }
    ).greedy_ids_after_bos.slice(0, 200);
    plain = await createEngine({ model: dir });
    for (const m of ['recycling', 'lookup', 'both'] as const)
      spec[m] = await createEngine({ model: dir, speculative: { method: m, maxDraft: 4, timed: false } });
  }, 300_000);

  afterAll(() => {
    plain?.dispose();
    for (const e of Object.values(spec)) e?.dispose();
    rmSync(dir, { recursive: true, force: true });
  });

  test('alone: the golden 200 greedy ids with every method', async () => {
    expect((await plain.generate([1], GREEDY).result()).tokenIds).toEqual(golden);
    for (const e of Object.values(spec)) {
      const before = (e as Engine).stats();
      expect((await (e as Engine).generate([1], GREEDY).result()).tokenIds).toEqual(golden);
      const after = (e as Engine).stats();
      expect(after.speculativeSteps).toBeGreaterThan(before.speculativeSteps);
      expect(after.blocksUsed).toBe(0);
    }
  }, 600_000);

  test('batched: two sequences give the ids each gives without speculation', async () => {
    const prompts = [[1], [1, 40, 12, 9, 3, 27]];
    const opts: GenerateOptions = { maxTokens: 120, temperature: 0, ignoreEos: true };
    const ref = await Promise.all(prompts.map((p) => plain.generate(p, opts).result()));
    for (const e of Object.values(spec)) {
      const before = (e as Engine).stats().speculativeSteps;
      const got = await Promise.all(prompts.map((p) => (e as Engine).generate(p, opts).result()));
      got.forEach((r, i) => expect(r.tokenIds).toEqual(ref[i]?.tokenIds));
      expect((e as Engine).stats().speculativeSteps).toBeGreaterThan(before);
      expect((e as Engine).stats().blocksUsed).toBe(0);
    }
  }, 600_000);

  test('a continuation that copies its prompt: lookup accepts more than one guess per verifying step', async () => {
    // A story (the model's own greedy text), then its opening again: the model goes on to retell
    // it word for word (checked: the ids equal plain decoding's, which copy golden[10..110]).
    const prompt = [1, ...golden.slice(0, 120), ...golden.slice(0, 10)];
    const opts: GenerateOptions = { maxTokens: 100, temperature: 0, ignoreEos: true };
    const ref = await plain.generate(prompt, opts).result();
    const e = spec.lookup as Engine;
    const before = e.stats();
    const got = await e.generate(prompt, opts).result();
    expect(got.tokenIds).toEqual(ref.tokenIds);
    expect(ref.tokenIds).toEqual(golden.slice(10, 110));
    const after = e.stats();
    const steps = after.speculativeSteps - before.speculativeSteps;
    const accepted = after.acceptedTokens - before.acceptedTokens;
    expect(steps).toBeGreaterThan(0);
    expect(accepted / steps).toBeGreaterThan(1);
    expect(after.blocksUsed).toBe(0);
  }, 600_000);
});
