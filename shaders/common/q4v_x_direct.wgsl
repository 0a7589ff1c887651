// X fragment of matmul_q4_gemv for any adapter: every lane loads the 8 vec4s of X that one 16-byte
// weight word multiplies (on a GPU the lanes of a workgroup read the same 128 bytes, served by its
// cache). (Same interface as common/q4v_x_subgroup.wgsl.)

fn x_init() {}

fn x_word(word: u32) -> XWord {
  var v: array<vec4<f32>, 8>;
  var share = vec4<f32>(0.0);
  for (var j = 0u; j < 8u; j++) {
    let raw = x[word * 8u + j];
    share += raw;
    v[j] = raw * X_SCALE;
  }
  return XWord(v, share);
}

fn x_sum(share: vec4<f32>) -> f32 {
  return (share.x + share.y) + (share.z + share.w);
}
