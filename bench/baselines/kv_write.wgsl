// kv_write: scatters this step's k and v rows into the paged KV cache.
// Cache layout per layer (K and V alike): [block][kv_head][BLOCK_TOKENS = 16][head_dim] Kv
// (prepended KV fragment, common/kv_*.wgsl: f32, or f16 where the adapter has shader-f16).
// Row m goes to slot slots[m] = physical_block · 16 + offset (the slot mapping of PagedAttention).
// Bindings: params, slots [m] u32, k [m, kv_heads·head_dim], v [same], k_cache, v_cache.
// Work: one thread per (row, kv_head, dim), linearized over a 2-D grid.

struct Params {
  m: u32,
  kv_heads: u32,
  head_dim: u32,
  grid_x: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> slots: array<u32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read_write> k_cache: array<Kv>;
@group(0) @binding(5) var<storage, read_write> v_cache: array<Kv>;

const BLOCK_TOKENS: u32 = 16u;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let kv_dim = p.kv_heads * p.head_dim;
  let idx = gid.y * p.grid_x * 64u + gid.x;
  if (idx >= p.m * kv_dim) {
    return;
  }
  let row = idx / kv_dim;
  let c = idx % kv_dim;
  let head = c / p.head_dim;
  let d = c % p.head_dim;
  let slot = slots[row];
  let block = slot / BLOCK_TOKENS;
  let off = slot % BLOCK_TOKENS;
  let dst = ((block * p.kv_heads + head) * BLOCK_TOKENS + off) * p.head_dim + d;
  k_cache[dst] = Kv(k[idx]);
  v_cache[dst] = Kv(v[idx]);
}
