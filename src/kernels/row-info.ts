/**
 * The per-row words that RoPE + KV-write and attention read (row_info, [m] vec4<u32>): the row's
 * position (RoPE's), its sequence's offset in the block table, and the keys it sees:
 * its sequence's slots [0, treeBase) plus the slots treeBase + b for each bit b set in treeMask
 * (shaders/common/attention_rows.wgsl). A plain row sees its own position and everything before:
 * treeBase = position + 1, treeMask = 0. A token tree's node (speculative decoding) sees the
 * committed slots and its ancestors' and its own slots.
 */
export const ROW_INFO_WORDS = 4;

/** Most nodes of a token tree one row's mask can name. */
export const TREE_MASK_BITS = 32;

/** A token tree node's keys beyond its committed slots [0, base): base + b for each bit b of mask. */
export interface TreeKeys {
  base: number;
  mask: number;
}

/**
 * Writes row `i`'s words into `out` (ROW_INFO_WORDS per row): plain causal without `tree`. Takes
 * no options object: the step writes every row of every step through it.
 */
export function writeRowInfo(
  out: Uint32Array,
  i: number,
  position: number,
  tableOffset: number,
  tree?: TreeKeys,
): void {
  const o = ROW_INFO_WORDS * i;
  out[o] = position;
  out[o + 1] = tableOffset;
  out[o + 2] = tree ? tree.base : position + 1;
  out[o + 3] = tree ? tree.mask >>> 0 : 0;
}

/** Plain causal rows at `positions`, all at block-table offset `tableOffset`. */
export function plainRowInfo(positions: readonly number[], tableOffset = 0): Uint32Array {
  const out = new Uint32Array(ROW_INFO_WORDS * positions.length);
  positions.forEach((position, i) => writeRowInfo(out, i, position, tableOffset));
  return out;
}
