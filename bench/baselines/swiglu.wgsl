// swiglu: gate[i] = silu(gate[i]) · up[i], silu(z) = z / (1 + e^(−z)), in place on gate.
// Bindings: params, gate [count] f32 (read-write), up [count] f32.
// Work: one thread per element, linearized over a 2-D grid.

struct Params {
  count: u32,
  grid_x: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> gate: array<f32>;
@group(0) @binding(2) var<storage, read> up: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = gid.y * p.grid_x * 64u + gid.x;
  if (i >= p.count) {
    return;
  }
  let g = gate[i];
  gate[i] = g / (1.0 + exp(-g)) * up[i];
}
