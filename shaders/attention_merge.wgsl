// attention_merge: pass 2 of split-K decode attention. For each (row, query head) it combines the
// per-split partials (c_s, l_s, o_s) of attention_split:
//   M = max_s c_s,   out = Σ_s e^{c_s - M} o_s / Σ_s e^{c_s - M} l_s
// and writes out [m, heads·head_dim] f32, like `attention`.
//
// Variants (the wrapper prefixes `const MODE: u32 = ...;`):
//   0 exact (attention_merge_two_pass): the formula above; empty splits carry c = NEG_BIG, l = 0.
//   1 async softmax (attention_merge_async_softmax): every c_s is the same phi, so the weights are
//     all 1 and the merge is a plain sum. A row whose total sum leaves [UNDERFLOW_MIN, f32 max]
//     (phi far above the scores, or a non-finite sum) gets flags[m] set for the exact fallback,
//     attention_split's mode 2, which recomputes the row and clears the flag.
//
// Bindings: params, partials (records of head_dim/4 + 1 vec4: vec4(c, l, 0, 0) then o), out,
// flags [m] atomic u32 (mode 1).
// Work: thread t < head_dim/4 owns output dims 4t..4t+3 and walks the splits; the split headers
// are uniform loads. No barriers.

struct Params {
  heads: u32,
  head_dim: u32,
  splits: u32,
  _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> partials: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> out: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> flags: array<atomic<u32>>;

const WG: u32 = 64u;
// Below this the async sum is flagged: e^-60 ≈ 8.8e-27. If the total is at least this, its largest
// term is >= total / tokens, far above f32's normal range floor (1.2e-38), so the terms that
// flush to zero or go subnormal weigh less than tokens · 1.2e-38 / 8.8e-27 (< 1e-5 even at 2^20
// tokens) of the result.
const UNDERFLOW_MIN: f32 = 8.8e-27;
const F32_MAX: f32 = 3.4028234e38;

fn merge_head(row: u32, h: u32, t: u32) {
  let hd4 = p.head_dim / 4u;
  let rec_len = hd4 + 1u;
  let rec0 = (row * p.heads + h) * p.splits * rec_len;
  var m_all = -3.0e38;
  if (MODE != 1u) {
    for (var s = 0u; s < p.splits; s++) {
      m_all = max(m_all, partials[rec0 + s * rec_len].x);
    }
  }
  var l = 0.0;
  var o = vec4<f32>(0.0);
  for (var s = 0u; s < p.splits; s++) {
    let rec = rec0 + s * rec_len;
    var w = 1.0;
    if (MODE != 1u) {
      w = exp(partials[rec].x - m_all);
    }
    l += w * partials[rec].y;
    o += w * partials[rec + 1u + t];
  }
  if (MODE == 1u) {
    // Written so that a NaN sum fails the test too.
    let ok = l >= UNDERFLOW_MIN && l <= F32_MAX && all(abs(o) <= vec4<f32>(F32_MAX));
    if (!ok) {
      atomicOr(&flags[row], 1u);
    }
  }
  out[(row * p.heads + h) * hd4 + t] = o / l;
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) t: u32) {
  let hd4 = p.head_dim / 4u;
  let row = wid.y;
  if (t < hd4) {
    merge_head(row, wid.x, t);
  }
}
