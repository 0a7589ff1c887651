// logit_adjust: the logit edits a request asks for, in place, before argmax or sampling. For row r:
// 1. logits[r, id] += add for each (id, add) of the row's edit list (logit bias and the presence /
//    frequency penalties, merged on the CPU so each id appears once; ids >= n are skipped);
// 2. if the row has a mask (constrained decoding), logits[r, i] = -Infinity for every token i whose
//    bit (word i / 32, bit i % 32) is 0;
// 3. if the row has a min-p cut (min_p_offset = T·ln(min_p) > -Infinity), logits below the row's
//    maximum (after 1 and 2) plus that offset become -Infinity: tokens whose probability at
//    temperature T is below min_p times the top token's. NaN logits are left as they are.
// Bindings: params {n, words, neg_inf}, logits [rows, n] f32 (read_write), rows [rows] {start u32,
// count u32, mask u32 (0: none; k: mask row k - 1), min_p_offset f32}, edits [..] {id u32, add f32}, masks
// [mask rows, words] u32.
// Work: one 256-thread workgroup per row; the edits (unique ids) then a barrier, then the mask
// strided over the row. src/kernels/logit-adjust.ref.ts is the float64 twin.

struct Params {
  n: u32,
  words: u32,
  // -Infinity, passed in: WGSL refuses an infinite constant.
  neg_inf: f32,
}

struct Row {
  start: u32,
  count: u32,
  mask: u32,
  min_p_offset: f32,
}

struct Edit {
  id: u32,
  add: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> logits: array<f32>;
@group(0) @binding(2) var<storage, read> rows: array<Row>;
@group(0) @binding(3) var<storage, read> edits: array<Edit>;
@group(0) @binding(4) var<storage, read> masks: array<u32>;

const WG: u32 = 256u;

var<workgroup> wg_max: array<f32, 256>;

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) t: u32) {
  let r = wid.x;
  let row = rows[r];
  for (var i = t; i < row.count; i += WG) {
    let e = edits[row.start + i];
    if (e.id < p.n) {
      let at = r * p.n + e.id;
      logits[at] = logits[at] + e.add;
    }
  }
  storageBarrier();
  if (row.mask != 0u) {
    let base = (row.mask - 1u) * p.words;
    for (var i = t; i < p.n; i += WG) {
      if (((masks[base + (i >> 5u)] >> (i & 31u)) & 1u) == 0u) {
        logits[r * p.n + i] = p.neg_inf;
      }
    }
  }
  // Uniform per workgroup (one row), so the barriers below are reached by every thread or none.
  if (!(row.min_p_offset > p.neg_inf)) {
    return;
  }
  storageBarrier();
  var m = p.neg_inf;
  for (var i = t; i < p.n; i += WG) {
    let v = logits[r * p.n + i];
    if (v > m) {
      m = v;
    }
  }
  wg_max[t] = m;
  workgroupBarrier();
  for (var stride = WG / 2u; stride > 0u; stride = stride / 2u) {
    if (t < stride) {
      wg_max[t] = max(wg_max[t], wg_max[t + stride]);
    }
    workgroupBarrier();
  }
  let cut = wg_max[0] + row.min_p_offset;
  for (var i = t; i < p.n; i += WG) {
    if (logits[r * p.n + i] < cut) {
      logits[r * p.n + i] = p.neg_inf;
    }
  }
}
