// Format fragment of embed_gguf (see shaders/common/gguf_block.wgsl for the interface): IQ4_NL, d·T[q] with T ggml's 16 non-linear levels.
// Words: the 16 nibble bytes (d in the d plane); chunks as in gguf_q4_0.
const BK: u32 = 32u;
const BW: u32 = 4u;
const DPLANE: bool = true;
const HW: u32 = 0u;
const NCH: u32 = 4u;

struct Head {
  d: f32,
}

fn gguf_head(wb: u32, d: f32, hv: vec4<u32>) -> Head {
  return Head(d);
}

fn gguf_dq(wb: u32, h: Head, c: u32) -> Dq {
  let q = bytes4(wd(wb, c));
  return Dq(iq4_levels(q & vec4<u32>(15u)) * h.d, iq4_levels(q >> vec4<u32>(4u)) * h.d);
}

fn gguf_xoff(c: u32) -> vec2<u32> {
  return vec2<u32>(c, 4u + c);
}
