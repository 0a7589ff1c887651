// Shared by the Q4_K and Q5_K format fragments of embed_gguf: both blocks open with
// the scale pairs of common/gguf_k_pairs.wgsl, and both walk their 256 elements in the same chunks.

alias Head = KPairs;

fn gguf_head(wb: u32, d: f32, hv: vec4<u32>) -> Head {
  return k_pairs(wd(wb, 0u), wd(wb, 1u), wd(wb, 2u), wd(wb, 3u));
}

fn k4_group(h: Head, g: u32) -> vec4<f32> {
  return k_pair_group(h, g);
}

fn gguf_xoff(c: u32) -> vec2<u32> {
  let g = c >> 3u;
  return vec2<u32>(16u * g + (c & 7u), 16u * g + 8u + (c & 7u));
}
