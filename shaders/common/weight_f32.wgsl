// Weight fragment: f32 storage. Kernels declare `weights: array<WWord>` and read through load_w.
alias WWord = f32;

fn load_w(i: u32) -> f32 {
  return weights[i];
}

// Elements i and i + 1 (i even).
fn load_w2(i: u32) -> vec2<f32> {
  return vec2<f32>(weights[i], weights[i + 1u]);
}
