// rope_kv_write_qknorm: rope_kv_write with qk_norm folded in (Qwen3's and Gemma 3's per-head
// RMSNorm of q and k before RoPE): every q head h of a row is first qw ⊙ h / sqrt(mean(h²) + eps),
// every k head the same with kw, then rotated and written as rope_kv_write does; v is copied. The
// normalized heads live only in registers, so the separate qk_norm dispatch and its read-modify-
// write of the q and k columns of qkv are gone. The sum of squares is taken in the order qk_norm
// takes it and the products are the same f32 operations, so the result equals qk_norm followed
// by rope_kv_write. (1 + w) weights (Gemma) arrive pre-added.
// Bindings: params, row_info [m] (x = position), slots [m] u32, table [positions][rot_dim / 2]
// vec2<f32>, qkv, q_out, k_cache, v_cache, qw [head_dim] f32, kw [head_dim] f32.
// Work: one 64-thread workgroup per (head slot < heads + 2·kv_heads, row); for q and k heads each
// thread sums the squares of its strided elements, all 64 partials are added (one barrier, as
// qk_norm), then thread t handles the pairs i = t, t + 64, ... < head_dim / 2 as rope_kv_write's
// threads do.

struct Params {
  heads: u32,
  kv_heads: u32,
  head_dim: u32,
  rot_dim: u32,
  eps: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> row_info: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> slots: array<u32>;
@group(0) @binding(3) var<storage, read> table: array<vec2<f32>>;
@group(0) @binding(4) var<storage, read> qkv: array<f32>;
@group(0) @binding(5) var<storage, read_write> q_out: array<f32>;
@group(0) @binding(6) var<storage, read_write> k_cache: array<Kv>;
@group(0) @binding(7) var<storage, read_write> v_cache: array<Kv>;
@group(0) @binding(8) var<storage, read> qw: array<f32>;
@group(0) @binding(9) var<storage, read> kw: array<f32>;

const BLOCK_TOKENS: u32 = 16u;
const WG: u32 = 64u;
var<workgroup> red: array<f32, WG>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) t: u32) {
  let s = wid.x;
  let row = wid.y;
  let half = p.head_dim / 2u;
  let src = (row * (p.heads + 2u * p.kv_heads) + s) * p.head_dim;
  if (s >= p.heads + p.kv_heads) {
    // v: copied as is (uniform per workgroup, so returning before the barrier is safe).
    let dst = cache_index(row, s - p.heads - p.kv_heads);
    for (var i = t; i < half; i += WG) {
      v_cache[dst + i] = Kv(qkv[src + i]);
      v_cache[dst + i + half] = Kv(qkv[src + i + half]);
    }
    return;
  }
  var ss = 0.0;
  for (var j = t; j < p.head_dim; j += WG) {
    let v = qkv[src + j];
    ss += v * v;
  }
  red[t] = ss;
  workgroupBarrier();
  var total = 0.0;
  for (var k = 0u; k < WG; k++) {
    total += red[k];
  }
  let inv = inverseSqrt(total / f32(p.head_dim) + p.eps);
  let is_q = s < p.heads;
  let rh = p.rot_dim / 2u;
  for (var i = t; i < half; i += WG) {
    // The two elements this thread writes, e0 and e1, and their normalized values a and b.
    var e0 = p.rot_dim + 2u * (i - rh);
    var e1 = e0 + 1u;
    if (i < rh) {
      e0 = i;
      e1 = i + rh;
    }
    let a = qkv[src + e0] * inv * select(kw[e0], qw[e0], is_q);
    let b = qkv[src + e1] * inv * select(kw[e1], qw[e1], is_q);
    var ra = a;
    var rb = b;
    if (i < rh) {
      let cs = table[row_info[row].x * rh + i];
      ra = a * cs.x - b * cs.y;
      rb = b * cs.x + a * cs.y;
    }
    if (is_q) {
      let dst = row * p.heads * p.head_dim + s * p.head_dim;
      q_out[dst + e0] = ra;
      q_out[dst + e1] = rb;
    } else {
      let dst = cache_index(row, s - p.heads);
      k_cache[dst + e0] = Kv(ra);
      k_cache[dst + e1] = Kv(rb);
    }
  }
}

// Start of kv head `head`'s row for this step row's token in the paged cache.
fn cache_index(row: u32, head: u32) -> u32 {
  let slot = slots[row];
  return ((slot / BLOCK_TOKENS * p.kv_heads + head) * BLOCK_TOKENS + slot % BLOCK_TOKENS) * p.head_dim;
}
