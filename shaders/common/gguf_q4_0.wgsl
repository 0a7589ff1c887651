// Format fragment of embed_gguf (see shaders/common/gguf_block.wgsl for the interface): Q4_0, (q − 8)·d.
// Words: the 16 nibble bytes (d in the d plane). Chunk c = word c: its low nibbles are elements
// 4c..4c+3, its high nibbles 16 + 4c..16 + 4c + 3.
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
  return Dq((vec4<f32>(q & vec4<u32>(15u)) - 8.0) * h.d, (vec4<f32>(q >> vec4<u32>(4u)) - 8.0) * h.d);
}

fn gguf_xoff(c: u32) -> vec2<u32> {
  return vec2<u32>(c, 4u + c);
}
