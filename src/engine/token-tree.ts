/**
 * A draft token tree (speculative decoding): guessed tokens in topological order (a node's parent
 * comes before it; -1 is the root, the sequence's last token), verified in one forward pass with a
 * tree attention mask (kernels/row-info.ts). Node i of a sequence whose last token is at position
 * p is written to slot p + 1 + i and has RoPE position p + depth(i) (depth 1 for the root's
 * children); it sees the committed slots and its ancestors' and its own. A chain is the tree whose
 * node i has parent i - 1.
 *
 * Token Recycling's drafts come from one static shape (RECYCLE_TREE): nodes named by the ranks of
 * the candidates along their path (the root's top-1, its top-2, the top-1's top-1, ...), chosen
 * best-first by the product of a per-rank acceptance estimate, plus the top-1 spine to
 * RECYCLE_SPINE levels (the chain that KV formats without trees verify). recycle_draft fills it on
 * the GPU; `fromShape` prunes it to what a step may verify.
 */
import { TREE_MASK_BITS } from '../kernels/row-info.js';

export interface TokenTree {
  tokens: number[];
  /** Each node's parent index (-1: the root), always below the node's own. */
  parents: number[];
}

/** The chain tree of `tokens`. */
export function chainTree(tokens: readonly number[]): TokenTree {
  return { tokens: [...tokens], parents: tokens.map((_, i) => i - 1) };
}

/** Each node's depth (1 for the root's children) and ancestor mask (bit j: node j, itself included). */
export function treeRows(t: TokenTree): { depth: number[]; mask: number[] } {
  const depth: number[] = [];
  const mask: number[] = [];
  t.parents.forEach((p, i) => {
    depth.push(p < 0 ? 1 : (depth[p] as number) + 1);
    mask.push(((p < 0 ? 0 : (mask[p] as number)) | (1 << i)) >>> 0);
  });
  return { depth, mask };
}

/**
 * The accepted path: from the root, while the id chosen after the current node (`chosen(-1)` for
 * the root's row, `chosen(i)` for node i's) is one of its children's tokens, that child. Returns
 * the nodes in depth order.
 */
export function acceptPath(t: TokenTree, chosen: (node: number) => number): number[] {
  const path: number[] = [];
  let at = -1;
  for (;;) {
    const id = chosen(at);
    const next = t.parents.findIndex((p, i) => p === at && t.tokens[i] === id);
    if (next < 0) return path;
    path.push(next);
    at = next;
  }
}

/** The top-1 path of a tree in recycling's shape order: node 0's chain of first children. */
export function spine(t: TokenTree): number[] {
  const out: number[] = [];
  let at = -1;
  for (;;) {
    const next = t.parents.indexOf(at);
    if (next < 0) return out;
    out.push(t.tokens[next] as number);
    at = next;
  }
}

/** Estimated chance that a parent's rank-r candidate is the model's next id (r < RANK_WEIGHT.length). */
const RANK_WEIGHT = [0.5, 0.15, 0.08, 0.05];
/** Nodes of the static shape (mask bits bound it). */
export const RECYCLE_TREE_NODES = TREE_MASK_BITS;
/** Levels of the top-1 spine the shape always holds (the longest chain, maxDraft <= 16). */
export const RECYCLE_SPINE = 16;

export interface TreeShape {
  /** Each node's parent (-1: the root), in topological order. */
  parents: number[];
  /** Each node's rank among its parent's table candidates. */
  ranks: number[];
}

/**
 * Recycling's static tree: the RECYCLE_TREE_NODES nodes of highest estimated path probability
 * (the product of RANK_WEIGHT over its ranks) once the spine to RECYCLE_SPINE levels is held, in
 * order of that probability (so a prefix of the order is a tree: a child's is below its parent's).
 */
export function recycleShape(): TreeShape {
  interface Node {
    path: number[];
    score: number;
  }
  const key = (p: readonly number[]) => p.join('.');
  const chosen = new Map<string, Node>();
  const spineNodes: Node[] = Array.from({ length: RECYCLE_SPINE }, (_, d) => ({
    path: new Array<number>(d + 1).fill(0),
    score: (RANK_WEIGHT[0] as number) ** (d + 1),
  }));
  const missingSpine = () => spineNodes.filter((n) => !chosen.has(key(n.path))).length;
  const frontier: Node[] = RANK_WEIGHT.map((w, r) => ({ path: [r], score: w }));
  while (chosen.size + missingSpine() < RECYCLE_TREE_NODES && frontier.length > 0) {
    frontier.sort((a, b) => b.score - a.score);
    const best = frontier.shift() as Node;
    chosen.set(key(best.path), best);
    frontier.push(...RANK_WEIGHT.map((w, r) => ({ path: [...best.path, r], score: best.score * w })));
  }
  for (const n of spineNodes) if (!chosen.has(key(n.path))) chosen.set(key(n.path), n);
  const nodes = [...chosen.values()].sort((a, b) => b.score - a.score || a.path.length - b.path.length);
  const index = new Map(nodes.map((n, i) => [key(n.path), i]));
  return {
    parents: nodes.map((n) => (n.path.length === 1 ? -1 : (index.get(key(n.path.slice(0, -1))) as number))),
    ranks: nodes.map((n) => n.path.at(-1) as number),
  };
}

export const RECYCLE_TREE: TreeShape = recycleShape();

/**
 * The tree a step verifies from recycling's filled shape (`tokens`: a token per shape node, NONE
 * where the table had none): in shape order, the nodes with a token whose parent is kept, at most
 * `maxDepth` deep, at most `maxNodes` of them.
 */
export function fromShape(
  tokens: readonly number[],
  none: number,
  maxDepth: number,
  maxNodes: number,
  shape: TreeShape = RECYCLE_TREE,
): TokenTree {
  const out: TokenTree = { tokens: [], parents: [] };
  const kept = new Map<number, { index: number; depth: number }>();
  for (let i = 0; i < shape.parents.length && out.tokens.length < maxNodes; i++) {
    const t = tokens[i];
    const p = shape.parents[i] as number;
    if (t === undefined || t === none) continue;
    const parent = p < 0 ? { index: -1, depth: 0 } : kept.get(p);
    if (!parent || parent.depth >= maxDepth) continue;
    kept.set(i, { index: out.tokens.length, depth: parent.depth + 1 });
    out.tokens.push(t);
    out.parents.push(parent.index);
  }
  return out;
}
