// swiglu_stacked: out[r, j] = silu(gu[r, j]) · gu[r, W + j], silu(z) = z / (1 + e^(−z)): the MLP
// activation after an int4 gate_up matmul, whose weight is [gate; up] stacked by rows (so each row
// of its output holds the W gate values, then the W up values). The float matmul fuses this into
// its epilogue instead (interleaved tiles); the int4 kernel keeps one plain row layout.
// geglu_stacked (GELU, a const the variant prepends; Gemma): gelu_tanh(gu[r, j]) · gu[r, W + j],
// GELU's tanh approximation as in common/matmul_epilogue.wgsl.
// Bindings: params, gu [m, 2W] f32, out [m, W] f32. One thread per output element, 2-D grid.

struct Params {
  // m · W
  count: u32,
  width: u32,
  grid_x: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> gu: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = gid.y * p.grid_x * 64u + gid.x;
  if (i >= p.count) {
    return;
  }
  let r = i / p.width;
  let j = i - r * p.width;
  let g = gu[r * 2u * p.width + j];
  var act: f32;
  if (GELU) {
    let y = 0.7978845608028654 * (g + 0.044715 * g * g * g);
    act = g / (1.0 + exp(-2.0 * y));
  } else {
    act = g / (1.0 + exp(-g));
  }
  out[i] = act * gu[(r * 2u + 1u) * p.width + j];
}
