/**
 * CPU twin of recycle_draft: from each chosen id, `depth` guesses, each the first candidate of the
 * table row of the one before; RECYCLE_NONE from the first id without a table row.
 */
const NONE = 0xffffffff;

export function recycleDraftRef(
  ids: readonly number[],
  table: Uint32Array,
  n: number,
  k: number,
  depth: number,
): number[] {
  return ids.flatMap((id) => {
    const out: number[] = [];
    let t = id;
    for (let j = 0; j < depth; j++) {
      t = t < n ? (table[t * k] as number) : NONE;
      out.push(t);
    }
    return out;
  });
}
