// gptq_gemm_t{TM}x{TN}: C(a, b) = alpha · Σ_{k < kend} A(a, k) · B[b, k] (+ C(a, b) when flags bit
// 0), the one matrix product of the GPU GPTQ solve (src/kernels/gptq.ts), which uses it for the
// Hessian 2·XᵀX/n, the left-looking panel updates of the Cholesky factorization and the lazy
// batched updates of the column sweep. Prepended with common/broadcast8.wgsl and the constants
//   TM  A indices per workgroup (every thread computes all of them),
//   TN  B indices per thread (b = first + 64·r),
// as `const`s, so the loops over TM, TN and the 8 k of a step unroll into straight-line code.
//
// Operands are addressed by strides, so one kernel serves every layout the solve needs without
// transposes: A(a, k) = a_buf[a_off + a·a_sa + k·a_sk] and C(a, b) = c_buf[c_off + a·c_sa + b·c_sb],
// with strides as u32 that may wrap (a "negative" stride is its two's complement: u32 arithmetic
// wraps modulo 2^32, so the sum is the intended index). That is how the Hessian is written straight
// into the reversed order the factorization wants, and how the sweep reads V = J·L·J from the
// reversed factor L. B rows are contiguous in k (b_buf[b_off + b·ldb + k], b_off and ldb multiples
// of 4) and read as vec4s. kend must be a multiple of 8; out-of-range a or b read a valid row and
// are not written.
//
// Why this shape (the same reasoning as shaders/matmul_gemm.wgsl, measured there on lavapipe, where
// a subgroup is one 8-wide SIMD register and every lane's load is a separate scalar load): per step
// of 8 k, lane ℓ of each 8 loads A(a, k + ℓ) for the TM values of a (TM scalar loads), and the 8
// values reach every lane by subgroupBroadcast from lanes 0..7 (register shuffles; all lanes of the
// workgroup share the same a, so wider subgroups hold copies); each lane loads two vec4s of B for
// each of its TN rows. A step is then TM·TN·8 multiply-adds for TM + 2·TN loads.
//
// flags bit 1 ("lower"): only C(a, b) with b ≥ a is wanted (a symmetric or triangular result); a
// workgroup whose every b is below its every a returns at once, and no entry with b < a is written.
//
// Bindings: params, a, b, c (a and b may be the same buffer: the Hessian reads X on both sides, the
// Cholesky panel update the factor; C is always another one, as WebGPU forbids a buffer bound both
// writable and readable in one dispatch).

struct Params {
  na: u32,
  nb: u32,
  kend: u32,
  // bit 0: accumulate into C; bit 1: lower (see above)
  flags: u32,
  a_off: u32,
  a_sa: u32,
  a_sk: u32,
  // in f32 elements (a multiple of 4)
  b_off: u32,
  ldb: u32,
  c_off: u32,
  c_sa: u32,
  c_sb: u32,
  alpha: f32,
  // workgroups along B in grid y (the rest wrap into grid z)
  grid_y: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a_buf: array<f32>;
@group(0) @binding(2) var<storage, read> b_buf: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> c_buf: array<f32>;

const WG: u32 = 64u;

@compute @workgroup_size(64)
fn main(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(local_invocation_index) t: u32,
  @builtin(subgroup_invocation_id) sg_lane: u32,
) {
  let lane = sg_lane & 7u;
  let a0 = wid.x * TM;
  let first = (wid.z * p.grid_y + wid.y) * WG * TN;
  let lower = (p.flags & 2u) != 0u;
  // Uniform across the workgroup, so the early return keeps the broadcasts in uniform control flow.
  if (first >= p.nb || (lower && first + WG * TN <= a0)) {
    return;
  }
  var brow: array<u32, TN>;
  for (var r = 0u; r < TN; r++) {
    brow[r] = (p.b_off + min(first + t + WG * r, p.nb - 1u) * p.ldb) / 4u;
  }
  var arow: array<u32, TM>;
  for (var m = 0u; m < TM; m++) {
    arow[m] = p.a_off + min(a0 + m, p.na - 1u) * p.a_sa + lane * p.a_sk;
  }
  var acc: array<array<f32, TM>, TN>;
  for (var r = 0u; r < TN; r++) {
    for (var m = 0u; m < TM; m++) {
      acc[r][m] = 0.0;
    }
  }
  let step = 8u * p.a_sk;
  var koff = 0u;
  for (var k = 0u; k < p.kend; k += 8u) {
    var av: array<array<f32, 8>, TM>;
    for (var m = 0u; m < TM; m++) {
      av[m] = broadcast8(a_buf[arow[m] + koff]);
    }
    for (var r = 0u; r < TN; r++) {
      let w0 = b_buf[brow[r] + k / 4u];
      let w1 = b_buf[brow[r] + k / 4u + 1u];
      for (var m = 0u; m < TM; m++) {
        let x = av[m];
        acc[r][m] += ((w0.x * x[0] + w0.y * x[1]) + (w0.z * x[2] + w0.w * x[3])) +
          ((w1.x * x[4] + w1.y * x[5]) + (w1.z * x[6] + w1.w * x[7]));
      }
    }
    koff += step;
  }
  let accumulate = (p.flags & 1u) != 0u;
  for (var r = 0u; r < TN; r++) {
    let b = first + t + WG * r;
    for (var m = 0u; m < TM; m++) {
      let a = a0 + m;
      if (b < p.nb && a < p.na && (!lower || b >= a)) {
        let i = p.c_off + a * p.c_sa + b * p.c_sb;
        var v = p.alpha * acc[r][m];
        if (accumulate) {
          v += c_buf[i];
        }
        c_buf[i] = v;
      }
    }
  }
}
