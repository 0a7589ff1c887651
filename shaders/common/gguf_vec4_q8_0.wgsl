// Format fragment of matmul_gguf_vec4 (see shaders/matmul_gguf_vec4.wgsl for the interface): Q8_0,
// q·d with q a signed byte. Two 16-byte words: the 32 bytes (d in the d plane); vec4 i of the
// block is u32 i.
const BK: u32 = 32u;
const BV: u32 = 2u;
const DPLANE: bool = true;
const HW: u32 = 0u;
const NG: u32 = 1u;
const GS: u32 = 1u;
const HAS_MIN: bool = false;

struct Head {
  d: f32,
}

struct Grp {
  a: vec4<u32>,
  b: vec4<u32>,
}

fn gv_head(vb: u32, d: f32, hv: vec4<u32>) -> Head {
  return Head(d);
}

fn gv_group(vb: u32, g: u32) -> Grp {
  return Grp(qv(vb, 0u), qv(vb, 1u));
}

fn gv_codes(h: Head, w: Grp, g: u32, s: u32, i: u32) -> vec4<f32> {
  let u = select(w.b, w.a, i < 4u)[i & 3u];
  // Each byte shifted to the top, then arithmetically back: the signed value.
  return vec4<f32>(bitcast<vec4<i32>>(vec4<u32>(u) << vec4<u32>(24u, 16u, 8u, 0u)) >> vec4<u32>(24u));
}

fn gv_scales(h: Head, g: u32, s: u32) -> vec4<f32> {
  return vec4<f32>(h.d, h.d, 0.0, 0.0);
}
