/**
 * A random token tree for attention tests: `n` nodes in topological order (a node's parent comes before
 * it; -1 is the root, the last committed token), with each node's depth (1 for the root's
 * children) and ancestor mask (bit j: node j is the node itself or one of its ancestors).
 */
export function tokenTree(n: number, seed: number): { parent: number[]; depth: number[]; mask: number[] } {
  let x = seed * 2654435761 + 1;
  const rand = () => {
    x = (x * 1103515245 + 12345) >>> 0;
    return x / 2 ** 32;
  };
  const parent: number[] = [];
  const depth: number[] = [];
  const mask: number[] = [];
  for (let i = 0; i < n; i++) {
    // Parents drawn from -1 .. i-1 with some bias to recent nodes: paths of several levels.
    const p = Math.floor(rand() * (i + 1)) - 1;
    parent.push(p);
    depth.push(p < 0 ? 1 : (depth[p] as number) + 1);
    mask.push(((p < 0 ? 0 : (mask[p] as number)) | (2 ** i)) >>> 0);
  }
  return { parent, depth, mask };
}
