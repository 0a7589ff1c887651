// gptq_chol: one panel of the blocked left-looking Cholesky factorization R = L·Lᵀ of the GPU
// GPTQ solve (src/kernels/gptq.ts), columns p0 .. p0 + w − 1. gptq_gemm has written the earlier
// columns' contribution, upd[i − p0, c] = −Σ_{k<p0} L[i, k]·L[p0 + c, k] for every row i from p0
// down (a separate buffer: WebGPU forbids writing the buffer a dispatch reads), so the panel is
// P = R[i, p0 + c] + upd[i − p0, c] (upd is unused for the first panel). This kernel factors the
// panel's w × w diagonal block and solves the rows below it against that factor:
// L[i, panel] = P[i, panel] · L_pp⁻ᵀ, in place of R. Only the lower triangle of r is read or written.
// Two dispatches per panel, by `mode`: 0 factors the diagonal block (one workgroup, in workgroup
// memory, w ≤ 64) and writes it back; 1 solves the rows below it, one thread per row by forward
// substitution, with the factored block (read back from r) in workgroup memory. One dispatch
// cannot do both: its other workgroups would read the block while workgroup 0 overwrites it.
// A pivot that is not positive (or not finite: tested on its bits, since WGSL lets a compiler
// assume no NaN) sets status bit 1: the damped Hessian is not positive definite.
// Bindings: params, r (n × n, row-major, factored in place), upd ([n − p0, 64]), status.

struct Params {
  n: u32,
  p0: u32,
  // panel width (64, or what is left at the end)
  w: u32,
  // 1 when upd holds the update (every panel but the first)
  has_upd: u32,
  // 0: factor the diagonal block; 1: solve the rows below it
  mode: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> r: array<f32>;
@group(0) @binding(2) var<storage, read> upd: array<f32>;
@group(0) @binding(3) var<storage, read_write> status: array<atomic<u32>>;

const NB: u32 = 64u;
const FLAG_NOT_PD: u32 = 2u;

var<workgroup> blk: array<f32, 4096>;

// Factors the panel's diagonal block P_pp = L_pp·L_ppᵀ (right-looking, one column per step:
// pivot, scale the column, update the trailing block) and writes L_pp back over it.
fn factor_block(t: u32, n: u32, p0: u32, w: u32, has_upd: bool) {
  if (t < w) {
    let src = (p0 + t) * n + p0;
    for (var c = 0u; c <= t; c++) {
      blk[t * NB + c] = r[src + c] + select(0.0, upd[t * NB + c], has_upd);
    }
  }
  for (var j = 0u; j < w; j++) {
    workgroupBarrier();
    if (t == 0u) {
      let d = blk[j * NB + j];
      let bits = bitcast<u32>(d);
      // Negative, zero, subnormal, infinite or NaN.
      if ((bits >> 31u) != 0u || (bits & 0x7f800000u) == 0u || (bits & 0x7f800000u) == 0x7f800000u) {
        atomicOr(&status[0], FLAG_NOT_PD);
        blk[j * NB + j] = 1.0;
      } else {
        blk[j * NB + j] = sqrt(d);
      }
    }
    workgroupBarrier();
    let below = t > j && t < w;
    if (below) {
      blk[t * NB + j] = blk[t * NB + j] / blk[j * NB + j];
    }
    // Every row's column j is scaled before any row reads another's.
    workgroupBarrier();
    if (below) {
      let lij = blk[t * NB + j];
      for (var c = j + 1u; c <= t; c++) {
        blk[t * NB + c] -= lij * blk[c * NB + j];
      }
    }
  }
  workgroupBarrier();
  if (t < w) {
    let dst = (p0 + t) * n + p0;
    for (var c = 0u; c <= t; c++) {
      r[dst + c] = blk[t * NB + c];
    }
  }
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) t: u32) {
  let n = p.n;
  let p0 = p.p0;
  let w = p.w;
  // Row t of the block (its lower part).
  let has_upd = p.has_upd != 0u;
  if (p.mode == 1u) {
    // The factored block, for the rows below.
    for (var i = 0u; i < w; i++) {
      if (t <= i) {
        blk[i * NB + t] = r[(p0 + i) * n + p0 + t];
      }
    }
    workgroupBarrier();
  } else {
    factor_block(t, n, p0, w, has_upd);
    return;
  }
  let i = p0 + w + wid.x * NB + t;
  if (i < n) {
    let base = i * n + p0;
    // The row in private memory: read and written w times each by the substitution.
    var row: array<f32, NB>;
    let ubase = (i - p0) * NB;
    for (var c = 0u; c < w; c++) {
      row[c] = r[base + c] + select(0.0, upd[ubase + c], has_upd);
    }
    for (var c = 0u; c < w; c++) {
      var s = row[c];
      for (var q = 0u; q < c; q++) {
        s -= row[q] * blk[c * NB + q];
      }
      row[c] = s / blk[c * NB + c];
    }
    for (var c = 0u; c < w; c++) {
      r[base + c] = row[c];
    }
  }
}
