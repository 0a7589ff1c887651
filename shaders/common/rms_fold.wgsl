enable subgroups;
// RMSNorm folded into a matmul's prologue (the `_rms` variants of matmul_gemm and matmul_q4 at one
// row of X per workgroup): the kernel reads the raw residual row and multiplies each x[k] it loads
// by rsqrt(mean(x²) + eps) · w[k], the value shaders/rmsnorm.wgsl would have written (norm weights
// of Gemma's (1 + w) convention arrive with the 1 already added at load). Saves the rmsnorm
// dispatch, which on a CPU adapter costs more than the work: X is one row, cache-resident.
// The kernel declares `p` (with `k` and `norm_eps`), its X binding and `fn x_elem(i) -> f32`, and
// passes RMS_BINDING, the binding index of the norm weight, as a const.
// Mean square: each subgroup sums the row itself (lane j takes k = j, j + width, ...; then one
// subgroupAdd), so no workgroup memory and no barrier, which on llvmpipe would make the whole
// shader a coroutine with its loop state in memory. Only the order of that f32 sum differs from
// rmsnorm's (64 strided partials added in sequence); see src/kernels/rms-fold.ts for the bound.

@group(0) @binding(RMS_BINDING) var<storage, read> rms_w: array<f32>;

var<private> rms_inv: f32;

// Called at the top of `main` in uniform control flow with every invocation active.
fn rms_begin(row: u32) {
  let lane = subgroupExclusiveAdd(1u);
  let width = subgroupAdd(1u);
  let base = row * p.k;
  var ss = 0.0;
  for (var j = lane; j < p.k; j += width) {
    let v = x_elem(base + j);
    ss += v * v;
  }
  rms_inv = inverseSqrt(subgroupAdd(ss) / f32(p.k) + p.norm_eps);
}

// x[k] of the row, normed: (x · inv) · w[k], rounded as rmsnorm rounds it.
fn rms_apply(v: f32, k: u32) -> f32 {
  return v * rms_inv * rms_w[k];
}

// x[k .. k + 3] of the row, normed.
fn rms_apply4(v: vec4<f32>, k: u32) -> vec4<f32> {
  return v * rms_inv * vec4<f32>(rms_w[k], rms_w[k + 1u], rms_w[k + 2u], rms_w[k + 3u]);
}
