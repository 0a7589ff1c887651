// Format fragment of matmul_gguf_vec4 (see shaders/matmul_gguf_vec4.wgsl for the interface): Q5_K,
// d·sc·q − dmin·m per sub-block of 32, q five bits. 16-byte words: Q4_K's header (0), the 32
// high-bit bytes (1, 2; kept with the head: every group needs them), the 128 nibble bytes (3..10).
// Group g = words 3 + 2g and 4 + 2g, nibbles as in gguf_vec4_q4_k; the fifth bit of vec4 i of
// step s is bit 2g + s of high-bit u32 i's bytes.
const BK: u32 = 256u;
const BV: u32 = 11u;
const DPLANE: bool = false;
const HW: u32 = 0u;
const NG: u32 = 4u;
const GS: u32 = 2u;
const HAS_MIN: bool = true;

struct Head {
  kp: KPairs,
  h0: vec4<u32>,
  h1: vec4<u32>,
}

struct Grp {
  a: vec4<u32>,
  b: vec4<u32>,
}

fn gv_head(vb: u32, d: f32, hv: vec4<u32>) -> Head {
  let w = qv(vb, 0u);
  return Head(k_pairs(w.x, w.y, w.z, w.w), qv(vb, 1u), qv(vb, 2u));
}

fn gv_group(vb: u32, g: u32) -> Grp {
  return Grp(qv(vb, 3u + 2u * g), qv(vb, 4u + 2u * g));
}

fn gv_codes(h: Head, w: Grp, g: u32, s: u32, i: u32) -> vec4<f32> {
  let u = select(w.b, w.a, i < 4u)[i & 3u];
  let hb = select(h.h1, h.h0, i < 4u)[i & 3u];
  let lo = bits4(u, 4u * s, 15u);
  let hi = bits4(hb, 2u * g + s, 1u);
  return vec4<f32>(lo | (hi << vec4<u32>(4u)));
}

fn gv_scales(h: Head, g: u32, s: u32) -> vec4<f32> {
  let pr = k_pair_group(h.kp, g);
  let a = select(pr.z, pr.x, s == 0u);
  let b = -select(pr.w, pr.y, s == 0u);
  return vec4<f32>(a, a, b, b);
}
