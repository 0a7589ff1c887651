// softcap: x = cap · tanh(x / cap) in place over `count` f32 values (Gemma 2's
// final_logit_softcapping on the logit rows), with tanh as 1 − 2 / (e^(2y) + 1), which saturates
// to ±1 instead of overflowing for large |y|.
// Bindings: params, x [count] f32. One thread per value, 2-D grid.

struct Params {
  count: u32,
  cap: f32,
  grid_x: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = gid.y * p.grid_x * 64u + gid.x;
  if (i >= p.count) {
    return;
  }
  x[i] = p.cap * (1.0 - 2.0 / (exp(2.0 * x[i] / p.cap) + 1.0));
}
