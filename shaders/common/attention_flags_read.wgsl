// attention_split's access to the async chain's per-row flags in the exact pass (two_pass, and
// the async chain's fallback, which skips unflagged rows): read only, through a read-only binding,
// so a row's flag is a uniform value and an unflagged workgroup returns before its first barrier.
@group(0) @binding(7) var<storage, read> flags: array<u32>;

fn flag_get(row: u32) -> u32 {
  return flags[row];
}

fn flag_set(row: u32) {}
