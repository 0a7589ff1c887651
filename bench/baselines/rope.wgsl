// rope: rotary position embedding, Hugging Face "rotate_half" convention, in place on q or k:
// for i < half: (a, b) = (x[i], x[i + half]); x[i] = a·cos − b·sin; x[i + half] = b·cos + a·sin,
// with (cos, sin) of angle position · inv_freq[i] read from a table computed in float64 on the CPU
// (f32 angles lose ~1e-2 rad at position 1e5, and WGSL's cos/sin are only accurate near [-π, π]).
// Bindings: params, row_info [m] (x = position), table [positions][half] vec2<f32> (cos, sin),
// x [m, heads·head_dim] f32.
// Work: one thread per (row, head, i), linearized over a 2-D grid.

struct Params {
  m: u32,
  heads: u32,
  head_dim: u32,
  grid_x: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> row_info: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> table: array<vec2<f32>>;
@group(0) @binding(3) var<storage, read_write> x: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let half = p.head_dim / 2u;
  let idx = gid.y * p.grid_x * 64u + gid.x;
  if (idx >= p.m * p.heads * half) {
    return;
  }
  let i = idx % half;
  let head = (idx / half) % p.heads;
  let row = idx / (half * p.heads);
  let cs = table[row_info[row].x * half + i];
  let c = cs.x;
  let s = cs.y;
  let base = row * p.heads * p.head_dim + head * p.head_dim;
  let a = x[base + i];
  let b = x[base + i + half];
  x[base + i] = a * c - b * s;
  x[base + i + half] = b * c + a * s;
}
