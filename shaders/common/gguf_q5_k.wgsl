// Format fragment of embed_gguf (see shaders/common/gguf_block.wgsl for the interface): Q5_K, d·sc·q − dmin·m per sub-block of 32,
// q five bits. Words: Q4_K's header (0..3), 32 high-bit bytes (4..11), 128 nibble bytes (12..43).
// Chunks as in gguf_q4_k; the high bits of elements 64g + l and 64g + 32 + l are bits 2g and
// 2g + 1 of high-bit byte l.
const BK: u32 = 256u;
const BW: u32 = 44u;
const DPLANE: bool = false;
const HW: u32 = 0u;
const NCH: u32 = 32u;

// Scale pairs and chunk offsets: shaders/common/gguf_k_scales.wgsl.

fn gguf_dq(wb: u32, h: Head, c: u32) -> Dq {
  let g = c >> 3u;
  let q = bytes4(wd(wb, 12u + c));
  let qh = bytes4(wd(wb, 4u + (c & 7u)));
  let lo = (q & vec4<u32>(15u)) | (((qh >> vec4<u32>(2u * g)) & vec4<u32>(1u)) << vec4<u32>(4u));
  let hi = (q >> vec4<u32>(4u)) | (((qh >> vec4<u32>(2u * g + 1u)) & vec4<u32>(1u)) << vec4<u32>(4u));
  let s = k4_group(h, g);
  return Dq(vec4<f32>(lo) * s.x - s.y, vec4<f32>(hi) * s.z - s.w);
}
