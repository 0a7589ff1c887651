// What the GGUF format fragments (common/gguf_<type>.wgsl) read blocks with, for embed_gguf, which
// declares the `qw` binding as u32s (block words tiled by 8 rows, by 16-byte words where BW is a
// multiple of 4, see src/quant/gguf-pack.ts). (matmul_gguf_vec4 has 16-byte fragments of its own,
// common/gguf_vec4_<type>.wgsl.)
// A format fragment defines: BK elements per block, BW u32 words per block in `qw`, DPLANE (the
// block's f16 d lives in the `dplane` binding), HW (u32s of the block in the `hplane` binding,
// zeros past HW in `hv`), NCH chunks of 8 elements per block, `struct Head`,
// `gguf_head(wb, d, hv) -> Head` (what a block's chunks share: scales, offsets, high bits),
// `gguf_dq(wb, h, c) -> Dq` (chunk c's 8 weights as two vec4s, each formed in f32 from the block's
// exact small integers and f16 / six-bit scales) and `gguf_xoff(c) -> vec2<u32>` (the vec4 indices,
// within the block, of the elements those two vec4s are). A fragment reads word w of the block at
// `wb` with `wd(wb, w)`.

// Chunk c of a block: 8 weights as two vec4s, multiplied by X at gguf_xoff(c).
struct Dq {
  lo: vec4<f32>,
  hi: vec4<f32>,
}

// The u32 index of word 0 of block b of row n (nb blocks per row).
fn gguf_wbase(n: u32, b: u32, nb: u32) -> u32 {
  let tile = ((n >> 3u) * nb * BW + b * BW) * 8u;
  if (BW % 4u == 0u) {
    return tile + (n & 7u) * 4u;
  }
  return tile + (n & 7u);
}

// The HW h-plane words of block b of row n (zeros past HW).
fn gguf_hwords(n: u32, b: u32, nb: u32) -> vec4<u32> {
  var hv = vec4<u32>(0u);
  for (var j = 0u; j < HW; j++) {
    hv[j] = hplane[(((n >> 3u) * nb + b) * HW + j) * 8u + (n & 7u)];
  }
  return hv;
}

// Word w of the block whose word 0 is at `wb` (the 8 rows of a tile interleave by 16-byte words
// or by words).
fn wd(wb: u32, w: u32) -> u32 {
  if (BW % 4u == 0u) {
    return qw[wb + (w >> 2u) * 32u + (w & 3u)];
  }
  return qw[wb + w * 8u];
}

// The four bytes of a word as a vec4 (byte i in lane i).
fn bytes4(w: u32) -> vec4<u32> {
  return (vec4<u32>(w) >> vec4<u32>(0u, 8u, 16u, 24u)) & vec4<u32>(255u);
}
