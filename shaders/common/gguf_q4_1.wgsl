// Format fragment of embed_gguf (see shaders/common/gguf_block.wgsl for the interface): Q4_1, q·d + m.
// d | m << 16 in the h plane; words: the 16 nibble bytes (chunks as in gguf_q4_0).
const BK: u32 = 32u;
const BW: u32 = 4u;
const DPLANE: bool = false;
const HW: u32 = 1u;
const NCH: u32 = 4u;

struct Head {
  d: f32,
  m: f32,
}

fn gguf_head(wb: u32, d: f32, hv: vec4<u32>) -> Head {
  let dm = unpack2x16float(hv.x);
  return Head(dm.x, dm.y);
}

fn gguf_dq(wb: u32, h: Head, c: u32) -> Dq {
  let q = bytes4(wd(wb, c));
  return Dq(vec4<f32>(q & vec4<u32>(15u)) * h.d + h.m, vec4<f32>(q >> vec4<u32>(4u)) * h.d + h.m);
}

fn gguf_xoff(c: u32) -> vec2<u32> {
  return vec2<u32>(c, 4u + c);
}
