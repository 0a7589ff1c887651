// Format fragment of embed_gguf (see shaders/common/gguf_block.wgsl for the interface): Q3_K, d·(scale − 32)·q per sub-block of 16,
// q = the 2-bit code, minus 4 when its mask bit is clear. Words: the 32 mask bytes (0..7), 64 bytes
// of 2-bit codes (8..23); the 12 scale bytes in the h plane, d in the d plane. Chunks walk the codes as in
// gguf_q2_k; the mask bit of element 128h + 32s + l is bit 4h + s of mask byte l.
const BK: u32 = 256u;
const BW: u32 = 24u;
const DPLANE: bool = true;
const HW: u32 = 3u;
const NCH: u32 = 32u;

struct Head {
  d: f32,
  s0: u32,
  s1: u32,
  s2: u32,
}

fn gguf_head(wb: u32, d: f32, hv: vec4<u32>) -> Head {
  return Head(d, hv.x, hv.y, hv.z);
}

// Six-bit scale i: low nibble from byte i (i < 8) or the high nibble of byte i − 8, top two bits
// at 2·(i/4) of byte 8 + i%4.
fn q3_scale(h: Head, i: u32) -> f32 {
  let j = i & 7u;
  let b = (select(h.s1, h.s0, j < 4u) >> ((j & 3u) * 8u)) & 255u;
  let low = select(b >> 4u, b & 15u, i < 8u);
  let high = ((h.s2 >> ((i & 3u) * 8u)) >> (2u * (i >> 2u))) & 3u;
  return f32(low | (high << 4u)) - 32.0;
}

fn gguf_dq(wb: u32, h: Head, c: u32) -> Dq {
  let half = c >> 4u;
  let s = (c >> 2u) & 3u;
  let q = c & 3u;
  let wi = 8u + 8u * half + 2u * q;
  let sh = vec4<u32>(2u * s);
  let hb = vec4<u32>(4u * half + s);
  let lo = vec4<f32>((bytes4(wd(wb, wi)) >> sh) & vec4<u32>(3u)) +
    4.0 * vec4<f32>((bytes4(wd(wb, 2u * q)) >> hb) & vec4<u32>(1u)) - 4.0;
  let hi = vec4<f32>((bytes4(wd(wb, wi + 1u)) >> sh) & vec4<u32>(3u)) +
    4.0 * vec4<f32>((bytes4(wd(wb, 2u * q + 1u)) >> hb) & vec4<u32>(1u)) - 4.0;
  let dl = h.d * q3_scale(h, 8u * half + 2u * s + (q >> 1u));
  return Dq(lo * dl, hi * dl);
}

fn gguf_xoff(c: u32) -> vec2<u32> {
  let o = 32u * (c >> 4u) + 8u * ((c >> 2u) & 3u) + 2u * (c & 3u);
  return vec2<u32>(o, o + 1u);
}
