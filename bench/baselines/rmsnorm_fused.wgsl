// rmsnorm_fused: the residual add and the RMSNorm of the next sublayer in one pass:
//   x[r, :] += delta[r, :];  y[r, :] = w ⊙ x[r, :] / sqrt(mean(x[r, :]²) + eps)
// so the residual stream is read once and written once instead of add (read 2, write 1) followed
// by norm (read 1 again). Same reduction as shaders/rmsnorm.wgsl (one barrier).
// Bindings: params, x [m, hidden] f32 (updated in place), delta [m, hidden] f32, w [hidden] f32,
// y [m, hidden] f32.

struct Params {
  hidden: u32,
  eps: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read> delta: array<f32>;
@group(0) @binding(3) var<storage, read> w: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;

const WG: u32 = 64u;
var<workgroup> red: array<f32, WG>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) t: u32) {
  let base = wid.x * p.hidden;
  var ss = 0.0;
  for (var j = t; j < p.hidden; j += WG) {
    let v = x[base + j] + delta[base + j];
    x[base + j] = v;
    ss += v * v;
  }
  red[t] = ss;
  workgroupBarrier();
  var total = 0.0;
  for (var i = 0u; i < WG; i++) {
    total += red[i];
  }
  let inv = inverseSqrt(total / f32(p.hidden) + p.eps);
  // Each thread reads back only the elements it wrote itself: no barrier needed.
  for (var j = t; j < p.hidden; j += WG) {
    y[base + j] = x[base + j] * inv * w[j];
  }
}
