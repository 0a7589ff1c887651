// K-split fragment of matmul_q4_gemv for KS = 1: each thread walks all of K, nothing to merge (and
// no barrier, which on a CPU adapter would turn the shader into a coroutine).
fn k_merge(t: u32, ks: u32, tr: u32) {}

// The thread's K slice: always 0 (a constant, so the loops stay subgroup-uniform).
fn k_slice(t: u32) -> u32 {
  return 0u;
}
