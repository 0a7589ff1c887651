// matmul_gguf: Y[m, col_offset + n] (+)= X[m, :] · W[n, :] (+ bias[col_offset + n]) for the rows
// n of one part of a weight kept in a GGUF block format (src/quant/gguf-pack.ts), dequantized in
// registers, never in memory.
//
// Module constants prepended by src/kernels/matmul-gguf.ts (the pipeline label names them all):
//   WG threads per workgroup; R output rows per thread (rows n0 + WG·r, so 8 consecutive lanes
//   stay on one 8-row tile of the layout and read 32 contiguous bytes per word); MT rows of X per
//   workgroup (each decoded weight is used MT times).
// And with common/gguf_block.wgsl (Dq, wd, bytes4) and one format fragment, shaders/common/gguf_<type>.wgsl, which defines:
//   BK elements per block, BW u32 words per block in `qw`, DPLANE (the block's f16 d lives in the
//   `dplane` binding), NCH chunks of 8 elements per block, `struct Head` and
//   HPLANE (a u32 of the block, `hw`, lives in the `hplane` binding),
//   `gguf_head(wb, d, hw) -> Head` (what a block's chunks share: scales, offsets, high bits),
//   `gguf_dq(wb, h, c) -> Dq` (chunk c's 8 weights as two vec4s) and `gguf_xoff(c) -> vec2<u32>`
//   (the vec4 indices, within the block, of the X those two vec4s multiply). A fragment reads
//   word w of the block at `wb` with `wd(wb, w)`.
//
// Bindings: params (uniform); qw: block words, tiled by 8 rows (gguf_wbase and wd in
// common/gguf_block.wgsl; NB blocks per row); dplane: f16 d of (n, b) in half b%2 of u32
// ((n/8)·⌈NB/2⌉ + b/2)·8 + n%8 (a placeholder without DPLANE); x [m, k] f32; y [m, n_total] f32;
// bias [n_total] f32 (a placeholder when flags bit 0 is clear); hplane: the u32 of (n, b) at
// ((n/8)·NB + b)·8 + n%8 (a placeholder without HPLANE).
//
// Every weight is formed in f32 from the block's exact small integers and f16/six-bit scales, and
// every product and sum is f32: per chunk two 4-element dots, added into one accumulator per
// (row, X row) in block order.

struct Params {
  m: u32,
  // rows of this part
  n_part: u32,
  k: u32,
  // row stride of y (all parts)
  n_total: u32,
  col_offset: u32,
  grid_x: u32,
  // bit 0: add bias; bit 1: accumulate into y (residual add)
  flags: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> qw: array<u32>;
@group(0) @binding(2) var<storage, read> dplane: array<u32>;
@group(0) @binding(3) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
@group(0) @binding(5) var<storage, read> bias: array<f32>;
@group(0) @binding(6) var<storage, read> hplane: array<u32>;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) t: u32) {
  let tile = wid.y * p.grid_x + wid.x;
  let n0 = tile * (WG * R) + t;
  let m0 = wid.z * MT;
  let nb = p.k / BK;
  let kv = p.k / 4u;
  // Rows past the part read its last padded row (never written), so the loop needs no guard.
  let last_row = ((p.n_part + 7u) / 8u) * 8u - 1u;
  var rb: array<u32, R>;
  var db: array<u32, R>;
  var rn: array<u32, R>;
  for (var r = 0u; r < R; r++) {
    let nr = min(n0 + r * WG, last_row);
    rn[r] = nr;
    rb[r] = gguf_wbase(nr, 0u, nb);
    db[r] = (nr >> 3u) * ((nb + 1u) / 2u) * 8u + (nr & 7u);
  }
  // X rows past M read row M − 1 (their results are not written).
  var xr: array<u32, MT>;
  for (var m = 0u; m < MT; m++) {
    xr[m] = min(m0 + m, p.m - 1u) * kv;
  }
  var acc: array<array<f32, MT>, R>;
  for (var r = 0u; r < R; r++) {
    for (var m = 0u; m < MT; m++) {
      acc[r][m] = 0.0;
    }
  }
  for (var b = 0u; b < nb; b++) {
    var hd: array<Head, R>;
    var wb: array<u32, R>;
    for (var r = 0u; r < R; r++) {
      wb[r] = rb[r] + b * BW * 8u;
      var d = 0.0;
      if (DPLANE) {
        let pair = unpack2x16float(dplane[db[r] + (b >> 1u) * 8u]);
        d = select(pair.x, pair.y, (b & 1u) == 1u);
      }
      hd[r] = gguf_head(wb[r], d, gguf_hword(rn[r], b, nb));
    }
    let xb = b * (BK / 4u);
    for (var c = 0u; c < NCH; c++) {
      let xo = gguf_xoff(c);
      var xl: array<vec4<f32>, MT>;
      var xh: array<vec4<f32>, MT>;
      for (var m = 0u; m < MT; m++) {
        xl[m] = x[xr[m] + xb + xo.x];
        xh[m] = x[xr[m] + xb + xo.y];
      }
      for (var r = 0u; r < R; r++) {
        let w = gguf_dq(wb[r], hd[r], c);
        for (var m = 0u; m < MT; m++) {
          acc[r][m] += dot(w.lo, xl[m]) + dot(w.hi, xh[m]);
        }
      }
    }
  }
  for (var r = 0u; r < R; r++) {
    let n = n0 + r * WG;
    if (n < p.n_part) {
      let col = p.col_offset + n;
      for (var m = 0u; m < MT; m++) {
        if (m0 + m < p.m) {
          let idx = (m0 + m) * p.n_total + col;
          var v = acc[r][m];
          if ((p.flags & 1u) != 0u) {
            v += bias[col];
          }
          if ((p.flags & 2u) != 0u) {
            v += y[idx];
          }
          y[idx] = v;
        }
      }
    }
  }
}
