// Format fragment of matmul_gguf_vec4 (see shaders/matmul_gguf_vec4.wgsl for the interface): Q2_K,
// d·(sc & 15)·q − dmin·(sc >> 4) per sub-block of 16 (the min goes through Σx). 16-byte words: the
// 16 scale bytes (0), the 64 code bytes (1..4); d | dmin << 16 in the h plane. Group g (128
// elements) = code words 1 + 2g and 2 + 2g; step s (elements 128g + 32s..) takes bits 2s of their
// u32 i for its vec4 i; vec4s 0..3 are sub-block 8g + 2s, 4..7 the next.
const BK: u32 = 256u;
const BV: u32 = 5u;
const DPLANE: bool = false;
const HW: u32 = 1u;
const NG: u32 = 2u;
const GS: u32 = 4u;
const HAS_MIN: bool = true;

struct Head {
  d: f32,
  dmin: f32,
  sc: vec4<u32>,
}

struct Grp {
  a: vec4<u32>,
  b: vec4<u32>,
}

fn gv_head(vb: u32, d: f32, hv: vec4<u32>) -> Head {
  let dm = unpack2x16float(hv.x);
  return Head(dm.x, dm.y, qv(vb, 0u));
}

fn gv_group(vb: u32, g: u32) -> Grp {
  return Grp(qv(vb, 1u + 2u * g), qv(vb, 2u + 2u * g));
}

fn gv_codes(h: Head, w: Grp, g: u32, s: u32, i: u32) -> vec4<f32> {
  let u = select(w.b, w.a, i < 4u)[i & 3u];
  return vec4<f32>(bits4(u, 2u * s, 3u));
}

fn gv_scales(h: Head, g: u32, s: u32) -> vec4<f32> {
  // Sub-blocks 8g + 2s and + 1: bytes 2·(s%2) and + 1 of scale u32 2g + s/2.
  let u = h.sc[2u * g + (s >> 1u)] >> (16u * (s & 1u));
  let s0 = u & 255u;
  let s1 = (u >> 8u) & 255u;
  return vec4<f32>(
    h.d * f32(s0 & 15u),
    h.d * f32(s1 & 15u),
    -h.dmin * f32(s0 >> 4u),
    -h.dmin * f32(s1 >> 4u),
  );
}
