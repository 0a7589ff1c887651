// matmul_q4_gemv: y[col_offset + n] (+)= x · W[n, :] (+ bias[col_offset + n]) for one row of X
// (decode, M = 1) and the rows n of one part of an int4 group-wise weight: the same weights,
// bindings and epilogue as shaders/matmul_q4.wgsl, without its machinery for several rows of X
// (MT, staged chunks), and with K optionally split inside the workgroup.
//
// Module constants prepended by src/kernels/matmul-q4-gemv.ts (the pipeline label names them):
//   WG    threads per workgroup;
//   KS    slices of K per workgroup: the RT = WG / KS threads of a slice own the workgroup's rows,
//         slice s sums groups s, s + KS, ..., and common/q4v_k_split.wgsl adds the slices up in
//         workgroup memory (KS = 1, common/q4v_k_whole.wgsl: no barrier, no merge). A GPU wants
//         more threads than a decode matmul has rows (896 rows are 14 workgroups of 64 threads
//         for 132 SMs), so KS multiplies the threads per row without a second dispatch;
//   TN    weight rows per thread (rows n0 + RT·r: the 8 lanes of a SIMD group read one 8-row
//         tile of the layout, 128 contiguous bytes, per step);
//   GS, ASYM, F16S  the format, as in matmul_q4.
// Prepended with an X fragment: common/q4v_x_subgroup.wgsl (lane j of 8 loads vec4 j of a
// word's 32 x, broadcast by subgroupBroadcast; KS = 1 only, its loops must stay subgroup-uniform)
// or common/q4v_x_direct.wgsl (every lane loads all 8: on a GPU the lanes of a slice read the same
// 128 bytes from cache), and a K-split fragment.
//
// Per group each thread accumulates the raw Σq·x of its TN rows as vec4s (codes masked in place,
// X pre-multiplied by X_SCALE = 16^-j, as in common/q4_dequant_f32.wgsl), then adds
// s·(Σq·x − z·Σx); scale and zero-point words (2 resp. 8 groups of a row) are loaded once.
//
// Measured on lavapipe (2 shared cores, min of 15 alternating rounds, g32 sym f16 scales): with
// KS = 1 and subgroup X it runs at matmul_q4's M = 1 speed (TN 4, WG 16: 2048 x 8192 2.14 vs
// 2.13 ms, 9728 x 896 1.24 vs 1.17, 3072 x 2048 0.86 vs 0.84), WG 8 or 16 well ahead of 32 or 64
// (2.1 vs 3.0 ms), TN 2 / 4 / 8 within 10%. There the kernel is bound by the dequant arithmetic:
// replacing mask, convert and multiply-add by one multiply-add per word ran 1.3-2.4x faster,
// while making the weight or X loads uniform (no per-lane load loop) changed nothing; unrolling
// 2 or 4 groups per loop step and converting codes as i32 were slower or equal.

struct Params {
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
@group(0) @binding(2) var<storage, read> scales: array<u32>;
@group(0) @binding(3) var<storage, read> zeros: array<u32>;
@group(0) @binding(4) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;
@group(0) @binding(6) var<storage, read> bias: array<f32>;

// The 8 vec4s of X one weight word multiplies (times X_SCALE), and the fragment's share of Σx.
struct XWord {
  v: array<vec4<f32>, 8>,
  share: vec4<f32>,
}

const WPG: u32 = GS / 32u;
const RT: u32 = WG / KS;
const X_SCALE = vec4<f32>(1.0, 0.0625, 0.00390625, 0.000244140625);
const NIB_MASK = vec4<u32>(0xfu, 0xf0u, 0xf00u, 0xf000u);

// Per row of the thread: first word, scale and zero-point indices; the cached f16-scale pair and
// zero-point octet words; the running sum.
var<private> wb: array<u32, TN>;
var<private> sb: array<u32, TN>;
var<private> zb: array<u32, TN>;
var<private> sw: array<u32, TN>;
var<private> zw: array<u32, TN>;
var<private> sw_at: u32;
var<private> zw_at: u32;
var<private> acc: array<f32, TN>;

// Codes of one u32, nibble j of each half at its place (q·16^j, exact in f32).
fn codes(u: u32, hi: bool) -> vec4<f32> {
  var m = vec4<u32>(u) & NIB_MASK;
  if (hi) {
    m = vec4<u32>(u >> 16u) & NIB_MASK;
  }
  return vec4<f32>(m);
}

fn group(g: u32) {
  var gd: array<vec4<f32>, TN>;
  for (var r = 0u; r < TN; r++) {
    gd[r] = vec4<f32>(0.0);
  }
  var share = vec4<f32>(0.0);
  for (var wi = 0u; wi < WPG; wi++) {
    let word = g * WPG + wi;
    let xw = x_word(word);
    share += xw.share;
    var w: array<vec4<u32>, TN>;
    for (var r = 0u; r < TN; r++) {
      w[r] = qw[wb[r] + word * 8u];
    }
    for (var r = 0u; r < TN; r++) {
      var d = gd[r];
      d = fma(codes(w[r].x, false), xw.v[0], d);
      d = fma(codes(w[r].x, true), xw.v[1], d);
      d = fma(codes(w[r].y, false), xw.v[2], d);
      d = fma(codes(w[r].y, true), xw.v[3], d);
      d = fma(codes(w[r].z, false), xw.v[4], d);
      d = fma(codes(w[r].z, true), xw.v[5], d);
      d = fma(codes(w[r].w, false), xw.v[6], d);
      d = fma(codes(w[r].w, true), xw.v[7], d);
      gd[r] = d;
    }
  }
  let sx = x_sum(share);
  // Scale and zero-point words hold 2 resp. 8 groups of a row: loaded when the group leaves them.
  if (F16S && (g >> 1u) != sw_at) {
    sw_at = g >> 1u;
    for (var r = 0u; r < TN; r++) {
      sw[r] = scales[sb[r] + sw_at * 8u];
    }
  }
  if (ASYM && (g >> 3u) != zw_at) {
    zw_at = g >> 3u;
    for (var r = 0u; r < TN; r++) {
      zw[r] = zeros[zb[r] + zw_at * 8u];
    }
  }
  for (var r = 0u; r < TN; r++) {
    var s: f32;
    if (F16S) {
      let pair = unpack2x16float(sw[r]);
      s = select(pair.x, pair.y, (g & 1u) == 1u);
    } else {
      s = bitcast<f32>(scales[sb[r] + g * 8u]);
    }
    var z = 8u;
    if (ASYM) {
      z = (zw[r] >> ((g & 7u) * 4u)) & 15u;
    }
    let d = gd[r];
    acc[r] += s * ((d.x + d.y) + (d.z + d.w)) - (s * f32(z)) * sx;
  }
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) t: u32) {
  x_init();
  let tile = wid.y * p.grid_x + wid.x;
  let ks = k_slice(t);
  let tr = t % RT;
  let n0 = tile * (RT * TN) + tr;
  let kw = p.k / 32u;
  let groups = p.k / GS;
  // Rows past the padded part read its last row (never written), so the loop needs no guard.
  let last_row = ((p.n_part + 7u) / 8u) * 8u - 1u;
  for (var r = 0u; r < TN; r++) {
    let nr = min(n0 + r * RT, last_row);
    wb[r] = (nr >> 3u) * kw * 8u + (nr & 7u);
    if (F16S) {
      sb[r] = (nr >> 3u) * ((groups + 1u) / 2u) * 8u + (nr & 7u);
    } else {
      sb[r] = (nr >> 3u) * groups * 8u + (nr & 7u);
    }
    zb[r] = (nr >> 3u) * ((groups + 7u) / 8u) * 8u + (nr & 7u);
    acc[r] = 0.0;
  }
  sw_at = 0xffffffffu;
  zw_at = 0xffffffffu;
  for (var g = ks; g < groups; g += KS) {
    group(g);
  }
  k_merge(t, ks, tr);
  if (ks == 0u) {
    for (var r = 0u; r < TN; r++) {
      let n = n0 + r * RT;
      if (n < p.n_part) {
        let col = p.col_offset + n;
        var v = acc[r];
        if ((p.flags & 1u) != 0u) {
          v += bias[col];
        }
        if ((p.flags & 2u) != 0u) {
          v += y[col];
        }
        y[col] = v;
      }
    }
  }
}
