// The (scale, min) pairs of a Q4_K / Q5_K block, shared by both block kernels (common/gguf_k_scales
// for embed_gguf, the 16-byte fragments of matmul_gguf_vec4): the block opens with
// d | dmin << 16 (word 0) and 12 bytes of six-bit (scale, min) pairs (words 1..3).

// Per 64-element group g: (d·sc, dmin·m) of pairs 2g and 2g + 1, decoded once per block with
// vector ops (pairs j < 4 from the low six bits of bytes j and j + 4; pairs j ≥ 4 from the nibbles
// of byte j + 4 under the top two bits of bytes j − 4 and j). Each product is exact in f32 (an
// f16 times a six-bit integer).
struct KPairs {
  p0: vec4<f32>,
  p1: vec4<f32>,
  p2: vec4<f32>,
  p3: vec4<f32>,
}

fn k_pairs(w0: u32, w1: u32, w2: u32, w3: u32) -> KPairs {
  let dm = unpack2x16float(w0);
  let b0 = (vec4<u32>(w1) >> vec4<u32>(0u, 8u, 16u, 24u)) & vec4<u32>(255u);
  let b1 = (vec4<u32>(w2) >> vec4<u32>(0u, 8u, 16u, 24u)) & vec4<u32>(255u);
  let b2 = (vec4<u32>(w3) >> vec4<u32>(0u, 8u, 16u, 24u)) & vec4<u32>(255u);
  let lo_sc = vec4<f32>(b0 & vec4<u32>(63u)) * dm.x;
  let lo_m = vec4<f32>(b1 & vec4<u32>(63u)) * dm.y;
  let hi_sc = vec4<f32>((b2 & vec4<u32>(15u)) | ((b0 >> vec4<u32>(6u)) << vec4<u32>(4u))) * dm.x;
  let hi_m = vec4<f32>((b2 >> vec4<u32>(4u)) | ((b1 >> vec4<u32>(6u)) << vec4<u32>(4u))) * dm.y;
  return KPairs(
    vec4<f32>(lo_sc.x, lo_m.x, lo_sc.y, lo_m.y),
    vec4<f32>(lo_sc.z, lo_m.z, lo_sc.w, lo_m.w),
    vec4<f32>(hi_sc.x, hi_m.x, hi_sc.y, hi_m.y),
    vec4<f32>(hi_sc.z, hi_m.z, hi_sc.w, hi_m.w),
  );
}

// (d·sc, dmin·m, d·sc′, dmin·m′) of group g's two pairs.
fn k_pair_group(h: KPairs, g: u32) -> vec4<f32> {
  return select(select(h.p3, h.p2, g == 2u), select(h.p1, h.p0, g == 0u), g < 2u);
}
