// Format fragment of matmul_gguf_vec4 (see shaders/matmul_gguf_vec4.wgsl for the interface): Q4_1,
// q·d + m (m goes through Σx). One 16-byte word: the 16 nibble bytes (d | m << 16 in the h
// plane); vec4s as in gguf_vec4_q4_0.
const BK: u32 = 32u;
const BV: u32 = 1u;
const DPLANE: bool = false;
const HW: u32 = 1u;
const NG: u32 = 1u;
const GS: u32 = 1u;
const HAS_MIN: bool = true;

struct Head {
  d: f32,
  m: f32,
}

struct Grp {
  w: vec4<u32>,
}

fn gv_head(vb: u32, d: f32, hv: vec4<u32>) -> Head {
  let dm = unpack2x16float(hv.x);
  return Head(dm.x, dm.y);
}

fn gv_group(vb: u32, g: u32) -> Grp {
  return Grp(qv(vb, 0u));
}

fn gv_codes(h: Head, w: Grp, g: u32, s: u32, i: u32) -> vec4<f32> {
  return vec4<f32>(bits4(w.w[i & 3u], 4u * (i >> 2u), 15u));
}

fn gv_scales(h: Head, g: u32, s: u32) -> vec4<f32> {
  return vec4<f32>(h.d, h.d, h.m, h.m);
}
