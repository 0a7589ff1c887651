// qk_norm: the per-head RMSNorm of q and k (Qwen3's and Gemma 3's q_norm / k_norm), in place on
// one step's fused projection output qkv [m, (heads + 2·kv_heads)·head_dim] before RoPE: every
// q head h of a row becomes qw ⊙ h / sqrt(mean(h²) + eps), every k head the same with kw; v is
// left alone. In f32, as transformers computes Gemma's norm; (1 + w) weights arrive pre-added.
// Bindings: params, qkv [m, ...] f32 (read_write), qw [head_dim] f32, kw [head_dim] f32.
// Work: one 64-thread workgroup per (head slot < heads + kv_heads, row); each thread sums the
// squares of its strided elements and then adds up all 64 partials (one barrier, as rmsnorm).

struct Params {
  heads: u32,
  kv_heads: u32,
  head_dim: u32,
  eps: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> qkv: array<f32>;
@group(0) @binding(2) var<storage, read> qw: array<f32>;
@group(0) @binding(3) var<storage, read> kw: array<f32>;

const WG: u32 = 64u;
var<workgroup> red: array<f32, WG>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) t: u32) {
  let s = wid.x;
  let row = wid.y;
  let base = (row * (p.heads + 2u * p.kv_heads) + s) * p.head_dim;
  var ss = 0.0;
  for (var j = t; j < p.head_dim; j += WG) {
    let v = qkv[base + j];
    ss += v * v;
  }
  red[t] = ss;
  workgroupBarrier();
  var total = 0.0;
  for (var i = 0u; i < WG; i++) {
    total += red[i];
  }
  let inv = inverseSqrt(total / f32(p.head_dim) + p.eps);
  let is_q = s < p.heads;
  for (var j = t; j < p.head_dim; j += WG) {
    let w = select(kw[j], qw[j], is_q);
    qkv[base + j] = qkv[base + j] * inv * w;
  }
}
