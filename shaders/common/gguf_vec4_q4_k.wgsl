// Format fragment of matmul_gguf_vec4 (see shaders/matmul_gguf_vec4.wgsl for the interface): Q4_K,
// d·sc·q − dmin·m per sub-block of 32. 16-byte words: d | dmin << 16 and the 12 scale bytes (0),
// the 128 nibble bytes (1..8). Group g (64 elements) = words 1 + 2g and 2 + 2g; step s takes
// nibble s of their u32 i for its vec4 i (elements 64g + 32s + 4i..), under pair 2g + s.
const BK: u32 = 256u;
const BV: u32 = 9u;
const DPLANE: bool = false;
const HW: u32 = 0u;
const NG: u32 = 4u;
const GS: u32 = 2u;
const HAS_MIN: bool = true;

alias Head = KPairs;

struct Grp {
  a: vec4<u32>,
  b: vec4<u32>,
}

fn gv_head(vb: u32, d: f32, hv: vec4<u32>) -> Head {
  let w = qv(vb, 0u);
  return k_pairs(w.x, w.y, w.z, w.w);
}

fn gv_group(vb: u32, g: u32) -> Grp {
  return Grp(qv(vb, 1u + 2u * g), qv(vb, 2u + 2u * g));
}

fn gv_codes(h: Head, w: Grp, g: u32, s: u32, i: u32) -> vec4<f32> {
  let u = select(w.b, w.a, i < 4u)[i & 3u];
  return vec4<f32>(bits4(u, 4u * s, 15u));
}

fn gv_scales(h: Head, g: u32, s: u32) -> vec4<f32> {
  let pr = k_pair_group(h, g);
  let a = select(pr.z, pr.x, s == 0u);
  let b = -select(pr.w, pr.y, s == 0u);
  return vec4<f32>(a, a, b, b);
}
