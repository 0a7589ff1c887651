// Format fragment of embed_gguf (see shaders/common/gguf_block.wgsl for the interface): Q4_K, d·sc·q − dmin·m per sub-block of 32.
// Words: d | dmin << 16 (0), 12 bytes of six-bit (scale, min) pairs (1..3), 128 nibble bytes
// (4..35). Chunk c = nibble word 4 + c: group g = c/8; low nibbles are elements 64g + 4(c%8)..
// (pair 2g), high nibbles 64g + 32 + 4(c%8).. (pair 2g + 1).
const BK: u32 = 256u;
const BW: u32 = 36u;
const DPLANE: bool = false;
const HW: u32 = 0u;
const NCH: u32 = 32u;

// Scale pairs and chunk offsets: shaders/common/gguf_k_scales.wgsl.

fn gguf_dq(wb: u32, h: Head, c: u32) -> Dq {
  let g = c >> 3u;
  let q = bytes4(wd(wb, 4u + c));
  let s = k4_group(h, g);
  return Dq(vec4<f32>(q & vec4<u32>(15u)) * s.x - s.y, vec4<f32>(q >> vec4<u32>(4u)) * s.z - s.w);
}
