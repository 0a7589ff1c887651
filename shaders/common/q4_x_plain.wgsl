// X fragment of matmul_q4 for any adapter: X is staged in workgroup memory, a chunk of XC vec4s
// per row at a time (ping-pong halves), pre-multiplied by X_SCALE, with Σx of every group summed
// once per workgroup; every lane then reads the vec4s of X it needs from workgroup memory. (The
// same interface as common/q4_x_subgroup.wgsl; see shaders/matmul_q4.wgsl.)

struct XPair {
  a: vec4<f32>,
  b: vec4<f32>,
}

var<workgroup> xs: array<vec4<f32>, 2u * XHALF>;
var<workgroup> xsum: array<f32, 2u * MT * CG>;

fn x_init(m0: u32) {}

// Copies chunk `chunk` of the workgroup's X rows into its half of `xs` and Σx of each group into
// `xsum`. One thread per (row, group): a contiguous run of GV vec4s, summed on the way.
fn x_stage(chunk: u32, m0: u32, t: u32) {
  let half = chunk & 1u;
  let kv_row = p.k / 4u;
  let kv0 = chunk * XC;
  for (var s = t; s < MT * CG; s += WG) {
    let mr = s / CG;
    let gl = s % CG;
    let m = m0 + mr;
    let kv = kv0 + gl * GV;
    // Rows past M and groups past K stay stale: their products are never written out.
    if (m < p.m && kv < kv_row) {
      let src = m * kv_row + kv;
      let dst = half * XHALF + mr * XC + gl * GV;
      var sum = vec4<f32>(0.0);
      // p.gv == GV, read from the uniform so the loop stays a loop: unrolled, its per-lane
      // gathers and scatters multiply compile time for no speed (staging is a few % of the work).
      for (var j = 0u; j < p.gv; j++) {
        let v = x[src + j];
        xs[dst + j] = v * X_SCALE;
        sum += v;
      }
      xsum[half * MT * CG + s] = (sum.x + sum.y) + (sum.z + sum.w);
    }
  }
}

fn x_sync() {
  workgroupBarrier();
}

// Unused here: the pairs below read workgroup memory directly.
fn x_lane(m: u32, word: u32) -> vec4<f32> {
  return vec4<f32>(0.0);
}

fn x_lane_sum(xl: vec4<f32>) -> f32 {
  return 0.0;
}

// vec4s 2c and 2c + 1 of the 8 that word `word` (k = 32·word..) of row m of X multiplies; `xv` is
// the word's first vec4 in the current half of `xs`.
fn x_pair0(xv: u32, m: u32, xl: vec4<f32>) -> XPair {
  let i = xv + m * XC;
  return XPair(xs[i], xs[i + 1u]);
}
fn x_pair1(xv: u32, m: u32, xl: vec4<f32>) -> XPair {
  let i = xv + m * XC;
  return XPair(xs[i + 2u], xs[i + 3u]);
}
fn x_pair2(xv: u32, m: u32, xl: vec4<f32>) -> XPair {
  let i = xv + m * XC;
  return XPair(xs[i + 4u], xs[i + 5u]);
}
fn x_pair3(xv: u32, m: u32, xl: vec4<f32>) -> XPair {
  let i = xv + m * XC;
  return XPair(xs[i + 6u], xs[i + 7u]);
}

// Σx of group `gl` of chunk `c`, row m of X.
fn x_group_sum(c: u32, m: u32, gl: u32, summed: f32) -> f32 {
  return xsum[(c & 1u) * MT * CG + m * CG + gl];
}
