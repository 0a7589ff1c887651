/**
 * The recent window's lane bookkeeping (src/engine/kv/window.ts): which rows of a step get a lane.
 * A wrong lane gives a block factors of another block's rows, silently, so every rule is pinned
 * here; the GPU side (kv_lowrank filling and reading lanes) is test/kernels/kv-quant.test.ts.
 */
import { describe, expect, test } from 'vitest';
import { KvWindow, NO_LANE } from '../../src/engine/kv/window.js';

const N = NO_LANE;
/** Slots of `n` rows of block `b` from offset `o`. */
const rows = (b: number, o: number, n: number) => Array.from({ length: n }, (_, i) => b * 16 + o + i);

describe('KvWindow', () => {
  test('a block filled one row a step keeps its lane to the last row, which frees it a step later', () => {
    const w = new KvWindow(1);
    for (let o = 0; o < 15; o++) expect([...w.assign(rows(5, o, 1))]).toEqual([0]);
    // The step that writes row 15 reads the lane: no other block of that step gets it...
    expect([...w.assign([...rows(5, 15, 1), ...rows(7, 0, 1)])]).toEqual([0, N]);
    // ...and the next step's new block does (block 7 went on without one).
    expect([...w.assign([...rows(7, 1, 1), ...rows(8, 0, 1)])]).toEqual([N, 0]);
  });

  test('a block written whole in one step needs no lane; a step may end mid-block', () => {
    const w = new KvWindow(2);
    // Block 3 whole, block 4 rows 0..4: only the latter's rows get a lane.
    expect([...w.assign([...rows(3, 0, 16), ...rows(4, 0, 5)])]).toEqual([
      ...Array<number>(16).fill(N),
      ...Array<number>(5).fill(0),
    ]);
    // The next chunk completes block 4 (its rows go to lane 0, read for the factors) and starts
    // block 9.
    expect([...w.assign([...rows(4, 5, 11), ...rows(9, 0, 2)])]).toEqual([
      ...Array<number>(11).fill(0),
      ...Array<number>(2).fill(1),
    ]);
    // Lane 0 comes back only now.
    expect([...w.assign([...rows(9, 2, 1), ...rows(11, 0, 1)])]).toEqual([1, 0]);
  });

  test('a gap drops the lane; a row written again restarts the count there', () => {
    const w = new KvWindow(2);
    expect([...w.assign(rows(2, 0, 4))]).toEqual([0, 0, 0, 0]);
    // Rows 2..5 again (a rejected guess rewritten): still in order.
    expect([...w.assign(rows(2, 2, 4))]).toEqual([0, 0, 0, 0]);
    // Row 7 after row 5: row 6 never reached the lane.
    expect([...w.assign(rows(2, 7, 1))]).toEqual([N]);
    expect([...w.assign(rows(2, 8, 1))]).toEqual([N]);
    // A block first written past row 0 (its rows came another way) has none.
    expect([...w.assign(rows(6, 3, 2))]).toEqual([N, N]);
  });

  test('with every lane taken, the least recently written block loses its lane', () => {
    const w = new KvWindow(2);
    w.assign([...rows(1, 0, 1), ...rows(2, 0, 1)]);
    w.assign(rows(2, 1, 1));
    // Block 1 was written longest ago: block 3 takes its lane, and block 1 goes on without.
    expect([...w.assign(rows(3, 0, 1))]).toEqual([0]);
    expect([...w.assign(rows(1, 1, 1))]).toEqual([N]);
    expect([...w.assign(rows(2, 2, 1))]).toEqual([1]);
    // Two blocks in one step take both lanes; a third in the same step gets none.
    expect([...w.assign([...rows(7, 0, 1), ...rows(8, 0, 1), ...rows(9, 0, 1)])]).toEqual([0, 1, N]);
  });

  test('a copy-on-write copy gets a lane holding the source rows, and goes on from there', () => {
    const w = new KvWindow(3);
    w.assign(rows(4, 0, 6));
    expect(w.fork(4, 10)).toEqual({ from: 0, to: 1 });
    expect([...w.assign(rows(10, 6, 2))]).toEqual([1, 1]);
    expect([...w.assign(rows(4, 6, 1))]).toEqual([0]);
    // A stale lane of the copy's block from an earlier life is dropped, not trusted.
    w.assign(rows(12, 0, 9));
    expect(w.fork(13, 12)).toBeNull();
    expect([...w.assign(rows(12, 3, 1))]).toEqual([N]);
  });
});
