// KV-cache fragment: f32 K and V (every adapter), one element per cell. The loads take a token row
// (((block · kv_heads + kv_head) · 16 + token)) and a channel (kv_*1) or a group of 4 (kv_*4).
alias Kv = f32;
alias KvCell = f32;

// Set by the attention kernels for the low-rank formats (kv_quant.wgsl); unused here.
var<private> kv_own_block: u32 = 0xffffffffu;

fn kv_k1(row: u32, d: u32) -> f32 {
  return k_cache[row * p.head_dim + d];
}

fn kv_v1(row: u32, d: u32) -> f32 {
  return v_cache[row * p.head_dim + d];
}
