// Format fragment of embed_gguf (see shaders/common/gguf_block.wgsl for the interface): IQ4_NL, d·T[q] with T ggml's 16 non-linear levels.
// Words: the 16 nibble bytes (d in the d plane); chunks as in gguf_q4_0.
const BK: u32 = 32u;
const BW: u32 = 4u;
const DPLANE: bool = true;
const HW: u32 = 0u;
const NCH: u32 = 4u;

var<private> IQ4_T: array<f32, 16> = array<f32, 16>(
  -127.0, -104.0, -83.0, -65.0, -49.0, -35.0, -22.0, -10.0, 1.0, 13.0, 25.0, 38.0, 53.0, 69.0, 89.0, 113.0,
);

fn iq4_levels(q: vec4<u32>) -> vec4<f32> {
  return vec4<f32>(IQ4_T[q.x], IQ4_T[q.y], IQ4_T[q.z], IQ4_T[q.w]);
}

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
