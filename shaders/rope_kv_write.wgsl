// rope_kv_write: the fused epilogue of the q/k/v projection. From one step's qkv rows
// [m, (heads + 2·kv_heads)·head_dim] it writes RoPE(q) to q_out [m, heads·head_dim], and RoPE(k)
// and v straight into the paged KV cache at each row's slot: one dispatch instead of rope(q),
// rope(k) and kv_write, and k/v never take a separate trip through memory.
// RoPE is the Hugging Face rotate-half convention with the float64-built (cos, sin) table of the
// unfused baseline bench/baselines/rope.wgsl; the cache layout is kv_write's (the baseline beside
// it): [block][kv_head][16][head_dim] Kv (prepended KV fragment: f32, or f16 rounded once from the
// f32 result).
// Only the first rot_dim elements of a q or k head rotate (rotate-half within them: Phi-3's
// partial_rotary_factor); the rest are copied, and rot_dim = 0 copies all (SmolLM3's NoPE layers).
// Bindings: params, row_info [m] (x = position), slots [m] u32, table [positions][rot_dim / 2]
// vec2<f32>, qkv, q_out, k_cache, v_cache.
// Work: one thread per (row, head slot, i < head_dim / 2), head slots being the query heads, then
// the kv heads of k, then those of v; linearized over a 2-D grid. For q and k, threads
// i < rot_dim / 2 rotate the pair (i, i + rot_dim / 2) and the others copy two neighbours past
// rot_dim; for v every thread copies (i, i + head_dim / 2).

struct Params {
  m: u32,
  heads: u32,
  kv_heads: u32,
  head_dim: u32,
  grid_x: u32,
  rot_dim: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> row_info: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> slots: array<u32>;
@group(0) @binding(3) var<storage, read> table: array<vec2<f32>>;
@group(0) @binding(4) var<storage, read> qkv: array<f32>;
@group(0) @binding(5) var<storage, read_write> q_out: array<f32>;
@group(0) @binding(6) var<storage, read_write> k_cache: array<Kv>;
@group(0) @binding(7) var<storage, read_write> v_cache: array<Kv>;

const BLOCK_TOKENS: u32 = 16u;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let half = p.head_dim / 2u;
  let slots_per_row = p.heads + 2u * p.kv_heads;
  let idx = gid.y * p.grid_x * 64u + gid.x;
  if (idx >= p.m * slots_per_row * half) {
    return;
  }
  let i = idx % half;
  let s = (idx / half) % slots_per_row;
  let row = idx / (half * slots_per_row);
  let src = row * slots_per_row * p.head_dim + s * p.head_dim;
  if (s >= p.heads + p.kv_heads) {
    // v: copied as is.
    let dst = cache_index(row, s - p.heads - p.kv_heads);
    v_cache[dst + i] = Kv(qkv[src + i]);
    v_cache[dst + i + half] = Kv(qkv[src + i + half]);
    return;
  }
  // The two elements this thread writes, e0 and e1, and their values.
  let rh = p.rot_dim / 2u;
  var e0 = p.rot_dim + 2u * (i - rh);
  var e1 = e0 + 1u;
  var ra = 0.0;
  var rb = 0.0;
  if (i < rh) {
    e0 = i;
    e1 = i + rh;
    let a = qkv[src + e0];
    let b = qkv[src + e1];
    let cs = table[row_info[row].x * rh + i];
    ra = a * cs.x - b * cs.y;
    rb = b * cs.x + a * cs.y;
  } else {
    ra = qkv[src + e0];
    rb = qkv[src + e1];
  }
  if (s < p.heads) {
    let dst = row * p.heads * p.head_dim + s * p.head_dim;
    q_out[dst + e0] = ra;
    q_out[dst + e1] = rb;
  } else {
    let dst = cache_index(row, s - p.heads);
    k_cache[dst + e0] = Kv(ra);
    k_cache[dst + e1] = Kv(rb);
  }
}

// Start of kv head `head`'s row for this step row's token in the paged cache.
fn cache_index(row: u32, head: u32) -> u32 {
  let slot = slots[row];
  return ((slot / BLOCK_TOKENS * p.kv_heads + head) * BLOCK_TOKENS + slot % BLOCK_TOKENS) * p.head_dim;
}
