// Format fragment of matmul_gguf_vec4 (see shaders/matmul_gguf_vec4.wgsl for the interface): Q6_K,
// d·scale·(q − 32) per sub-block of 16, scale a signed byte (the −32 goes through Σx). 16-byte words: the 128 low-nibble
// bytes (0..7), the 64 bytes of 2-bit highs (8..11), the 16 scale bytes (12); d in the d plane.
// Group h (128 elements) = low-nibble words 4h..4h+3 and high words 8 + 2h, 9 + 2h; step t
// (elements 128h + 32t..) takes for its vec4 i nibble t/2 of the group's low u32 8·(t%2) + i and
// bits 2t of its high u32 i; vec4s 0..3 are sub-block 8h + 2t, 4..7 the next.
const BK: u32 = 256u;
const BV: u32 = 13u;
const DPLANE: bool = true;
const HW: u32 = 0u;
const NG: u32 = 2u;
const GS: u32 = 4u;
const HAS_MIN: bool = true;

struct Head {
  d: f32,
  sc: vec4<u32>,
}

struct Grp {
  l0: vec4<u32>,
  l1: vec4<u32>,
  l2: vec4<u32>,
  l3: vec4<u32>,
  h0: vec4<u32>,
  h1: vec4<u32>,
}

fn gv_head(vb: u32, d: f32, hv: vec4<u32>) -> Head {
  return Head(d, qv(vb, 12u));
}

fn gv_group(vb: u32, g: u32) -> Grp {
  return Grp(
    qv(vb, 4u * g),
    qv(vb, 4u * g + 1u),
    qv(vb, 4u * g + 2u),
    qv(vb, 4u * g + 3u),
    qv(vb, 8u + 2u * g),
    qv(vb, 9u + 2u * g),
  );
}

fn gv_codes(h: Head, w: Grp, g: u32, s: u32, i: u32) -> vec4<f32> {
  let li = 2u * (s & 1u) + (i >> 2u);
  let lw = select(select(w.l3, w.l2, li == 2u), select(w.l1, w.l0, li == 0u), li < 2u)[i & 3u];
  let hw = select(w.h1, w.h0, i < 4u)[i & 3u];
  let lo = bits4(lw, 4u * (s >> 1u), 15u);
  let hi = bits4(hw, 2u * s, 3u);
  return vec4<f32>(lo | (hi << vec4<u32>(4u)));
}

// Signed byte j (0..3) of u.
fn q6_sbyte(u: u32, j: u32) -> f32 {
  return f32(bitcast<i32>(u << (24u - 8u * j)) >> 24u);
}

fn gv_scales(h: Head, g: u32, s: u32) -> vec4<f32> {
  // Sub-blocks 8g + 2s and + 1: bytes 2·(s%2) and + 1 of scale u32 2g + s/2.
  let u = h.sc[2u * g + (s >> 1u)];
  let j = 2u * (s & 1u);
  let a0 = h.d * q6_sbyte(u, j);
  let a1 = h.d * q6_sbyte(u, j + 1u);
  return vec4<f32>(a0, a1, -32.0 * a0, -32.0 * a1);
}
