// K-split fragment of matmul_q4_gemv for KS > 1: the KS slices of a workgroup each summed every
// KS-th block of groups of the same rows; slice 0 adds the others' partial sums, in slice order
// (a fixed order: the result does not depend on scheduling).
// The thread's K slice.
fn k_slice(t: u32) -> u32 {
  return t / RT;
}

var<workgroup> k_part: array<f32, WG * TN>;

fn k_merge(t: u32, ks: u32, tr: u32) {
  for (var r = 0u; r < TN; r++) {
    k_part[r * WG + t] = acc[r];
  }
  workgroupBarrier();
  if (ks == 0u) {
    for (var r = 0u; r < TN; r++) {
      var v = acc[r];
      for (var s = 1u; s < KS; s++) {
        v += k_part[r * WG + s * RT + tr];
      }
      acc[r] = v;
    }
  }
}
