// Format fragment of matmul_gguf_vec4 (see shaders/matmul_gguf_vec4.wgsl for the interface): Q6_K,
// d·scale·(q − 32) per sub-block of 16, scale a signed byte (the −32 goes through Σx). 16-byte
// words: the 128 low-nibble bytes (0..7), the 64 bytes of 2-bit highs (8..11), the 16 scale bytes
// (12); d in the d plane. Group g = one 32-element step, elements 128h + 32t.. with h = g/4,
// t = g%4: low-nibble words 4h + 2·(t%2) and + 1 (nibble t/2 of their u32 i for vec4 i), high
// words 8 + 2h and 9 + 2h (bits 2t of their u32 i); vec4s 0..3 are sub-block 8h + 2t, 4..7 the
// next. A group per step keeps 4 words live per row instead of a 128-element group's 6.
const BK: u32 = 256u;
const BV: u32 = 13u;
const DPLANE: bool = true;
const HW: u32 = 0u;
const NG: u32 = 8u;
const GS: u32 = 1u;
const HAS_MIN: bool = true;

struct Head {
  d: f32,
  sc: vec4<u32>,
}

struct Grp {
  l0: vec4<u32>,
  l1: vec4<u32>,
  h0: vec4<u32>,
  h1: vec4<u32>,
}

fn gv_head(vb: u32, d: f32, hv: vec4<u32>) -> Head {
  return Head(d, qv(vb, 12u));
}

fn gv_group(vb: u32, g: u32) -> Grp {
  let h = g >> 2u;
  let lw = 4u * h + 2u * (g & 1u);
  return Grp(qv(vb, lw), qv(vb, lw + 1u), qv(vb, 8u + 2u * h), qv(vb, 9u + 2u * h));
}

fn gv_codes(h: Head, w: Grp, g: u32, s: u32, i: u32) -> vec4<f32> {
  let t = g & 3u;
  let lw = select(w.l1, w.l0, i < 4u)[i & 3u];
  let hw = select(w.h1, w.h0, i < 4u)[i & 3u];
  let lo = bits4(lw, 4u * (t >> 1u), 15u);
  let hi = bits4(hw, 2u * t, 3u);
  return vec4<f32>(lo | (hi << vec4<u32>(4u)));
}

// Signed byte j (0..3) of u.
fn q6_sbyte(u: u32, j: u32) -> f32 {
  return f32(bitcast<i32>(u << (24u - 8u * j)) >> 24u);
}

fn gv_scales(h: Head, g: u32, s: u32) -> vec4<f32> {
  // Sub-blocks 2g and 2g + 1 (= 8h + 2t): bytes 2·(g%2) and + 1 of scale u32 g/2.
  let u = h.sc[g >> 1u];
  let j = 2u * (g & 1u);
  let a0 = h.d * q6_sbyte(u, j);
  let a1 = h.d * q6_sbyte(u, j + 1u);
  return vec4<f32>(a0, a1, -32.0 * a0, -32.0 * a1);
}
