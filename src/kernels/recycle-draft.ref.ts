/**
 * CPU twin of recycle_draft: from each chosen id, a token per node of the tree shape (parents in
 * topological order, -1 the root): candidate `ranks[i]` of the table row of its parent's token
 * (the chosen id for the root's children); RECYCLE_NONE where the parent has none or no table row.
 */
const NONE = 0xffffffff;

export function recycleDraftRef(
  ids: readonly number[],
  table: Uint32Array,
  n: number,
  k: number,
  shape: { parents: readonly number[]; ranks: readonly number[] },
): number[] {
  return ids.flatMap((id) => {
    const out: number[] = [];
    shape.parents.forEach((p, i) => {
      const pt = p < 0 ? id : (out[p] as number);
      const rank = Math.min(shape.ranks[i] as number, k - 1);
      out.push(pt < n ? (table[pt * k + rank] as number) : NONE);
    });
    return out;
  });
}
