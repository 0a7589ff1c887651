// matmul_gguf_vec4: Y[m, col_offset + n] (+)= X[m, :] · W[n, :] (+ bias[col_offset + n]) for the
// rows n of one part of a weight in a GGUF block format (every format's words tile by 16 bytes,
// src/quant/gguf-pack.ts), decoded in registers, never in memory.
//
// Module constants prepended by src/kernels/matmul-gguf.ts (the pipeline label names them all):
//   WG threads per workgroup; R output rows per thread (rows n0 + WG·r, so the 8 lanes of a SIMD
//   group stay on one 8-row tile and read 128 contiguous bytes per 16-byte load); MT rows of X per
//   workgroup (every decoded code is used MT times).
// Prepended with an X fragment (common/gguf_x_subgroup.wgsl: each lane loads one vec4 of a step's
// 8 and broadcasts it through the subgroup; common/gguf_x_direct.wgsl: each lane loads all 8; both
// define x_init and x_step) and a format fragment, common/gguf_vec4_<type>.wgsl, which defines:
//   BK elements per block, BV 16-byte words per block, DPLANE (the block's f16 d lives in the
//   `dplane` binding), HW (u32s of the block in the `hplane` binding, passed as `hv`, zeros past
//   HW), NG groups per block of GS steps of 32 elements, HAS_MIN (codes carry an
//   offset, applied through Σx), `struct Head` and `gv_head(vb, d, hv)` (what the block's groups share: scales,
//   high bits; loaded and decoded once per block), `struct Grp` and `gv_group(vb, g)` (the 16-byte
//   words group g's codes come from), `gv_codes(h, w, g, s, i)` (elements 32·(g·GS + s) + 4i..+3
//   of the block as exact small integers in f32, straight from the bits or a table) and
//   `gv_scales(h, g, s)` (a0, a1, b0, b1: the step adds a0·Σ_{i<4} codes·x + a1·Σ_{i≥4} codes·x
//   + b0·Σ_{i<4} x + b1·Σ_{i≥4} x, so an offset such as Q4_0's −8 or Q4_K's −dmin·m costs one
//   multiply-add per step instead of one subtraction per weight). A fragment reads 16-byte word i
//   of the block at `vb` with `qv(vb, i)`, and bit fields of a word's bytes with `bits4`.
//
// Bindings: params (uniform); qw: block words as vec4s, 16-byte word v of block b of row n at
// ((n/8)·NB·BV + b·BV + v)·8 + n%8 (NB blocks per row); dplane: f16 d of (n, b) in half b%2 of u32
// ((n/8)·⌈NB/2⌉ + b/2)·8 + n%8 (a placeholder without DPLANE); x [m, k] f32; y [m, n_total] f32;
// bias [n_total] f32 (a placeholder when flags bit 0 is clear); hplane: u32 j of (n, b) at
// ((n/8)·NB·HW + b·HW + j)·8 + n%8 (a placeholder where HW = 0).
//
// Work per 32-element step and thread: X's 8 vec4s per row of X (one load per lane and 8
// broadcasts on the subgroup path), then per output row the codes (shift, mask, convert: no scale
// multiply per weight), two vec4 multiply-add chains and four scalar multiply-adds into the
// accumulator. Every product and sum is f32 and the codes and scales are exact, so per term at
// most 4 (chain, or Σx's adds) + 2 (horizontal add) + 1 roundings happen before the accumulator,
// which takes 4 per step; the bound of test/kernels/matmul-gguf.test.ts (K/8 + 10 roundings over
// terms of at most 3·max|w| of the block) holds.
// Measured on lavapipe, where each lane's load is a separate scalar load inside a loop: the first
// kernel (a u32 of codes per 8 weights, gone since every format has a fragment here) made 3 loads
// per 8 weights (a u32 of codes and two vec4s of X); this one makes about one 16-byte load per 32
// weights plus one per step for X.

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
@group(0) @binding(1) var<storage, read> qw: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> dplane: array<u32>;
@group(0) @binding(3) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
@group(0) @binding(5) var<storage, read> bias: array<f32>;
@group(0) @binding(6) var<storage, read> hplane: array<u32>;

// 16-byte word i of the block whose word 0 is at `vb` (a tile's 8 rows interleave by 16 bytes).
fn qv(vb: u32, i: u32) -> vec4<u32> {
  return qw[vb + i * 8u];
}

// Bits sh.. sh + width of each of the four bytes of w (byte i in lane i; mask = 2^width − 1): one
// vector shift and one AND.
fn bits4(w: u32, sh: u32, mask: u32) -> vec4<u32> {
  return (vec4<u32>(w) >> (vec4<u32>(0u, 8u, 16u, 24u) + sh)) & vec4<u32>(mask);
}

fn hsum(v: vec4<f32>) -> f32 {
  return (v.x + v.y) + (v.z + v.w);
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) t: u32) {
  x_init();
  let tile = wid.y * p.grid_x + wid.x;
  let n0 = tile * (WG * R) + t;
  let m0 = wid.z * MT;
  let nb = p.k / BK;
  let kv = p.k / 4u;
  // Rows past the part read its last padded row (never written), so the loop needs no guard.
  let last_row = ((p.n_part + 7u) / 8u) * 8u - 1u;
  var rb: array<u32, R>;
  var db: array<u32, R>;
  var hb: array<u32, R>;
  for (var r = 0u; r < R; r++) {
    let nr = min(n0 + r * WG, last_row);
    rb[r] = (nr >> 3u) * nb * BV * 8u + (nr & 7u);
    db[r] = (nr >> 3u) * ((nb + 1u) / 2u) * 8u + (nr & 7u);
    hb[r] = (nr >> 3u) * nb * HW * 8u + (nr & 7u);
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
    var vb: array<u32, R>;
    for (var r = 0u; r < R; r++) {
      vb[r] = rb[r] + b * BV * 8u;
      var d = 0.0;
      if (DPLANE) {
        let pair = unpack2x16float(dplane[db[r] + (b >> 1u) * 8u]);
        d = select(pair.x, pair.y, (b & 1u) == 1u);
      }
      var hv = vec4<u32>(0u);
      for (var j = 0u; j < HW; j++) {
        hv[j] = hplane[hb[r] + (b * HW + j) * 8u];
      }
      hd[r] = gv_head(vb[r], d, hv);
    }
    for (var g = 0u; g < NG; g++) {
      var gw: array<Grp, R>;
      for (var r = 0u; r < R; r++) {
        gw[r] = gv_group(vb[r], g);
      }
      for (var s = 0u; s < GS; s++) {
        let xo = b * (BK / 4u) + (g * GS + s) * 8u;
        var xs: array<array<vec4<f32>, 8>, MT>;
        // Σx over vec4s 0..3 and 4..7 of the step, per row of X.
        var sx: array<vec2<f32>, MT>;
        for (var m = 0u; m < MT; m++) {
          xs[m] = x_step(xr[m] + xo);
          sx[m] = vec2<f32>(0.0);
          if (HAS_MIN) {
            let v = xs[m];
            sx[m] = vec2<f32>(hsum((v[0] + v[1]) + (v[2] + v[3])), hsum((v[4] + v[5]) + (v[6] + v[7])));
          }
        }
        for (var r = 0u; r < R; r++) {
          let sc = gv_scales(hd[r], g, s);
          // Written out: the vec4 index must be a constant (a local array indexed by a loop
          // variable may live in memory on llvmpipe if the loop is not unrolled).
          let q0 = gv_codes(hd[r], gw[r], g, s, 0u);
          let q1 = gv_codes(hd[r], gw[r], g, s, 1u);
          let q2 = gv_codes(hd[r], gw[r], g, s, 2u);
          let q3 = gv_codes(hd[r], gw[r], g, s, 3u);
          let q4 = gv_codes(hd[r], gw[r], g, s, 4u);
          let q5 = gv_codes(hd[r], gw[r], g, s, 5u);
          let q6 = gv_codes(hd[r], gw[r], g, s, 6u);
          let q7 = gv_codes(hd[r], gw[r], g, s, 7u);
          for (var m = 0u; m < MT; m++) {
            let xm = xs[m];
            let lo = fma(q3, xm[3], fma(q2, xm[2], fma(q1, xm[1], q0 * xm[0])));
            let hi = fma(q7, xm[7], fma(q6, xm[6], fma(q5, xm[5], q4 * xm[4])));
            var a = fma(sc.x, hsum(lo), acc[r][m]);
            a = fma(sc.y, hsum(hi), a);
            if (HAS_MIN) {
              a = fma(sc.z, sx[m].x, a);
              a = fma(sc.w, sx[m].y, a);
            }
            acc[r][m] = a;
          }
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
