// rmsnorm: y[r, :] = w ⊙ x[rows[r], :] / sqrt(mean(x[rows[r], :]²) + eps), in f32.
// `rows` maps output rows to input rows, so the final norm can pick only the rows that need logits.
// Bindings: params, x [*, hidden] f32, w [hidden] f32, rows [m] u32, y [m, hidden] Act (prepended
// activation fragment: f32, or f16 = the optional output cast for a matmul reading f16 X).
// ADD (the rmsnorm_add variant, Gemma's norms of a branch output): y[r, :] += the normed row
// instead of =, the residual add fused (y is the f32 residual stream then).
// Work: one 64-thread workgroup per output row. Each thread sums the squares of its strided
// elements, then every thread adds up the 64 partials itself: one barrier instead of a six-level
// tree (barriers are what a small kernel pays for on CPU adapters; 64 reads of workgroup memory
// at one address are cheap everywhere).

struct Params {
  hidden: u32,
  eps: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> w: array<f32>;
@group(0) @binding(3) var<storage, read> rows: array<u32>;
@group(0) @binding(4) var<storage, read_write> y: array<Act>;

override ADD: bool = false;
const WG: u32 = 64u;
var<workgroup> red: array<f32, WG>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) t: u32) {
  let r = wid.x;
  let src = rows[r] * p.hidden;
  var ss = 0.0;
  for (var j = t; j < p.hidden; j += WG) {
    let v = x[src + j];
    ss += v * v;
  }
  red[t] = ss;
  workgroupBarrier();
  var total = 0.0;
  for (var i = 0u; i < WG; i++) {
    total += red[i];
  }
  let inv = inverseSqrt(total / f32(p.hidden) + p.eps);
  let dst = r * p.hidden;
  for (var j = t; j < p.hidden; j += WG) {
    let v = x[src + j] * inv * w[j];
    if (ADD) {
      y[dst + j] = Act(f32(y[dst + j]) + v);
    } else {
      y[dst + j] = Act(v);
    }
  }
}
