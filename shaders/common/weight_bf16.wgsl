// Weight fragment: bfloat16 storage, 8 elements per 16-byte word (element 2j in the low half of
// u32 j). A bf16 is the top half of an f32, so widening is a shift or a mask: exact, and no
// conversion pass at load time.
const EPW: u32 = 8u;

fn word_dot(w: vec4<u32>, x0: vec4<f32>, x1: vec4<f32>) -> f32 {
  let lo = bitcast<vec4<f32>>(w << vec4<u32>(16u));
  let hi = bitcast<vec4<f32>>(w & vec4<u32>(0xffff0000u));
  // lo holds elements 0, 2, 4, 6 and hi elements 1, 3, 5, 7.
  return dot(lo, vec4<f32>(x0.x, x0.z, x1.x, x1.z)) + dot(hi, vec4<f32>(x0.y, x0.w, x1.y, x1.w));
}

fn word_elem(w: vec4<u32>, j: u32) -> f32 {
  let word = w[j >> 1u];
  return bitcast<f32>(select(word << 16u, word & 0xffff0000u, (j & 1u) == 1u));
}
