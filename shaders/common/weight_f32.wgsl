// Weight fragment: f32 storage. Kernels declare `weights: array<WWord>` and read through load_w.
alias WWord = f32;

fn load_w(i: u32) -> f32 {
  return weights[i];
}
