// Format fragment of embed_gguf (see shaders/common/gguf_block.wgsl for the interface): Q5_1, q·d + m.
// Words: the 16 nibble bytes (d | m << 16 and the u32 of fifth bits in the h plane); chunks as in
// gguf_q4_0.
const BK: u32 = 32u;
const BW: u32 = 4u;
const DPLANE: bool = false;
const HW: u32 = 2u;
const NCH: u32 = 4u;

struct Head {
  d: f32,
  m: f32,
  qh: u32,
}

fn gguf_head(wb: u32, d: f32, hv: vec4<u32>) -> Head {
  let dm = unpack2x16float(hv.x);
  return Head(dm.x, dm.y, hv.y);
}

fn gguf_dq(wb: u32, h: Head, c: u32) -> Dq {
  let q = bytes4(wd(wb, c));
  let sh = vec4<u32>(0u, 1u, 2u, 3u) + 4u * c;
  let lo = (q & vec4<u32>(15u)) | (((vec4<u32>(h.qh) >> sh) & vec4<u32>(1u)) << vec4<u32>(4u));
  let hi = (q >> vec4<u32>(4u)) | (((vec4<u32>(h.qh) >> (sh + 16u)) & vec4<u32>(1u)) << vec4<u32>(4u));
  return Dq(vec4<f32>(lo) * h.d + h.m, vec4<f32>(hi) * h.d + h.m);
}

fn gguf_xoff(c: u32) -> vec2<u32> {
  return vec2<u32>(c, 4u + c);
}
