// matmul_{f32,f16,bf16}: Y[m, col_offset + n] (+)= X[m, :] · W[n, :] (+ bias[col_offset + n])
// for the rows n of one weight part (big tensors are split across buffers by output rows).
// Prepended with a weight fragment (common/weight_*.wgsl) that defines WWord and load_w.
//
// Bindings: params (uniform), weights [n_part, k] (WWord), x [m, k] f32, y [m, n_total] f32,
// bias [n_total] f32 (a 4-byte placeholder when flags bit 0 is clear).
// Work: one workgroup per (output column, 8 input rows); 64 threads stride over k, so each weight
// element is read once per 8 rows; a workgroup-memory tree sums the threads' partial dots.
// The baseline the "Seed kernels" flat GEMM replaces; correct for every m, n, k.

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
const TM: u32 = 8u;

var<workgroup> partial: array<array<f32, TM>, WG>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) t: u32) {
  let n = wid.y * p.grid_x + wid.x;
  if (n >= p.n_part) {
    return;
  }
  let m0 = wid.z * TM;
  let rows = min(TM, p.m - m0);
  var acc: array<f32, TM>;
  let wbase = n * p.k;
  for (var kk = t; kk < p.k; kk += WG) {
    let wv = load_w(wbase + kk);
    for (var r = 0u; r < rows; r++) {
      acc[r] += wv * x[(m0 + r) * p.k + kk];
    }
  }
  for (var r = 0u; r < TM; r++) {
    partial[t][r] = acc[r];
  }
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s >>= 1u) {
    if (t < s) {
      for (var r = 0u; r < TM; r++) {
        partial[t][r] += partial[t + s][r];
      }
    }
    workgroupBarrier();
  }
  if (t < rows) {
    let col = p.col_offset + n;
    let idx = (m0 + t) * p.n_total + col;
    var v = partial[0][t];
    if ((p.flags & 1u) != 0u) {
      v += bias[col];
    }
    if ((p.flags & 2u) != 0u) {
      v += y[idx];
    }
    y[idx] = v;
  }
}
