// residual_add: x[i] += delta[i]. The unfused baseline that rmsnorm_fused is measured against
// (the forward pass fuses residual adds into matmul epilogues or rmsnorm_fused instead).
// Bindings: params, x (updated in place), delta. Work: one thread per element over a 2-D grid.

struct Params {
  count: u32,
  grid_x: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read> delta: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = gid.y * p.grid_x * 64u + gid.x;
  if (i < p.count) {
    x[i] += delta[i];
  }
}
