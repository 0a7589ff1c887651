// Format fragment of matmul_gguf_vec4 (see shaders/matmul_gguf_vec4.wgsl for the interface):
// IQ4_NL, d·T[q] with T ggml's 16 non-linear levels; words as in gguf_vec4_q4_0.
const BK: u32 = 32u;
const BV: u32 = 1u;
const DPLANE: bool = true;
const HW: u32 = 0u;
const NG: u32 = 1u;
const GS: u32 = 1u;
const HAS_MIN: bool = false;

var<private> IQ4_T: array<f32, 16> = array<f32, 16>(
  -127.0, -104.0, -83.0, -65.0, -49.0, -35.0, -22.0, -10.0, 1.0, 13.0, 25.0, 38.0, 53.0, 69.0, 89.0, 113.0,
);

struct Head {
  d: f32,
}

struct Grp {
  w: vec4<u32>,
}

fn gv_head(vb: u32, d: f32, hv: vec4<u32>) -> Head {
  return Head(d);
}

fn gv_group(vb: u32, g: u32) -> Grp {
  return Grp(qv(vb, 0u));
}

fn gv_codes(h: Head, w: Grp, g: u32, s: u32, i: u32) -> vec4<f32> {
  let q = bits4(w.w[i & 3u], 4u * (i >> 2u), 15u);
  return vec4<f32>(IQ4_T[q.x], IQ4_T[q.y], IQ4_T[q.z], IQ4_T[q.w]);
}

fn gv_scales(h: Head, g: u32, s: u32) -> vec4<f32> {
  return vec4<f32>(h.d, h.d, 0.0, 0.0);
}
