// recycle_topk: Token Recycling's adjacency table, updated on the GPU from a step's logits without
// reading them back (Luo et al. 2024). For logit row r, whose input token is
// tok = ids[logit_rows[r]], row tok of the table becomes the p.k largest logits' indices of row r,
// best first: table[tok·k + j] = the j-th best index (larger value first, the lower index among
// ties, as argmax; NaN and -inf never count). Entries past the row's candidates (n < k, or fewer
// finite values) hold NONE. Two logit rows of a step with the same input token: the last one writes
// (the others return at once), so the table does not depend on workgroup order. tok >= n (no such
// table row) writes nothing.
// Bindings: params, logits [rows, n] f32, ids [m] u32 (the step's input tokens), logit_rows [rows]
// u32 (the row whose logits each logit row is), table [n, k] u32.
// Work: one 128-thread workgroup per logit row. Each thread keeps the best K_MAX of its strided
// share of the row, sorted, in private memory (one pass over the logits) and stages them in
// workgroup memory; then one thread merges the 128 sorted lists (k rounds over the list heads).
// One barrier: on lavapipe (a CPU) barriers dominate a tree reduction per round, and the merge is
// at most k · 128 comparisons.

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

const WG: u32 = 128u;
const K_MAX: u32 = 8u;
const NONE: u32 = 0xffffffffu;
const LOWEST: f32 = -3.4028234663852886e38;

var<workgroup> cand_v: array<f32, 1024>; // WG * K_MAX
var<workgroup> cand_i: array<u32, 1024>;
var<workgroup> skip: u32;

fn better(v: f32, i: u32, bv: f32, bi: u32) -> bool {
  return v > bv || (v == bv && i < bi);
}

@compute @workgroup_size(128)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) t: u32) {
  let r = wid.x;
  let tok = ids[logit_rows[r]];
  if (t == 0u) {
    var later = 0u;
    for (var q = r + 1u; q < p.rows; q++) {
      if (ids[logit_rows[q]] == tok) {
        later = 1u;
      }
    }
    skip = select(later, 1u, tok >= p.n);
  }
  if (workgroupUniformLoad(&skip) != 0u) {
    return;
  }
  let base = r * p.n;
  // This thread's best K_MAX, best first; empty entries are (LOWEST, NONE), which any counted
  // value beats.
  var bv: array<f32, K_MAX>;
  var bi: array<u32, K_MAX>;
  for (var j = 0u; j < K_MAX; j++) {
    bv[j] = LOWEST;
    bi[j] = NONE;
  }
  // The list's last entry, kept in registers: most values fail this test, and a private array
  // lives in memory on lavapipe.
  var last_v = LOWEST;
  var last_i = NONE;
  for (var i = t; i < p.n; i += WG) {
    let v = logits[base + i];
    // v == v is false only for NaN; -inf never beats LOWEST.
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
  for (var j = 0u; j < K_MAX; j++) {
    cand_v[t * K_MAX + j] = bv[j];
    cand_i[t * K_MAX + j] = bi[j];
  }
  workgroupBarrier();
  if (t != 0u) {
    return;
  }
  // Thread 0 merges: each round takes the best list head and moves that list on.
  var head: array<u32, WG>;
  for (var j = 0u; j < p.k; j++) {
    var best_v = LOWEST;
    var best_i = NONE;
    var best_l = 0u;
    for (var l = 0u; l < WG; l++) {
      let h = head[l];
      if (h < K_MAX) {
        let v = cand_v[l * K_MAX + h];
        let i = cand_i[l * K_MAX + h];
        if (better(v, i, best_v, best_i)) {
          best_v = v;
          best_i = i;
          best_l = l;
        }
      }
    }
    table[tok * p.k + j] = best_i;
    if (best_i != NONE) {
      head[best_l]++;
    }
  }
}
