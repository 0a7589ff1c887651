import { describe, expect, test } from 'vitest';
import {
  acceptPath,
  chainTree,
  fromShape,
  RECYCLE_SPINE,
  RECYCLE_TREE,
  RECYCLE_TREE_NODES,
  spine,
  treeRows,
} from '../../src/engine/token-tree.js';

const NONE = 0xffffffff;

describe('token trees', () => {
  test('rows of a tree: depths and ancestor masks', () => {
    // root -> 0 (a), 1 (b); 0 -> 2 (c); 2 -> 3 (d); 1 -> 4 (e)
    const t = { tokens: [10, 11, 12, 13, 14], parents: [-1, -1, 0, 2, 1] };
    expect(treeRows(t)).toEqual({ depth: [1, 1, 2, 3, 2], mask: [0b1, 0b10, 0b101, 0b1101, 0b10010] });
    expect(treeRows(chainTree([5, 6, 7])).mask).toEqual([1, 3, 7]);
    // bit 31 stays an unsigned mask
    const deep = chainTree(Array.from({ length: 32 }, (_, i) => i));
    expect(treeRows(deep).mask[31]).toBe(0xffffffff);
  });

  test('the accepted path follows the chosen ids through the children', () => {
    const t = { tokens: [10, 11, 12, 13, 14], parents: [-1, -1, 0, 2, 1] };
    // root chooses 11 (node 1), node 1 chooses 14 (node 4), node 4 chooses 99 (no child)
    const chosen = new Map([
      [-1, 11],
      [1, 14],
      [4, 99],
    ]);
    expect(acceptPath(t, (n) => chosen.get(n) ?? -5)).toEqual([1, 4]);
    expect(acceptPath(t, (n) => (n === -1 ? 10 : n === 0 ? 12 : n === 2 ? 13 : 0))).toEqual([0, 2, 3]);
    expect(acceptPath(t, () => 77)).toEqual([]);
  });

  test("recycling's static shape: 32 nodes, topological, the spine to 16 levels, distinct ranks among siblings", () => {
    const { parents, ranks } = RECYCLE_TREE;
    expect(parents.length).toBe(RECYCLE_TREE_NODES);
    parents.forEach((p, i) => expect(p).toBeLessThan(i));
    const seen = new Set(parents.map((p, i) => `${p}:${ranks[i]}`));
    expect(seen.size).toBe(parents.length);
    const tokens = parents.map((_, i) => 100 + i);
    expect(spine({ tokens, parents }).length).toBe(RECYCLE_SPINE);
    // the root's top candidates are the first nodes
    expect(parents.slice(0, 2)).toEqual([-1, 0]);
  });

  test('fromShape prunes: missing tokens drop their subtrees, depth and count are capped', () => {
    const shape = { parents: [-1, -1, 0, 0, 2, 1], ranks: [0, 1, 0, 1, 0, 0] };
    const tokens = [10, 11, 12, NONE, 14, 15];
    expect(fromShape(tokens, NONE, 8, 8, shape)).toEqual({
      tokens: [10, 11, 12, 14, 15],
      parents: [-1, -1, 0, 2, 1],
    });
    expect(fromShape(tokens, NONE, 1, 8, shape)).toEqual({ tokens: [10, 11], parents: [-1, -1] });
    expect(fromShape(tokens, NONE, 8, 3, shape)).toEqual({ tokens: [10, 11, 12], parents: [-1, -1, 0] });
    expect(fromShape([NONE, 11, 12], NONE, 8, 8, shape)).toEqual({ tokens: [11], parents: [-1] });
  });
});
