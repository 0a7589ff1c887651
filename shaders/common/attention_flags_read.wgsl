// attention_split's access to the async chain's per-row flags in the exact pass (two_pass): read
// only, through a read-only binding. That pass neither raises nor takes a flag.
@group(0) @binding(7) var<storage, read> flags: array<u32>;

fn flag_set(row: u32) {}

fn flag_take(row: u32) -> u32 {
  return flags[row];
}
