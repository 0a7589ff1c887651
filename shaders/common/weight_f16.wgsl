// Weight fragment: IEEE half storage, two per u32 (little-endian, element 2j in the low half).
// unpack2x16float is core WGSL, so f16 weights need no shader-f16 feature.
alias WWord = u32;

fn load_w(i: u32) -> f32 {
  let pair = unpack2x16float(weights[i >> 1u]);
  return select(pair.x, pair.y, (i & 1u) == 1u);
}

// Elements i and i + 1 (i even): one word.
fn load_w2(i: u32) -> vec2<f32> {
  return unpack2x16float(weights[i >> 1u]);
}
