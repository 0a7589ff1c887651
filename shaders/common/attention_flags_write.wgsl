// attention_split's access to the per-row flags in the async softmax pass: it only raises them.
@group(0) @binding(7) var<storage, read_write> flags: array<atomic<u32>>;

fn flag_get(row: u32) -> u32 {
  return 1u;
}

fn flag_set(row: u32) {
  atomicOr(&flags[row], 1u);
}
