enable subgroups;
// RMSNorm folded into a matmul's prologue (the `_rms` variants of matmul_gemm and matmul_q4 at one
// row of X per workgroup): the kernel reads the raw residual row and multiplies each x[k] it loads
// by rsqrt(mean(x²) + eps) · w[k], the value shaders/rmsnorm.wgsl would have written (norm weights
// of Gemma's (1 + w) convention arrive with the 1 already added at load). Saves the rmsnorm
// dispatch, which on a CPU adapter costs more than the work: X is one row, cache-resident.
// The kernel declares `p` (with `k` and `norm_eps`), its X binding and `fn x_elem(i) -> f32`, and
// passes RMS_BINDING, the binding index of the norm weight, as a const.
// Mean square: summed in exactly rmsnorm's order, so the normed x is bit-equal to what rmsnorm
// writes and a row's result does not depend on whether its step folded (one row) or not (a batch):
// rmsnorm's 64 threads each sum the strided elements t, t + 64, ... and the 64 partials are then
// added in sequence. Here each subgroup lane computes the partials t = lane, lane + width, ... and
// the 64 are added in order through subgroupShuffle: no workgroup memory and no barrier, which on
// llvmpipe would make the whole shader a coroutine with its loop state in memory.

@group(0) @binding(RMS_BINDING) var<storage, read> rms_w: array<f32>;

var<private> rms_inv: f32;
// rmsnorm's threads per row, whose partial sums the fold reproduces.
const RMS_PARTIALS: u32 = 64u;

// Called at the top of `main` in uniform control flow with every invocation active.
fn rms_begin(row: u32) {
  let lane = subgroupExclusiveAdd(1u);
  let width = subgroupAdd(1u);
  let base = row * p.k;
  // partial[i] is rmsnorm's partial t = lane + i * width (WebGPU subgroups have at least 4 lanes).
  var partial: array<f32, 16>;
  for (var i = 0u; i < 16u; i++) {
    let t = lane + i * width;
    var ss = 0.0;
    if (t < RMS_PARTIALS) {
      for (var j = t; j < p.k; j += RMS_PARTIALS) {
        let v = x_elem(base + j);
        ss += v * v;
      }
    }
    partial[i] = ss;
  }
  var total = 0.0;
  for (var t = 0u; t < RMS_PARTIALS; t++) {
    total += subgroupShuffle(partial[t / width], t % width);
  }
  rms_inv = inverseSqrt(total / f32(p.k) + p.norm_eps);
}

// x[k] of the row, normed: (x · inv) · w[k], rounded as rmsnorm rounds it.
fn rms_apply(v: f32, k: u32) -> f32 {
  return v * rms_inv * rms_w[k];
}

// x[k .. k + 3] of the row, normed.
fn rms_apply4(v: vec4<f32>, k: u32) -> vec4<f32> {
  return v * rms_inv * vec4<f32>(rms_w[k], rms_w[k + 1u], rms_w[k + 2u], rms_w[k + 3u]);
}
