// attention_split's access to the per-row flags in the async chain: its pass 1 raises them, its
// fallback (mode 2) takes them, reading and clearing in one atomic step.
@group(0) @binding(7) var<storage, read_write> flags: array<atomic<u32>>;

fn flag_set(row: u32) {
  atomicOr(&flags[row], 1u);
}

fn flag_take(row: u32) -> u32 {
  return atomicExchange(&flags[row], 0u);
}
