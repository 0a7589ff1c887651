// Format fragment of matmul_gguf_vec4 (see shaders/matmul_gguf_vec4.wgsl for the interface): Q3_K,
// d·(scale − 32)·(c − 4) per sub-block of 16, c = the 2-bit code plus 4 when its mask bit is set
// (the −4 goes through Σx). 16-byte words: the 32 mask bytes (0, 1; kept with the head: every
// group needs them), the 64 code bytes (2..5); the 12 scale bytes in the h plane, d in the d
// plane. Group g (128 elements) = code words 2 + 2g and 3 + 2g; step s (elements 128g + 32s..)
// takes bits 2s of their u32 i and bit 4g + s of mask u32 i for its vec4 i; vec4s 0..3 are
// sub-block 8g + 2s, 4..7 the next.
const BK: u32 = 256u;
const BV: u32 = 6u;
const DPLANE: bool = true;
const HW: u32 = 3u;
const NG: u32 = 2u;
const GS: u32 = 4u;
const HAS_MIN: bool = true;

struct Head {
  d: f32,
  sc: vec3<u32>,
  m0: vec4<u32>,
  m1: vec4<u32>,
}

struct Grp {
  a: vec4<u32>,
  b: vec4<u32>,
}

fn gv_head(vb: u32, d: f32, hv: vec4<u32>) -> Head {
  return Head(d, hv.xyz, qv(vb, 0u), qv(vb, 1u));
}

fn gv_group(vb: u32, g: u32) -> Grp {
  return Grp(qv(vb, 2u + 2u * g), qv(vb, 3u + 2u * g));
}

fn gv_codes(h: Head, w: Grp, g: u32, s: u32, i: u32) -> vec4<f32> {
  let u = select(w.b, w.a, i < 4u)[i & 3u];
  let mk = select(h.m1, h.m0, i < 4u)[i & 3u];
  let lo = bits4(u, 2u * s, 3u);
  let hi = bits4(mk, 4u * g + s, 1u);
  return vec4<f32>(lo | (hi << vec4<u32>(2u)));
}

// Six-bit scale j (0..15) − 32: low nibble from byte j (j < 8) or the high nibble of byte j − 8,
// top two bits at 2·(j/4) of byte 8 + j%4.
fn q3v_scale(h: Head, j: u32) -> f32 {
  let k = j & 7u;
  let b = (h.sc[k >> 2u] >> ((k & 3u) * 8u)) & 255u;
  let low = select(b >> 4u, b & 15u, j < 8u);
  let high = (h.sc.z >> ((j & 3u) * 8u + 2u * (j >> 2u))) & 3u;
  return f32(low | (high << 4u)) - 32.0;
}

fn gv_scales(h: Head, g: u32, s: u32) -> vec4<f32> {
  let a0 = h.d * q3v_scale(h, 8u * g + 2u * s);
  let a1 = h.d * q3v_scale(h, 8u * g + 2u * s + 1u);
  return vec4<f32>(a0, a1, -4.0 * a0, -4.0 * a1);
}
