// Weight fragment: f32 storage, 4 elements per 16-byte word (see common/tiled.wgsl for the layout).
const EPW: u32 = 4u;

// Σ_j w_j · x_j over the word's elements; x1 (elements 4..7) is unused for f32.
fn word_dot(w: vec4<u32>, x0: vec4<f32>, x1: vec4<f32>) -> f32 {
  return dot(bitcast<vec4<f32>>(w), x0);
}

// Element j (< EPW) of a word.
fn word_elem(w: vec4<u32>, j: u32) -> f32 {
  return bitcast<f32>(w[j]);
}
