// The keys a query row of attention / attention_split sees. row_info[m] = (position, block-table
// offset, tree base, tree mask): the row sees its sequence's slots [0, tree base) and, of the up to
// 32 slots from the tree base, those whose bit is set in the mask (a token tree's node sees its
// ancestors and itself: speculative decoding's tree verification). A plain row has tree base =
// position + 1 and mask 0: causal attention. The position is RoPE's (a tree node's is the root's
// plus its depth), so with a sliding window the distance is counted in positions: a slot below
// the tree base holds the position of its index, the tree slot of the k-th set bit (from the
// lowest) the position tree base + k (a node's ancestors are one per depth, in index order).

@group(0) @binding(1) var<storage, read> row_info: array<vec4<u32>>;

struct RowKeys {
  // One past the last slot the row sees (its own).
  end: u32,
  // Oldest position inside the sliding window (0 without one).
  lo: u32,
  tree_base: u32,
  tree_mask: u32,
}

fn row_keys(row: u32, window: u32) -> RowKeys {
  let info = row_info[row];
  let end = select(info.z, info.z + 32u - countLeadingZeros(info.w), info.w != 0u);
  let lo = select(0u, info.x + 1u - window, window != 0u && info.x + 1u > window);
  return RowKeys(end, lo, info.z, info.w);
}

// Whether slot j (< end) is hidden from the row: outside the window, or a tree slot off its path.
fn key_hidden(k: RowKeys, j: u32) -> bool {
  if (j < k.tree_base) {
    return j < k.lo;
  }
  let b = j - k.tree_base;
  if (((k.tree_mask >> b) & 1u) == 0u) {
    return true;
  }
  return k.tree_base + countOneBits(k.tree_mask & ((1u << b) - 1u)) < k.lo;
}
