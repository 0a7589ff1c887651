// gptq_damp: GPTQ's fixes to the Hessian before its factorization (src/kernels/gptq.ts), on the
// diagonal of R = J·H·J (H in reversed order, as the factorization wants it): a column no input
// ever reaches (H_kk = 0, "dead") gets H_kk = 1 and is marked in `dead` (the sweep zeroes its
// weights), then λ = damp_percent · mean(diag H) is added to every diagonal entry, the mean taken
// after the dead fix, as in src/quant/gptq-solver.ts. A diagonal entry that is negative or not
// finite sets status bit 0 (the CPU solver's range error); the off-diagonal entries are checked by
// the factorization itself (a non-finite one makes some pivot non-positive or NaN).
// Work: one 256-thread workgroup; threads stride over the diagonal, then a tree sums their parts.
// Bindings: params, r (n × n, row-major), dead [n] u32 (in H's own column order), status.

struct Params {
  n: u32,
  damp_percent: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> r: array<f32>;
@group(0) @binding(2) var<storage, read_write> dead: array<u32>;
@group(0) @binding(3) var<storage, read_write> status: array<atomic<u32>>;

const FLAG_BAD_DIAGONAL: u32 = 1u;
const WG: u32 = 256u;

var<workgroup> part: array<f32, WG>;

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) t: u32) {
  let n = p.n;
  var s = 0.0;
  var bad = false;
  for (var a = t; a < n; a += WG) {
    // Bit tests, not float compares: WGSL lets a compiler assume no NaN or infinity.
    let bits = bitcast<u32>(r[a * n + a]);
    let mag = bits & 0x7fffffffu;
    bad = bad || mag >= 0x7f800000u || (bits != mag && mag != 0u);
    s += select(bitcast<f32>(mag), 1.0, mag == 0u);
  }
  part[t] = s;
  for (var h = WG / 2u; h > 0u; h >>= 1u) {
    workgroupBarrier();
    if (t < h) {
      part[t] += part[t + h];
    }
  }
  workgroupBarrier();
  let damp = p.damp_percent * part[0] / f32(n);
  for (var a = t; a < n; a += WG) {
    let d = abs(r[a * n + a]);
    let is_dead = d == 0.0;
    r[a * n + a] = select(d, 1.0, is_dead) + damp;
    dead[n - 1u - a] = select(0u, 1u, is_dead);
  }
  if (bad) {
    atomicOr(&status[0], FLAG_BAD_DIAGONAL);
  }
}
