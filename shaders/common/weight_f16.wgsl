// Weight fragment: IEEE half storage, 8 elements per 16-byte word (element 2j in the low half of
// u32 j). unpack2x16float is core WGSL, so f16 weights need no shader-f16 feature.
const EPW: u32 = 8u;

fn word_dot(w: vec4<u32>, x0: vec4<f32>, x1: vec4<f32>) -> f32 {
  let a = vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y));
  let b = vec4<f32>(unpack2x16float(w.z), unpack2x16float(w.w));
  return dot(a, x0) + dot(b, x1);
}

fn word_elem(w: vec4<u32>, j: u32) -> f32 {
  let pair = unpack2x16float(w[j >> 1u]);
  return select(pair.x, pair.y, (j & 1u) == 1u);
}
