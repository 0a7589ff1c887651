// Format fragment of matmul_gguf (see shaders/matmul_gguf.wgsl for the interface): Q5_K, d·sc·q − dmin·m per sub-block of 32,
// q five bits. Words: Q4_K's header (0..3), 32 high-bit bytes (4..11), 128 nibble bytes (12..43).
// Chunks as in gguf_q4_k; the high bits of elements 64g + l and 64g + 32 + l are bits 2g and
// 2g + 1 of high-bit byte l.
const BK: u32 = 256u;
const BW: u32 = 44u;
const DPLANE: bool = false;
const NCH: u32 = 32u;

struct Head {
  d: f32,
  dmin: f32,
  s0: u32,
  s1: u32,
  s2: u32,
}

fn gguf_head(wb: u32, d: f32) -> Head {
  let dm = unpack2x16float(wd(wb, 0u));
  return Head(dm.x, dm.y, wd(wb, 1u), wd(wb, 2u), wd(wb, 3u));
}

// Byte k of the 12 scale bytes.
fn k4_byte(h: Head, k: u32) -> u32 {
  let w = select(select(h.s2, h.s1, k < 8u), h.s0, k < 4u);
  return (w >> ((k & 3u) * 8u)) & 255u;
}

// (d·sc, dmin·m) of pair j: j < 4 from the low six bits of bytes j and j + 4; else the nibbles of
// byte j + 4 under the top two bits of bytes j − 4 and j.
fn k4_scale_min(h: Head, j: u32) -> vec2<f32> {
  let a = k4_byte(h, j + 4u);
  let lo = k4_byte(h, j & 3u);
  let sc = select((a & 15u) | ((lo >> 6u) << 4u), lo & 63u, j < 4u);
  let m = select((a >> 4u) | ((k4_byte(h, j) >> 6u) << 4u), a & 63u, j < 4u);
  return vec2<f32>(h.d * f32(sc), h.dmin * f32(m));
}

fn gguf_xoff(c: u32) -> vec2<u32> {
  let g = c >> 3u;
  return vec2<u32>(16u * g + (c & 7u), 16u * g + 8u + (c & 7u));
}

fn gguf_dq(wb: u32, h: Head, c: u32) -> Dq {
  let g = c >> 3u;
  let q = bytes4(wd(wb, 12u + c));
  let qh = bytes4(wd(wb, 4u + (c & 7u)));
  let lo = (q & vec4<u32>(15u)) | (((qh >> vec4<u32>(2u * g)) & vec4<u32>(1u)) << vec4<u32>(4u));
  let hi = (q >> vec4<u32>(4u)) | (((qh >> vec4<u32>(2u * g + 1u)) & vec4<u32>(1u)) << vec4<u32>(4u));
  let a = k4_scale_min(h, 2u * g);
  let b = k4_scale_min(h, 2u * g + 1u);
  return Dq(vec4<f32>(lo) * a.x - a.y, vec4<f32>(hi) * b.x - b.y);
}
