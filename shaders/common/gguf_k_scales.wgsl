// Shared by the Q4_K and Q5_K format fragments of matmul_gguf and embed_gguf: both blocks open with
// d | dmin << 16 (word 0) and 12 bytes of six-bit (scale, min) pairs (words 1..3), and both walk
// their 256 elements in the same chunks.

// Per 64-element group g: (d·sc, dmin·m) of pairs 2g and 2g + 1, decoded once per block with
// vector ops (pairs j < 4 from the low six bits of bytes j and j + 4; pairs j ≥ 4 from the nibbles
// of byte j + 4 under the top two bits of bytes j − 4 and j).
struct Head {
  p0: vec4<f32>,
  p1: vec4<f32>,
  p2: vec4<f32>,
  p3: vec4<f32>,
}

fn gguf_head(wb: u32, d: f32) -> Head {
  let dm = unpack2x16float(wd(wb, 0u));
  let b0 = bytes4(wd(wb, 1u));
  let b1 = bytes4(wd(wb, 2u));
  let b2 = bytes4(wd(wb, 3u));
  let lo_sc = vec4<f32>(b0 & vec4<u32>(63u)) * dm.x;
  let lo_m = vec4<f32>(b1 & vec4<u32>(63u)) * dm.y;
  let hi_sc = vec4<f32>((b2 & vec4<u32>(15u)) | ((b0 >> vec4<u32>(6u)) << vec4<u32>(4u))) * dm.x;
  let hi_m = vec4<f32>((b2 >> vec4<u32>(4u)) | ((b1 >> vec4<u32>(6u)) << vec4<u32>(4u))) * dm.y;
  return Head(
    vec4<f32>(lo_sc.x, lo_m.x, lo_sc.y, lo_m.y),
    vec4<f32>(lo_sc.z, lo_m.z, lo_sc.w, lo_m.w),
    vec4<f32>(hi_sc.x, hi_m.x, hi_sc.y, hi_m.y),
    vec4<f32>(hi_sc.z, hi_m.z, hi_sc.w, hi_m.w),
  );
}

// (d·sc, dmin·m, d·sc′, dmin·m′) of group g's two pairs.
fn k4_group(h: Head, g: u32) -> vec4<f32> {
  return select(select(h.p3, h.p2, g == 2u), select(h.p1, h.p0, g == 0u), g < 2u);
}

fn gguf_xoff(c: u32) -> vec2<u32> {
  let g = c >> 3u;
  return vec2<u32>(16u * g + (c & 7u), 16u * g + 8u + (c & 7u));
}
