// The tiled weight layout every matrix kernel reads (the "offline reshuffle", done at load time).
// A row of k elements is cut into 16-byte words (EPW elements each, the last one zero-padded) and
// rows are grouped in tiles of 8: word i of row n lives at ((n / 8) · kw + i) · 8 + n % 8.
// Why: a thread computes whole rows, so each thread streams its own row while the 8 consecutive
// rows of a tile sit side by side; a SIMD group of 8 lanes (a CPU adapter's vector, part of a
// GPU warp) then reads 128 contiguous bytes per step instead of 8 rows a row-length apart.
fn tiled_word(n: u32, i: u32, kw: u32) -> u32 {
  return ((n >> 3u) * kw + i) * 8u + (n & 7u);
}
