// X fragment of matmul_gguf_vec4 for any adapter: every lane loads the 8 vec4s of X a 32-element
// step multiplies itself (the same interface as common/gguf_x_subgroup.wgsl).

fn x_init() {}

// vec4s at .. at + 7 of x.
fn x_step(at: u32) -> array<vec4<f32>, 8> {
  return array<vec4<f32>, 8>(x[at], x[at + 1u], x[at + 2u], x[at + 3u], x[at + 4u], x[at + 5u], x[at + 6u], x[at + 7u]);
}
