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

export interface RowKeys {
  position: number;
  tableOffset: number;
  /** Default position + 1 (plain causal). */
  treeBase?: number;
  /** Default 0. */
  treeMask?: number;
}

/** Writes row `i`'s words into `out` (ROW_INFO_WORDS per row). */
export function writeRowInfo(out: Uint32Array, i: number, r: RowKeys): void {
  const o = ROW_INFO_WORDS * i;
  out[o] = r.position;
  out[o + 1] = r.tableOffset;
  out[o + 2] = r.treeBase ?? r.position + 1;
  out[o + 3] = (r.treeMask ?? 0) >>> 0;
}

/** Plain causal rows at `positions`, all at block-table offset `tableOffset`. */
export function plainRowInfo(positions: readonly number[], tableOffset = 0): Uint32Array {
  const out = new Uint32Array(ROW_INFO_WORDS * positions.length);
  positions.forEach((position, i) => writeRowInfo(out, i, { position, tableOffset }));
  return out;
}

/** The slot one past the last a row sees (its own), as the shaders compute it. */
export function rowEnd(r: RowKeys): number {
  const base = r.treeBase ?? r.position + 1;
  const mask = (r.treeMask ?? 0) >>> 0;
  return mask === 0 ? base : base + 32 - Math.clz32(mask);
}
