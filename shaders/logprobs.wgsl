// logprobs: for each logits row that asks, the log-softmax summary a request's logprobs report,
// so a step reads back LOGPROBS_ROW_BYTES per row instead of the vocabulary. It runs after argmax
// or the sample kernel, on the same logits (after the repetition penalty and logit_adjust, which
// edit them in place), with the id that was drawn.
// Bindings: params {n}, logits [rows, n] f32, want [rows] u32 (alternatives 0..20, or 0xffffffff:
// skip the row), ids [rows] u32 (the chosen tokens), out [rows, 44] u32:
//   [0] lse f32, [1] the chosen token's logprob f32, [2] alternatives written, [3] the chosen id,
//   [4 + 2j] id and [5 + 2j] logprob f32 of the j-th alternative, best first.
// Work: one 256-thread workgroup per row.
//
// Semantics (src/kernels/logprobs.ref.ts is the float64 twin): temperature 1; lse = M + ln Σ
// exp(v - M) over the finite logits; +Infinity logits share all the mass (-ln c each, lse
// +Infinity, the rest -Infinity); no finite or +Infinity logit: every logprob -Infinity; NaN logits
// are no token (logprob NaN). Alternatives: the best by rank (logit descending, then id ascending,
// -0 equal to +0) whose logprob is above -Infinity.
//
// How: one pass over the row. Thread t reads ids t, t + 256, ... (coalesced); it keeps an online
// (max, sum of exp(v - max)) of its finite logits and its own best LIST = 4 ids in registers,
// sorted by rank (ids arrive ascending, so a tie never displaces an earlier id; an element is
// inserted only when it beats the list's last entry, one register compare otherwise). A longer
// private list, indexed dynamically, lives in memory on CPU adapters: 20 entries cost ~40 argmax
// passes on lavapipe, 4 in registers ~2. Logits are compared through an order-preserving u32 key (as
// in sample.wgsl): exact, -0 folded onto +0, and NaN/Infinity tests that do not rely on float code
// (WGSL lets compilers assume neither occurs). Then a fixed-order reduction (16 groups of 16) of the
// (max, sum) pairs, and `want` merge rounds: each round the best head of the 256 lists wins (its
// owner is id % 256) and that list advances; a list emptied while its thread may hold more is
// refilled by a rescan of the thread's share for the best 4 ranked below the one just taken (rare:
// the best tokens of a row seldom share a thread; at worst 5 rescans of n / 256 elements).
// Cost at n = 151669 on lavapipe: ~1.6 argmax passes without alternatives, ~2.3 with 20.
//
// Rounding: exp in f32 (the WGSL bound is 3 + 2|x| ulp at x = v - M), per-thread sums of up to
// ceil(n / 256) terms, then 16 + 16 rescaled terms: ln Σ is off by about (ceil(n / 256) + 32) ulp
// at worst (~4e-5 at n = 151669, typically far less), and each logprob, formed as (v - M) - ln Σ,
// adds one rounding of its own magnitude. Ranks and counts are exact.

struct Params {
  n: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read> want: array<u32>;
@group(0) @binding(3) var<storage, read> ids: array<u32>;
@group(0) @binding(4) var<storage, read_write> out: array<u32>;

const WG: u32 = 256u;
const MAX_TOP: u32 = 20u;
const ROW_WORDS: u32 = 44u;
const SKIP: u32 = 0xffffffffu;
// Entries per thread's private list.
const LIST: u32 = 4u;
// Keys of -Infinity and +Infinity; NaN keys lie outside [KEY_NINF, KEY_PINF].
const KEY_NINF: u32 = 0x007fffffu;
const KEY_PINF: u32 = 0xff800000u;
// Bits of -Infinity, +Infinity and a NaN, written as u32 (WGSL refuses infinite constants).
const BITS_NINF: u32 = 0xff800000u;
const BITS_PINF: u32 = 0x7f800000u;
const BITS_NAN: u32 = 0x7fc00000u;
// An empty list head: below every valid key.
const NONE: u32 = 0u;

var<workgroup> red_m: array<f32, WG>;
var<workgroup> red_s: array<f32, WG>;
var<workgroup> red_c: array<u32, WG>;
var<workgroup> head_k: array<u32, WG>;
var<workgroup> head_i: array<u32, WG>;
var<workgroup> grp_m: array<f32, 16>;
var<workgroup> grp_s: array<f32, 16>;
var<workgroup> grp_c: array<u32, 16>;
var<workgroup> grp_k: array<u32, 16>;
var<workgroup> grp_i: array<u32, 16>;
var<workgroup> top_k: array<u32, MAX_TOP>;
var<workgroup> top_i: array<u32, MAX_TOP>;
// The winner of a merge round: its key and id (NONE when every list is spent).
var<workgroup> win: vec2<u32>;
// Reduced: the finite maximum, ln Σ, the count of +Infinity logits, and whether any finite one.
var<workgroup> red: vec4<u32>;

fn okey(v: f32) -> u32 {
  var b = bitcast<u32>(v);
  if (b == 0x80000000u) {
    b = 0u;
  }
  return b ^ select(0x80000000u, 0xffffffffu, (b & 0x80000000u) != 0u);
}

// Inserts (key, i) into a list sorted by rank that it beats the last entry of (ids arrive in
// ascending order, so it goes below equal keys); the last entry drops out.
fn insert(lk: ptr<function, vec4<u32>>, li: ptr<function, vec4<u32>>, key: u32, i: u32) {
  var k = *lk;
  var d = *li;
  if (key > k.z) {
    k.w = k.z;
    d.w = d.z;
    if (key > k.y) {
      k.z = k.y;
      d.z = d.y;
      if (key > k.x) {
        k.y = k.x;
        d.y = d.x;
        k.x = key;
        d.x = i;
      } else {
        k.y = key;
        d.y = i;
      }
    } else {
      k.z = key;
      d.z = i;
    }
  } else {
    k.w = key;
    d.w = i;
  }
  *lk = k;
  *li = d;
}

// a ranks above b: the higher key, or the lower id on equal keys.
fn above(ka: u32, ia: u32, kb: u32, ib: u32) -> bool {
  return ka > kb || (ka == kb && ia < ib);
}

// The logprob (as bits) of a logit with key `key` and value `v`, given the reduced row.
fn logprob_bits(key: u32, v: f32, m: f32, log_s: f32, pinf: u32, finite: bool) -> u32 {
  if (key < KEY_NINF || key > KEY_PINF) {
    return BITS_NAN;
  }
  if (pinf > 0u) {
    return select(BITS_NINF, bitcast<u32>(-log(f32(pinf))), key == KEY_PINF);
  }
  if (!finite || key == KEY_NINF) {
    return BITS_NINF;
  }
  return bitcast<u32>((v - m) - log_s);
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) t: u32) {
  let row = wid.x;
  let asked = want[row];
  // Uniform per workgroup: every thread returns, or none does.
  if (asked == SKIP) {
    return;
  }
  let k = min(asked, MAX_TOP);
  let n = p.n;
  let base = row * n;

  // This thread's best LIST ids by rank (keys NONE where empty), refilled by a rescan below the
  // last one taken when a merge round empties it and the thread may hold more.
  var lk = vec4<u32>(NONE);
  var li = vec4<u32>(SKIP);
  // An element enters the list when its key is above thr: anything valid but -Infinity while the
  // list has room, then above its last entry (never, when no alternatives are asked).
  let floor = select(KEY_NINF, SKIP, k == 0u);
  var thr = floor;
  var m = 0.0;
  var s = 0.0;
  var has = false;
  var pinf = 0u;
  for (var i = t; i < n; i += WG) {
    let v = logits[base + i];
    let key = okey(v);
    if (key > KEY_NINF && key < KEY_PINF) {
      if (!has) {
        m = v;
        s = 1.0;
        has = true;
      } else if (v > m) {
        s = s * exp(m - v) + 1.0;
        m = v;
      } else {
        s += exp(v - m);
      }
    } else if (key == KEY_PINF) {
      pinf += 1u;
    }
    if (key > thr && key <= KEY_PINF) {
      insert(&lk, &li, key, i);
      thr = max(lk.w, floor);
    }
  }
  var more = lk.w != NONE;

  // (max, sum) per thread, then per group of 16, then the row; a negative sum marks "no finite
  // logit" (it is >= 1 otherwise).
  red_m[t] = m;
  red_s[t] = select(-1.0, s, has);
  red_c[t] = pinf;
  workgroupBarrier();
  if (t < 16u) {
    let g = combine(t * 16u);
    grp_m[t] = g.m;
    grp_s[t] = g.s;
    grp_c[t] = g.c;
  }
  workgroupBarrier();
  if (t == 0u) {
    for (var q = 0u; q < 16u; q++) {
      red_m[q] = grp_m[q];
      red_s[q] = grp_s[q];
      red_c[q] = grp_c[q];
    }
    let r = combine(0u);
    let finite = r.s >= 0.0;
    red = vec4<u32>(bitcast<u32>(r.m), bitcast<u32>(log(select(1.0, r.s, finite))), r.c, select(0u, 1u, finite));
  }

  // Merge rounds: the best of the 256 list heads, by rank.
  for (var r = 0u; r < k; r++) {
    head_k[t] = lk.x;
    head_i[t] = li.x;
    workgroupBarrier();
    if (t < 16u) {
      var bk = head_k[t * 16u];
      var bi = head_i[t * 16u];
      for (var q = t * 16u + 1u; q < t * 16u + 16u; q++) {
        if (above(head_k[q], head_i[q], bk, bi)) {
          bk = head_k[q];
          bi = head_i[q];
        }
      }
      grp_k[t] = bk;
      grp_i[t] = bi;
    }
    workgroupBarrier();
    if (t == 0u) {
      var bk = grp_k[0];
      var bi = grp_i[0];
      for (var q = 1u; q < 16u; q++) {
        if (above(grp_k[q], grp_i[q], bk, bi)) {
          bk = grp_k[q];
          bi = grp_i[q];
        }
      }
      top_k[r] = bk;
      top_i[r] = bi;
      win = vec2<u32>(bk, bi);
    }
    let w = workgroupUniformLoad(&win);
    if (w.x != NONE && w.y % WG == t) {
      lk = vec4<u32>(lk.yzw, NONE);
      li = vec4<u32>(li.yzw, SKIP);
      if (lk.x == NONE && more) {
        // Rescan for the best LIST ranked below the one just taken.
        var rt = floor;
        for (var i = t; i < n; i += WG) {
          let key = okey(logits[base + i]);
          if (key > rt && key <= KEY_PINF && (key < w.x || (key == w.x && i > w.y))) {
            insert(&lk, &li, key, i);
            rt = max(lk.w, floor);
          }
        }
        more = lk.w != NONE;
      }
    }
  }
  workgroupBarrier();

  if (t == 0u) {
    let mx = bitcast<f32>(red.x);
    let log_s = bitcast<f32>(red.y);
    let pc = red.z;
    let finite = red.w != 0u;
    let o = row * ROW_WORDS;
    if (pc > 0u) {
      out[o] = BITS_PINF;
    } else if (!finite) {
      out[o] = BITS_NINF;
    } else {
      out[o] = bitcast<u32>(mx + log_s);
    }
    let chosen = ids[row];
    var lp = BITS_NAN;
    if (chosen < n) {
      let v = logits[base + chosen];
      lp = logprob_bits(okey(v), v, mx, log_s, pc, finite);
    }
    out[o + 1u] = lp;
    out[o + 3u] = chosen;
    var written = 0u;
    for (var r = 0u; r < k; r++) {
      let key = top_k[r];
      if (key == NONE) {
        break;
      }
      let id = top_i[r];
      let v = logits[base + id];
      let b = logprob_bits(key, v, mx, log_s, pc, finite);
      // Ranked last: the first entry without probability ends the list.
      if (b == BITS_NINF) {
        break;
      }
      out[o + 4u + 2u * written] = id;
      out[o + 5u + 2u * written] = b;
      written += 1u;
    }
    out[o + 2u] = written;
  }
}

// Thread 0 / group leaders: the (max, sum, +Infinity count) of 16 consecutive reduction slots, in
// slot order; the sum is negative when no slot had a finite logit.
struct Partial {
  m: f32,
  s: f32,
  c: u32,
}

fn combine(first: u32) -> Partial {
  var gm = 0.0;
  var gs = -1.0;
  var gc = 0u;
  for (var q = first; q < first + 16u; q++) {
    gc += red_c[q];
    let sq = red_s[q];
    if (sq >= 0.0) {
      let mq = red_m[q];
      if (gs < 0.0) {
        gm = mq;
        gs = sq;
      } else if (mq > gm) {
        gs = gs * exp(gm - mq) + sq;
        gm = mq;
      } else {
        gs += sq * exp(mq - gm);
      }
    }
  }
  return Partial(gm, gs, gc);
}
