// KV-cache fragment, vec4 view: f32 K and V in cells of 4 channels (split-K decode attention, whose
// loads of whole vec4s are what lavapipe and GPUs stream best). Loads as in kv_f32.wgsl.
alias Kv = f32;
alias KvCell = vec4<f32>;

// Set by the attention kernels for the low-rank formats (kv_quant.wgsl); unused here.
var<private> kv_own_block: u32 = 0xffffffffu;

fn kv_k4(row: u32, d4: u32) -> vec4<f32> {
  return k_cache[row * (p.head_dim / 4u) + d4];
}

fn kv_v4(row: u32, d4: u32) -> vec4<f32> {
  return v_cache[row * (p.head_dim / 4u) + d4];
}

// Split-K attention's per-row and per-block views (kv_quant.wgsl reads a row's or a block's shared
// words once through them); a float row has none: the row index itself, and no low-rank factors
// (KV_RANK 0: the kernel's low-rank terms compile away).
const KV_RANK: u32 = 0u;
alias KvRow = u32;
alias KvBlk = u32;

fn kv_k_row(row: u32) -> KvRow {
  return row;
}

fn kv_k4r(r: KvRow, d4: u32) -> vec4<f32> {
  return kv_k4(r, d4);
}

fn kv_k_af(f: u32, t: u32) -> vec2<f32> {
  return vec2<f32>(0.0);
}

fn kv_fac(row0: u32) -> u32 {
  return 0xffffffffu;
}

fn kv_k_b4(f: u32, j: u32, d4: u32) -> vec4<f32> {
  return vec4<f32>(0.0);
}

fn kv_v_blk(row0: u32, d4: u32) -> KvBlk {
  return row0;
}

fn kv_v4b(blk: KvBlk, row: u32, d4: u32) -> vec4<f32> {
  return kv_v4(row, d4);
}

fn kv_v_af(f: u32, t: u32) -> vec2<f32> {
  return vec2<f32>(0.0);
}

fn kv_v_b(blk: KvBlk, j: u32) -> vec4<f32> {
  return vec4<f32>(0.0);
}
