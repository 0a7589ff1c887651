// Format fragment of matmul_gguf (see shaders/matmul_gguf.wgsl for the interface): Q5_1, q·d + m.
// Words: d | m << 16, the u32 of fifth bits, then the 16 nibble bytes; chunks as in gguf_q4_0.
const BK: u32 = 32u;
const BW: u32 = 6u;
const DPLANE: bool = false;
const HPLANE: bool = false;
const NCH: u32 = 4u;

struct Head {
  d: f32,
  m: f32,
  qh: u32,
}

fn gguf_head(wb: u32, d: f32, hw: u32) -> Head {
  let dm = unpack2x16float(wd(wb, 0u));
  return Head(dm.x, dm.y, wd(wb, 1u));
}

fn gguf_dq(wb: u32, h: Head, c: u32) -> Dq {
  let q = bytes4(wd(wb, 2u + c));
  let sh = vec4<u32>(0u, 1u, 2u, 3u) + 4u * c;
  let lo = (q & vec4<u32>(15u)) | (((vec4<u32>(h.qh) >> sh) & vec4<u32>(1u)) << vec4<u32>(4u));
  let hi = (q >> vec4<u32>(4u)) | (((vec4<u32>(h.qh) >> (sh + 16u)) & vec4<u32>(1u)) << vec4<u32>(4u));
  return Dq(vec4<f32>(lo) * h.d + h.m, vec4<f32>(hi) * h.d + h.m);
}

fn gguf_xoff(c: u32) -> vec2<u32> {
  return vec2<u32>(c, 4u + c);
}
