// KV-cache fragment, vec4 view: f16 K and V in cells of 4 channels, widened to f32 as loaded.
enable f16;
alias Kv = f16;
alias KvCell = vec4<f16>;

// Set by the attention kernels for the low-rank formats (kv_quant.wgsl); unused here.
var<private> kv_own_block: u32 = 0xffffffffu;

fn kv_k4(row: u32, d4: u32) -> vec4<f32> {
  return vec4<f32>(k_cache[row * (p.head_dim / 4u) + d4]);
}

fn kv_v4(row: u32, d4: u32) -> vec4<f32> {
  return vec4<f32>(v_cache[row * (p.head_dim / 4u) + d4]);
}
