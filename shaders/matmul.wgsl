// matmul_{f32,f16,bf16}: Y[m, col_offset + n] (+)= X[m, :] · W[n, :] (+ bias[col_offset + n])
// for the rows n of one weight part (big tensors are split across buffers by output rows).
// Prepended with a weight fragment (common/weight_*.wgsl) that defines WWord and load_w.
//
// Bindings: params (uniform), weights [n_part, k] (WWord), x [m, k] f32, y [m, n_total] f32,
// bias [n_total] f32 (a 4-byte placeholder when flags bit 0 is clear).
// Work: a 64-thread workgroup owns 8 output columns × 8 input rows; 8 lanes per column stride
// over k (adjacent lanes read adjacent weights, in pairs when k is even), each weight element is
// read once per 8 rows, and a 3-level workgroup-memory tree sums the lanes. The correct baseline
// that the "Seed kernels" flat GEMM replaces; every m, n, k.

struct Params {
  m: u32,
  k: u32,
  n_part: u32,
  n_total: u32,
  col_offset: u32,
  grid_x: u32,
  // bit 0: add bias; bit 1: accumulate into y (residual add)
  flags: u32,
  _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> weights: array<WWord>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;

const WG: u32 = 64u;
const LANES: u32 = 8u;
const TN: u32 = 8u;
const TM: u32 = 8u;

var<workgroup> partial: array<array<f32, TM>, WG>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) t: u32) {
  let group = wid.y * p.grid_x + wid.x;
  let col = t / LANES;
  let lane = t % LANES;
  let n = group * TN + col;
  let m0 = wid.z * TM;
  let rows = min(TM, p.m - m0);
  var acc: array<f32, TM>;
  if (n < p.n_part) {
    let wbase = n * p.k;
    if ((p.k & 1u) == 0u) {
      // Even k: every row starts on a word, so each lane takes element pairs (one 16-bit word).
      for (var kk = 2u * lane; kk < p.k; kk += 2u * LANES) {
        let w2 = load_w2(wbase + kk);
        for (var r = 0u; r < rows; r++) {
          let xi = (m0 + r) * p.k + kk;
          acc[r] += w2.x * x[xi] + w2.y * x[xi + 1u];
        }
      }
    } else {
      for (var kk = lane; kk < p.k; kk += LANES) {
        let wv = load_w(wbase + kk);
        for (var r = 0u; r < rows; r++) {
          acc[r] += wv * x[(m0 + r) * p.k + kk];
        }
      }
    }
  }
  for (var r = 0u; r < TM; r++) {
    partial[t][r] = acc[r];
  }
  workgroupBarrier();
  for (var s = LANES / 2u; s > 0u; s >>= 1u) {
    if (lane < s) {
      for (var r = 0u; r < rows; r++) {
        partial[t][r] += partial[t + s][r];
      }
    }
    workgroupBarrier();
  }
  if (lane < rows && n < p.n_part) {
    let out_col = p.col_offset + n;
    let idx = (m0 + lane) * p.n_total + out_col;
    var v = partial[col * LANES][lane];
    if ((p.flags & 1u) != 0u) {
      v += bias[out_col];
    }
    if ((p.flags & 2u) != 0u) {
      v += y[idx];
    }
    y[idx] = v;
  }
}
