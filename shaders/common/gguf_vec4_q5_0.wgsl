// Format fragment of matmul_gguf_vec4 (see shaders/matmul_gguf_vec4.wgsl for the interface): Q5_0,
// (q − 16)·d (the −16 goes through Σx). One 16-byte word: the 16 nibble bytes (d in the d plane,
// the u32 of fifth bits in the h plane, bit j for element j); vec4 i < 4 of the block is the low
// nibbles of u32 i, vec4 4 + i its high nibbles.
const BK: u32 = 32u;
const BV: u32 = 1u;
const DPLANE: bool = true;
const HW: u32 = 1u;
const NG: u32 = 1u;
const GS: u32 = 1u;
const HAS_MIN: bool = true;

struct Head {
  d: f32,
  qh: u32,
}

struct Grp {
  w: vec4<u32>,
}

fn gv_head(vb: u32, d: f32, hv: vec4<u32>) -> Head {
  return Head(d, hv.x);
}

fn gv_group(vb: u32, g: u32) -> Grp {
  return Grp(qv(vb, 0u));
}

fn gv_codes(h: Head, w: Grp, g: u32, s: u32, i: u32) -> vec4<f32> {
  let lo = bits4(w.w[i & 3u], 4u * (i >> 2u), 15u);
  let hi = (vec4<u32>(h.qh >> (4u * i)) >> vec4<u32>(0u, 1u, 2u, 3u)) & vec4<u32>(1u);
  return vec4<f32>(lo | (hi << vec4<u32>(4u)));
}

fn gv_scales(h: Head, g: u32, s: u32) -> vec4<f32> {
  return vec4<f32>(h.d, h.d, -16.0 * h.d, -16.0 * h.d);
}
