// recycle_topk_lanes: shaders/recycle_topk.wgsl's table rows (the p.k best logits' indices of each
// logit row, best first, the lower index among ties, NaN and -inf never counted, NONE past the
// candidates; the last of several rows with one input token writes) with one invocation per logit
// row keeping its best K_MAX in one pass, for the few rows of a small vocabulary's step
// (src/kernels/recycle-topk.ts picks it by shape): on a CPU adapter the 128-thread workgroup per
// row, its 8 KiB of workgroup memory and its merge cost several µs per row.
// Bindings and params as shaders/recycle_topk.wgsl.

struct Params {
  n: u32,
  k: u32,
  rows: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read> ids: array<u32>;
@group(0) @binding(3) var<storage, read> logit_rows: array<u32>;
@group(0) @binding(4) var<storage, read_write> table: array<u32>;

const K_MAX: u32 = 8u;
const NONE: u32 = 0xffffffffu;
const LOWEST: f32 = -3.4028234663852886e38;

fn better(v: f32, i: u32, bv: f32, bi: u32) -> bool {
  return v > bv || (v == bv && i < bi);
}

@compute @workgroup_size(8)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let r = gid.x;
  if (r >= p.rows) {
    return;
  }
  let tok = ids[logit_rows[r]];
  if (tok >= p.n) {
    return;
  }
  for (var q = r + 1u; q < p.rows; q++) {
    if (ids[logit_rows[q]] == tok) {
      return;
    }
  }
  let base = r * p.n;
  var bv: array<f32, K_MAX>;
  var bi: array<u32, K_MAX>;
  for (var j = 0u; j < K_MAX; j++) {
    bv[j] = LOWEST;
    bi[j] = NONE;
  }
  // The list's last entry in registers: most values fail this test.
  var last_v = LOWEST;
  var last_i = NONE;
  for (var i = 0u; i < p.n; i++) {
    let v = logits[base + i];
    if (v == v && better(v, i, last_v, last_i)) {
      var j = K_MAX - 1u;
      loop {
        if (j == 0u || !better(v, i, bv[j - 1u], bi[j - 1u])) {
          break;
        }
        bv[j] = bv[j - 1u];
        bi[j] = bi[j - 1u];
        j--;
      }
      bv[j] = v;
      bi[j] = i;
      last_v = bv[K_MAX - 1u];
      last_i = bi[K_MAX - 1u];
    }
  }
  for (var j = 0u; j < p.k; j++) {
    table[tok * p.k + j] = bi[j];
  }
}
