// Weight fragment: bfloat16 storage, two per u32. A bf16 is the top half of an f32, so widening
// is a shift: exact, and no conversion pass at load time.
alias WWord = u32;

fn load_w(i: u32) -> f32 {
  let word = weights[i >> 1u];
  return bitcast<f32>(select(word << 16u, word & 0xffff0000u, (i & 1u) == 1u));
}

// Elements i and i + 1 (i even): one word.
fn load_w2(i: u32) -> vec2<f32> {
  let word = weights[i >> 1u];
  return vec2<f32>(bitcast<f32>(word << 16u), bitcast<f32>(word & 0xffff0000u));
}
