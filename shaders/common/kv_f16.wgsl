// KV-cache fragment: f16 K and V, where the adapter has shader-f16. Halves the cache's memory and
// the bytes attention reads per token; kernels still compute in f32, converting each element as
// they load it (exact: every f16 is an f32) and rounding once, to nearest, as they store it.
// Loads as in kv_f32.wgsl.
enable f16;
alias Kv = f16;
alias KvCell = f16;

// Set by the attention kernels for the low-rank formats (kv_quant.wgsl); unused here.
var<private> kv_own_block: u32 = 0xffffffffu;

fn kv_k1(row: u32, d: u32) -> f32 {
  return f32(k_cache[row * p.head_dim + d]);
}

fn kv_v1(row: u32, d: u32) -> f32 {
  return f32(v_cache[row * p.head_dim + d]);
}
