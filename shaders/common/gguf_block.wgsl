// What the GGUF format fragments (common/gguf_<type>.wgsl) read blocks with; shared by matmul_gguf
// and embed_gguf, each of which declares the `qw` binding as u32s (block words tiled by 8 rows, by
// 16-byte words where BW is a multiple of 4, see src/quant/gguf-pack.ts).

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

// The h-plane word of block b of row n (formats with HPLANE; 0 otherwise).
fn gguf_hword(n: u32, b: u32, nb: u32) -> u32 {
  if (HPLANE) {
    return hplane[((n >> 3u) * nb + b) * 8u + (n & 7u)];
  }
  return 0u;
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
