// rmsnorm_lanes: shaders/rmsnorm.wgsl's result, bit for bit, with one invocation per row instead of
// a 64-thread workgroup: for the few, narrow rows of a decode step of a small model (the forward
// graph picks it by shape: src/kernels/rmsnorm.ts). On a CPU adapter rmsnorm's barrier and
// workgroup memory cost several µs per row, so a step's norms grew with its rows; here 8 rows
// share one SIMD instruction and a step of 16 rows is 2 of them.
// Same sum as rmsnorm: the 64 strided partials (t, t + 64, ... added in order), then the partials
// added in order 0..63, so a row normed here equals the row normed there (and the folded norm of
// common/rms_fold.wgsl).
// Bindings and params as shaders/rmsnorm.wgsl (activation fragment prepended; ADD override).

struct Params {
  hidden: u32,
  eps: f32,
  m: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read> rows: array<u32>;
@group(0) @binding(4) var<storage, read_write> y: array<Act>;

override ADD: bool = false;
// rmsnorm's threads per row, whose partial sums this reproduces.
const PARTIALS: u32 = 64u;

@compute @workgroup_size(8)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let r = gid.x;
  if (r >= p.m) {
    return;
  }
  let src = rows[r] * p.hidden;
  var total = 0.0;
  for (var t = 0u; t < PARTIALS; t++) {
    var ss = 0.0;
    for (var j = t; j < p.hidden; j += PARTIALS) {
      let v = x[src + j];
      ss += v * v;
    }
    total += ss;
  }
  let inv = inverseSqrt(total / f32(p.hidden) + p.eps);
  let dst = r * p.hidden;
  for (var j = 0u; j < p.hidden; j++) {
    let v = x[src + j] * inv * w[j];
    if (ADD) {
      y[dst + j] = Act(f32(y[dst + j]) + v);
    } else {
      y[dst + j] = Act(v);
    }
  }
}
