// Format fragment of embed_gguf (see shaders/common/gguf_block.wgsl for the interface): Q6_K, d·scale·(q − 32) per sub-block of 16,
// scale a signed byte. Words: 128 low-nibble bytes (0..31), 64 bytes of 2-bit highs (32..47),
// 16 scale bytes (48..51); d in the d plane. Chunk c: half h = c/16, quarter t = (c/4)%4,
// q = c%4: elements 128h + 32t + 8q..+7, low nibbles from words 16h + 8(t%2) + 2q and + 1 (high
// nibbles when t ≥ 2), top bits 2t of words 32 + 8h + 2q and + 1, sub-block 8h + 2t + q/2.
const BK: u32 = 256u;
const BW: u32 = 52u;
const DPLANE: bool = true;
const HW: u32 = 0u;
const NCH: u32 = 32u;

struct Head {
  d: f32,
  s0: u32,
  s1: u32,
  s2: u32,
  s3: u32,
}

fn gguf_head(wb: u32, d: f32, hv: vec4<u32>) -> Head {
  return Head(d, wd(wb, 48u), wd(wb, 49u), wd(wb, 50u), wd(wb, 51u));
}

fn gguf_dq(wb: u32, h: Head, c: u32) -> Dq {
  let half = c >> 4u;
  let t = (c >> 2u) & 3u;
  let q = c & 3u;
  let li = 16u * half + 8u * (t & 1u) + 2u * q;
  let hw = 32u + 8u * half + 2u * q;
  let ns = vec4<u32>(select(0u, 4u, t >= 2u));
  let hs = vec4<u32>(2u * t);
  let lo = ((bytes4(wd(wb, li)) >> ns) & vec4<u32>(15u)) | (((bytes4(wd(wb, hw)) >> hs) & vec4<u32>(3u)) << vec4<u32>(4u));
  let hi = ((bytes4(wd(wb, li + 1u)) >> ns) & vec4<u32>(15u)) | (((bytes4(wd(wb, hw + 1u)) >> hs) & vec4<u32>(3u)) << vec4<u32>(4u));
  let i = 8u * half + 2u * t + (q >> 1u);
  let sw = select(select(h.s3, h.s2, i < 12u), select(h.s1, h.s0, i < 4u), i < 8u);
  let sc = bitcast<i32>(sw << (24u - (i & 3u) * 8u)) >> 24u;
  let ds = h.d * f32(sc);
  return Dq((vec4<f32>(lo) - 32.0) * ds, (vec4<f32>(hi) - 32.0) * ds);
}

fn gguf_xoff(c: u32) -> vec2<u32> {
  let o = 32u * (c >> 4u) + 8u * ((c >> 2u) & 3u) + 2u * (c & 3u);
  return vec2<u32>(o, o + 1u);
}
