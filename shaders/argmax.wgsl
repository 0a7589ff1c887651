// argmax: ids[r] = the index of the largest logit of row r (the lowest index among ties, like
// NumPy's argmax and llama2.c), so greedy decoding reads back one u32 per sequence, not the logits.
// NaN logits never win. Bindings: params, logits [rows, n] f32, ids [rows] u32.
// Work: one 256-thread workgroup per row; threads stride over n, then a tree keeps (value, index).

struct Params {
  n: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> ids: array<u32>;

const WG: u32 = 256u;
var<workgroup> best_v: array<f32, WG>;
var<workgroup> best_i: array<u32, WG>;

fn better(v: f32, i: u32, bv: f32, bi: u32) -> bool {
  return v > bv || (v == bv && i < bi);
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) t: u32) {
  let base = wid.x * p.n;
  var bv = bitcast<f32>(0xff7fffffu); // -FLT_MAX
  var bi = 0xffffffffu;
  for (var i = t; i < p.n; i += WG) {
    let v = logits[base + i];
    // v == v is false only for NaN.
    if (v == v && better(v, i, bv, bi)) {
      bv = v;
      bi = i;
    }
  }
  best_v[t] = bv;
  best_i[t] = bi;
  workgroupBarrier();
  for (var s = WG / 2u; s > 0u; s >>= 1u) {
    if (t < s && better(best_v[t + s], best_i[t + s], best_v[t], best_i[t])) {
      best_v[t] = best_v[t + s];
      best_i[t] = best_i[t + s];
    }
    workgroupBarrier();
  }
  if (t == 0u) {
    ids[wid.x] = select(best_i[0], 0u, best_i[0] == 0xffffffffu);
  }
}
