// Format fragment of embed_gguf (see shaders/common/gguf_block.wgsl for the interface): Q8_0, q·d with q a signed byte.
// Words: the 32 bytes (d in the d plane). Chunk c = words 2c and 2c + 1 = elements 8c..8c+7.
const BK: u32 = 32u;
const BW: u32 = 8u;
const DPLANE: bool = true;
const HW: u32 = 0u;
const NCH: u32 = 4u;

struct Head {
  d: f32,
}

fn gguf_head(wb: u32, d: f32, hv: vec4<u32>) -> Head {
  return Head(d);
}

// The four bytes of a word as signed integers (shift each to the top, arithmetic shift back).
fn sbytes4(w: u32) -> vec4<f32> {
  return vec4<f32>(bitcast<vec4<i32>>(vec4<u32>(w) << vec4<u32>(24u, 16u, 8u, 0u)) >> vec4<u32>(24u));
}

fn gguf_dq(wb: u32, h: Head, c: u32) -> Dq {
  return Dq(sbytes4(wd(wb, 2u * c)) * h.d, sbytes4(wd(wb, 2u * c + 1u)) * h.d);
}

fn gguf_xoff(c: u32) -> vec2<u32> {
  return vec2<u32>(2u * c, 2u * c + 1u);
}
