// KV-cache fragment, vec4 view: f16 K and V, 4 channels per cell read as two u32 words of f16
// pairs and widened with unpack2x16float. On lavapipe a per-lane load is a gather, one per
// component and lane, and 16-bit components have no gather instruction: two 32-bit gathers per
// cell instead of four 16-bit ones. (Same bytes as a vec4<f16> cell; needs no `enable f16`.)
alias KvCell = vec2<u32>;

// Set by the attention kernels for the low-rank formats (kv_quant.wgsl); unused here.
var<private> kv_own_block: u32 = 0xffffffffu;

fn kv_unpack4(c: vec2<u32>) -> vec4<f32> {
  return vec4<f32>(unpack2x16float(c.x), unpack2x16float(c.y));
}

fn kv_k4(row: u32, d4: u32) -> vec4<f32> {
  return kv_unpack4(k_cache[row * (p.head_dim / 4u) + d4]);
}

fn kv_v4(row: u32, d4: u32) -> vec4<f32> {
  return kv_unpack4(v_cache[row * (p.head_dim / 4u) + d4]);
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
