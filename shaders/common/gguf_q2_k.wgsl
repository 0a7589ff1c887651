// Format fragment of embed_gguf (see shaders/common/gguf_block.wgsl for the interface): Q2_K, d·(sc & 15)·q − dmin·(sc >> 4)
// per sub-block of 16. Words: 16 scale bytes (0..3), 64 bytes of 2-bit codes (4..19); d | dmin << 16
// in the h plane. Chunk c: half h = c/16, shift pair s = (c/4)%4, quarter q = c%4: code words 4 + 8h + 2q
// and + 1 at bits 2s, elements 128h + 32s + 8q..+7, sub-block 8h + 2s + q/2.
const BK: u32 = 256u;
const BW: u32 = 20u;
const DPLANE: bool = false;
const HW: u32 = 1u;
const NCH: u32 = 32u;

struct Head {
  d: f32,
  dmin: f32,
}

fn gguf_head(wb: u32, d: f32, hv: vec4<u32>) -> Head {
  let dm = unpack2x16float(hv.x);
  return Head(dm.x, dm.y);
}

fn gguf_dq(wb: u32, h: Head, c: u32) -> Dq {
  let half = c >> 4u;
  let s = (c >> 2u) & 3u;
  let q = c & 3u;
  let wi = 4u + 8u * half + 2u * q;
  let sh = vec4<u32>(2u * s);
  let lo = (bytes4(wd(wb, wi)) >> sh) & vec4<u32>(3u);
  let hi = (bytes4(wd(wb, wi + 1u)) >> sh) & vec4<u32>(3u);
  let i = 8u * half + 2u * s + (q >> 1u);
  let sc = (wd(wb, i >> 2u) >> ((i & 3u) * 8u)) & 255u;
  let dl = h.d * f32(sc & 15u);
  let ml = h.dmin * f32(sc >> 4u);
  return Dq(vec4<f32>(lo) * dl - ml, vec4<f32>(hi) * dl - ml);
}

fn gguf_xoff(c: u32) -> vec2<u32> {
  let o = 32u * (c >> 4u) + 8u * ((c >> 2u) & 3u) + 2u * (c & 3u);
  return vec2<u32>(o, o + 1u);
}
