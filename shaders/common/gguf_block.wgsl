// What the GGUF format fragments (common/gguf_<type>.wgsl) read blocks with; shared by matmul_gguf
// and embed_gguf, each of which declares the `qw` binding (block words tiled by 8 rows, see
// src/quant/gguf-pack.ts).

// Chunk c of a block: 8 weights as two vec4s, multiplied by X at gguf_xoff(c).
struct Dq {
  lo: vec4<f32>,
  hi: vec4<f32>,
}

// Word w of the block whose word 0 is at `wb` (the 8 rows of a tile interleave word by word).
fn wd(wb: u32, w: u32) -> u32 {
  return qw[wb + w * 8u];
}

// The four bytes of a word as a vec4 (byte i in lane i).
fn bytes4(w: u32) -> vec4<u32> {
  return (vec4<u32>(w) >> vec4<u32>(0u, 8u, 16u, 24u)) & vec4<u32>(255u);
}
