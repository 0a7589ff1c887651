// Format fragment of matmul_gguf_vec4 (see shaders/matmul_gguf_vec4.wgsl for the interface):
// IQ4_XS, d·(scale − 32)·T[q] per sub-block of 32, T ggml's 16 non-linear levels. 16-byte words:
// the 128 nibble bytes, word i = sub-block i (low nibbles its elements 0..15, high 16..31); the h
// plane holds d | scales_h << 16 and scales_l. Group g = step g = sub-block g, vec4s as in
// gguf_vec4_iq4_nl.
const BK: u32 = 256u;
const BV: u32 = 8u;
const DPLANE: bool = false;
const HW: u32 = 2u;
const NG: u32 = 8u;
const GS: u32 = 1u;
const HAS_MIN: bool = false;

struct Head {
  d: f32,
  sh: u32,
  sl: u32,
}

struct Grp {
  w: vec4<u32>,
}

fn gv_head(vb: u32, d: f32, hv: vec4<u32>) -> Head {
  return Head(unpack2x16float(hv.x).x, hv.x >> 16u, hv.y);
}

fn gv_group(vb: u32, g: u32) -> Grp {
  return Grp(qv(vb, g));
}

fn gv_codes(h: Head, w: Grp, g: u32, s: u32, i: u32) -> vec4<f32> {
  let q = bits4(w.w[i & 3u], 4u * (i >> 2u), 15u);
  return iq4_levels(q);
}

fn gv_scales(h: Head, g: u32, s: u32) -> vec4<f32> {
  let ls = ((h.sl >> (4u * g)) & 15u) | (((h.sh >> (2u * g)) & 3u) << 4u);
  let a = h.d * (f32(ls) - 32.0);
  return vec4<f32>(a, a, 0.0, 0.0);
}
