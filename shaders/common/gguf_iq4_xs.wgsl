// Format fragment of embed_gguf (see shaders/common/gguf_block.wgsl for the interface): IQ4_XS, d·(scale − 32)·T[q] per sub-block of 32.
// Words: the 128 nibble bytes, 16 per sub-block (d | scales_h << 16 and scales_l in the h plane).
// Chunk c = word c of sub-block i = c/4: low nibbles are elements 32i + 4(c%4).., high ones 32i + 16 + 4(c%4)...
const BK: u32 = 256u;
const BW: u32 = 32u;
const DPLANE: bool = false;
const HW: u32 = 2u;
const NCH: u32 = 32u;

struct Head {
  d: f32,
  sh: u32,
  sl: u32,
}

fn gguf_head(wb: u32, d: f32, hv: vec4<u32>) -> Head {
  return Head(unpack2x16float(hv.x).x, hv.x >> 16u, hv.y);
}

fn gguf_dq(wb: u32, h: Head, c: u32) -> Dq {
  let i = c >> 2u;
  let ls = ((h.sl >> (4u * i)) & 15u) | (((h.sh >> (2u * i)) & 3u) << 4u);
  let dl = h.d * (f32(ls) - 32.0);
  let q = bytes4(wd(wb, c));
  return Dq(iq4_levels(q & vec4<u32>(15u)) * dl, iq4_levels(q >> vec4<u32>(4u)) * dl);
}

fn gguf_xoff(c: u32) -> vec2<u32> {
  let i = c >> 2u;
  return vec2<u32>(8u * i + (c & 3u), 8u * i + 4u + (c & 3u));
}
