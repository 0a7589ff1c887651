// sample: ids[r] = one token drawn from logits row r with that row's temperature, top-k, top-p and
// uniform number u, so a sampled decode step reads back 4 bytes instead of the logits.
// Bindings: params {n}, logits [rows, n] f32, row params [rows] {temperature f32, top_k u32,
// top_p f32, u f32}, ids [rows] u32. Work: one 256-thread workgroup per row.
// One algorithm in one file, past 500 lines: its steps share one workgroup loop and its workgroup
// memory (see "How" below), and WGSL has no modules to split them into.
//
// Semantics (src/kernels/sample.ref.ts is the float64 twin):
// - NaN logits never win. No non-NaN logit: 0. Temperature <= 0, top_k == 1, or a maximum that is
//   +Infinity or -Infinity (every non-NaN logit is -Infinity): the argmax, lowest index on ties.
// - Candidates: logits >= M - 30·T (M = the maximum) and > -Infinity; every other token has
//   probability below e^-30 of the top one.
// - Rank = (logit descending, id ascending); -0 and +0 are the same logit.
// - top_k > 0 keeps the first top_k candidates by rank.
// - w = exp((logit - M) / T); top_p < 1 keeps the shortest rank prefix of the top-k set whose weight
//   sum reaches top_p times the weight of the whole top-k set.
// - The token: walk the kept set in ascending id order subtracting w from u·(kept sum); the first
//   id where it goes below 0 (the last kept id if rounding never gets it there).
//
// How, without sorting. Logits are compared through an order-preserving u32 key (sign-flipped
// bits, -0 folded onto +0), so every comparison and count is integer and exact, and NaN/Infinity
// tests do not depend on the compiler honouring them in float code (WGSL lets it assume there are
// none). Each thread owns one contiguous chunk of the row (so chunk sums are in id order, which
// the final walk needs).
// 1. Max pass: the largest key, its lowest index, and the least finite key.
// 2. Each cut (top-k: the element of rank k by count; then top-p: the element where the rank-order
//    weight prefix reaches the goal) is found by refinement scans. The interval [lo, hi) of rank
//    order known to hold it is split by 15 pivots: evenly in value over the data on a stage's
//    first scan, then around the position the threshold would have if the interval's elements were
//    spread evenly (gaps growing 1, 2, 4, ... 64 times from there), evenly in key after such an
//    estimate misses; within a single key, by id (ties rank by id). Each thread counts (and sums
//    the weights of) its in-interval elements at or above each pivot in registers, one reduction
//    per scan, and thread 0 picks the sub-interval where the running count/weight reaches the
//    threshold. Once the interval holds <= CAP elements, one more scan gathers them into
//    workgroup memory, where each finds its exact rank by comparing against all the others, and
//    weight prefixes are summed in rank order. If everything from the top-k interval up fits, it is
//    all gathered and top-p needs no scan. Workgroup atomics only hand out gather slots and pick
//    the top-p element: one atomic per element would cost ~20 argmax passes on CPU adapters.
// 3. The walk: the gather scan also sums, per chunk, the weights of the elements above the
//    interval (all kept); the gathered kept ones join their chunks; a two-level prefix over chunks
//    picks the chunk where u·sum is crossed, and all threads rescan that chunk in slices.
// A thread-0 state machine sequences the collective steps (scan, gather, resolve) in one loop, so
// each appears once in the code (shader compilers inline every call; CPU adapters compile slowly).
// Cost at n = 151936 on lavapipe: no cut 1.6-1.8 argmax passes; top-k / top-p on peaked logits
// 2.5-3; on flat logits (the cut deep in ~1e5 candidates) or top-k in the thousands 6-9.
//
// Where f32 arithmetic can make the choice differ from the float64 twin: w is exp in f32 (a few
// ulp, plus the (logit - M)/T argument's rounding scaled by |argument| <= 30), and sums are f32:
// per-chunk sums of up to n/256 terms, then fixed-order 16 + 16 reductions. Typically the kept sum,
// the top-p goal and the walk's running sums are off by ~1e-6 relative (the worst-case bound,
// (n/256 + ~100) ulp, is ~4e-5 at n = 151936). The choice can differ only when u·(kept sum) or the
// top-p goal lies that close to a boundary between two tokens (a prefix sum): a measure-zero event
// for a few tokens, but with ~1e5 near-equal kept weights, where each token's share of the sum is
// itself ~1e-5, neighbours become indistinguishable in f32. The cutoff M - 30T is also f32, but a
// token at the cutoff carries weight e^-30 of the top one. Ranks and counts are exact.

struct Params {
  n: u32,
}

struct RowParams {
  temperature: f32,
  top_k: u32,
  top_p: f32,
  u: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read> row_params: array<RowParams>;
@group(0) @binding(3) var<storage, read_write> ids: array<u32>;

const WG: u32 = 256u;
// Pivots per refinement scan; NB = NP + 1 accumulators (the pivots and the interval's lower end).
const NP: u32 = 15u;
const NB: u32 = 16u;
// Most elements gathered into workgroup memory; SLOTS = CAP / WG gathered elements per thread.
const CAP: u32 = 512u;
const SLOTS: u32 = 2u;
const CUTOFF: f32 = 30.0;
// Refinement scans per stage are bounded by about 1 + 8 (keys) + 5 (ids); this is a safety net.
const MAX_SCANS: u32 = 32u;
const UNKNOWN: u32 = 0xffffffffu;
// Keys of -Infinity, the lowest finite f32 and +Infinity.
const KEY_NINF: u32 = 0x007fffffu;
const KEY_MIN_FINITE: u32 = 0x00800000u;
const KEY_PINF: u32 = 0xff800000u;
// Pool layout while gathered: keys, ids, weights, rank order (perm[rank] = slot).
const G_ID: u32 = 512u;
const G_W: u32 = 1024u;
const G_PERM: u32 = 1536u;

// Phases of the workgroup's loop (each collective step appears once in the code: the shader
// compiler inlines every call, and CPU adapters compile slowly).
const PH_SCAN: u32 = 0u;
const PH_GATHER: u32 = 1u;
const PH_RESOLVE: u32 = 2u;
const PH_BEGIN: u32 = 3u;
const PH_WALK: u32 = 4u;
const PH_DONE: u32 = 5u;
// Pivot placement: evenly in value over the data (a stage's first scan), around the estimated
// position of the threshold (after that), evenly in key (after an estimate missed; bounds the
// number of scans whatever the distribution).
const PL_VALUE: u32 = 0u;
const PL_INTERP: u32 = 1u;
const PL_KEY: u32 = 2u;
// Stages: which cut is being found.
const ST_NONE: u32 = 0u;
const ST_K: u32 = 1u;
const ST_P: u32 = 2u;
const ST_WALK: u32 = 3u;

// e is "at or above" bound b when key > b.k, or key == b.k and id < b.j. A bound (K, n) is "key >=
// K"; the cut at element (K, i) is (K, i + 1).
struct Bound {
  k: u32,
  j: u32,
}

// Workgroup state, written by thread 0 between collective steps (each of which ends with a
// barrier) and read by all.
struct State {
  phase: u32,
  stage: u32,
  answer: u32,
  m: f32,
  temp: f32,
  kmax: u32,
  kmin: u32,
  kc: u32,
  top_k: u32,
  top_p: f32,
  u: f32,
  // refinement: the interval [lo, hi) holds the cut; what lies above hi; the count inside
  lo: Bound,
  hi: Bound,
  above_c: u32,
  in_c: u32,
  above_w: f32,
  // the weight threshold of top-p (negative: not known yet)
  goal: f32,
  in_w: f32,
  metric_w: u32,
  scans: u32,
  // pivot placement of the next scan: PL_VALUE, PL_INTERP or PL_KEY
  place: u32,
  id_phase: u32,
  k0: u32,
  // pivots as comparison values: x >= piv[j], x = key (key phase) or ~id (id phase)
  piv: array<u32, NP>,
  // candidates at or above the k cut, once known
  ncand: u32,
  // the kept set: candidates at or above `keep`
  keep: Bound,
  has_cut: u32,
  // the gathered set holds every element at or above the k cut
  covered: u32,
  cut_rank: u32,
  // gather [glo, ghi) and resolve
  glo: Bound,
  ghi: Bound,
  gathered: u32,
  valid: Bound,
  want: u32,
  base_w: f32,
  // walk
  walk_t: u32,
  walk_base: f32,
  walk_goal: f32,
}

// What branches with barriers depend on, mirrored from st by thread 0 after each step: the only
// value loaded with workgroupUniformLoad. Everything else is read from st where needed; keeping a
// copy of State live across barriers made CPU adapters compile for minutes.
struct Ctl {
  phase: u32,
  stage: u32,
  metric_w: u32,
}

var<workgroup> st: State;
var<workgroup> ctl: Ctl;
var<workgroup> pool: array<u32, 2048>;
var<workgroup> small: array<u32, WG>;
var<workgroup> totals: array<u32, 32>;
var<workgroup> gcount: atomic<u32>;
var<workgroup> gbest: atomic<u32>;

fn okey(v: f32) -> u32 {
  var b = bitcast<u32>(v);
  if (b == 0x80000000u) {
    b = 0u;
  }
  return b ^ select(0x80000000u, 0xffffffffu, (b & 0x80000000u) != 0u);
}

fn kval(k: u32) -> f32 {
  return bitcast<f32>(select(~k, k ^ 0x80000000u, k >= 0x80000000u));
}

fn ge(key: u32, id: u32, b: Bound) -> bool {
  return key > b.k || (key == b.k && id < b.j);
}

fn weight(v: f32, m: f32, temp: f32) -> f32 {
  return exp((v - m) / temp);
}

fn is_finite_bits(x: f32) -> bool {
  return (bitcast<u32>(x) & 0x7fffffffu) < 0x7f800000u;
}

// Thread 0: where the threshold lies inside [lo, hi), as a fraction of the interval from its top,
// if the elements were spread evenly in value over it.
fn estimate(span: f32) -> f32 {
  if (st.metric_w == 0u) {
    return (f32(st.top_k - st.above_c) - 0.5) / f32(st.in_c);
  }
  let fw = clamp((st.goal - st.above_w) / st.in_w, 0.0, 1.0);
  // Weights fall as exp(-value / T) across the interval: invert the fraction of their integral.
  let a = span / st.temp;
  if (!(a > 1e-3) || !is_finite_bits(a)) {
    return fw;
  }
  return -log(1.0 - fw * (1.0 - exp(-min(a, 80.0)))) / a;
}

// Thread 0: pivots splitting [st.lo, st.hi), strictly decreasing, all inside.
fn make_pivots(n: u32) {
  let lo = st.lo;
  let hi = st.hi;
  // Highest and lowest key that can lie inside.
  let khi = select(hi.k - 1u, hi.k, hi.j < n);
  let klo = select(lo.k, lo.k + 1u, lo.j == 0u);
  if (khi > klo) {
    st.id_phase = 0u;
    let d = khi - klo;
    // No element lies below kmin: spread the pivots over the data.
    let vhi = kval(khi);
    let vlo = kval(clamp(st.kmin, klo, khi));
    let span = vhi - vlo;
    var place = st.place;
    if (!is_finite_bits(span) || !is_finite_bits(vlo) || !(span > 0.0)) {
      place = PL_KEY;
    }
    var x0 = 0.0;
    var delta = 0.0;
    if (place == PL_INTERP) {
      x0 = estimate(span);
      // The middle gaps should hold about CAP/4 elements each.
      delta = f32(CAP) / (4.0 * f32(st.in_c));
    }
    var prev = khi + 1u;
    for (var j = 1u; j <= NP; j++) {
      var kj: u32;
      if (d <= NP) {
        kj = max(khi + 1u - j, klo + 1u);
      } else {
        var x = f32(j) / f32(NB);
        if (place == PL_INTERP) {
          // 0, ±1, ±2, ±4, ..., ±64 gaps around the estimate.
          let c = i32(j) - 8;
          let mag = select(f32(1u << u32(abs(c) - 1)), 0.0, c == 0);
          x = clamp(x0 + sign(f32(c)) * mag * delta, 0.0, 1.0);
        }
        var raw: u32;
        if (place == PL_KEY) {
          raw = khi + 1u - min(d, u32(f32(d) * x));
        } else {
          raw = okey(vhi - span * x);
        }
        kj = clamp(raw, klo + 1u + (NP - j), prev - 1u);
      }
      st.piv[j - 1u] = kj;
      prev = kj;
    }
  } else {
    // One key left: its elements rank by id.
    st.id_phase = 1u;
    st.k0 = klo;
    let idlo = select(0u, hi.j, hi.k == klo);
    let idhi = select(n, lo.j, lo.k == klo);
    let d = idhi - idlo;
    var prev = idlo;
    for (var j = 1u; j <= NP; j++) {
      var ij: u32;
      if (d < 2u) {
        ij = idhi;
      } else if (d <= NP + 1u) {
        ij = min(idlo + j, idhi - 1u);
      } else {
        let raw = idlo + u32(f32(d) * (f32(j) / f32(NB)));
        ij = clamp(raw, prev + 1u, idhi - 1u - (NP - j));
      }
      // id < ij  <=>  ~id >= ~(ij - 1)
      st.piv[j - 1u] = ~(max(ij, 1u) - 1u);
      prev = ij;
    }
  }
}

fn pivot_bound(j: u32, n: u32) -> Bound {
  if (st.id_phase != 0u) {
    return Bound(st.k0, ~st.piv[j] + 1u);
  }
  return Bound(st.piv[j], n);
}

// Thread 0: the next stage (top-k, then top-p, then the walk).
fn begin_stage(n: u32) {
  let top = Bound(st.kmax, 0u);
  let bottom = Bound(st.kc, n);
  st.above_c = 0u;
  st.above_w = 0.0;
  st.scans = 0u;
  st.place = PL_VALUE;
  st.hi = top;
  if (st.stage < ST_K && st.top_k > 0u) {
    st.stage = ST_K;
    st.lo = bottom;
    st.in_c = UNKNOWN;
    st.metric_w = 0u;
    st.phase = PH_SCAN;
  } else if (st.stage < ST_P && st.top_p < 1.0) {
    st.stage = ST_P;
    st.lo = st.keep;
    st.in_c = st.ncand;
    st.metric_w = 1u;
    st.goal = -1.0;
    st.valid = st.keep;
    st.base_w = 0.0;
    if (st.covered != 0u) {
      // Every element of the top-k set is gathered already.
      st.phase = PH_RESOLVE;
    } else if (st.in_c <= CAP) {
      st.glo = st.lo;
      st.ghi = top;
      atomicStore(&gcount, 0u);
      st.phase = PH_GATHER;
    } else {
      st.phase = PH_SCAN;
    }
  } else {
    st.stage = ST_WALK;
    if (st.has_cut == 0u) {
      // No cut: the gather scan only sums each chunk's weights.
      st.glo = bottom;
      st.ghi = bottom;
      atomicStore(&gcount, 0u);
      st.phase = PH_GATHER;
    } else {
      st.phase = PH_WALK;
    }
  }
}

// Thread 0, after a refinement scan's reduction: pick the sub-interval holding the threshold.
fn decide(n: u32) {
  st.scans += 1u;
  let wm = st.metric_w != 0u;
  let tot_c = totals[NP];
  let tot_w = bitcast<f32>(totals[NB + NP]);
  if (st.scans == 1u) {
    st.ncand = st.above_c + tot_c;
    if (!wm && st.above_c + tot_c <= st.top_k) {
      // top-k keeps every candidate.
      st.phase = PH_BEGIN;
      return;
    }
    if (wm && st.goal < 0.0) {
      st.goal = st.top_p * (st.above_w + tot_w);
    }
  }
  var j = 0u;
  for (; j < NP; j++) {
    let reached = select(
      st.above_c + totals[j] >= st.top_k,
      st.above_w + bitcast<f32>(totals[NB + j]) >= st.goal,
      wm,
    );
    if (reached) {
      break;
    }
  }
  var prev_c = 0u;
  var prev_w = 0.0;
  var new_hi = st.hi;
  if (j > 0u) {
    prev_c = totals[j - 1u];
    prev_w = bitcast<f32>(totals[NB + j - 1u]);
    new_hi = pivot_bound(j - 1u, n);
  }
  if (j < NP) {
    st.lo = pivot_bound(j, n);
  }
  st.hi = new_hi;
  st.in_c = totals[j] - prev_c;
  st.in_w = bitcast<f32>(totals[NB + j]) - prev_w;
  st.above_c += prev_c;
  st.above_w += prev_w;
  // An estimate that landed in an end gap missed: spread evenly in key next time.
  st.place = select(PL_INTERP, PL_KEY, st.place == PL_INTERP && (j == 0u || j == NP));
  if (st.in_c > CAP && st.scans < MAX_SCANS) {
    st.phase = PH_SCAN;
    return;
  }
  st.glo = st.lo;
  st.valid = st.lo;
  st.ghi = st.hi;
  st.base_w = st.above_w;
  st.want = st.top_k - st.above_c - 1u;
  // top-k: if everything from lo up fits, gather it all, so top-p can work in workgroup memory.
  if (!wm && st.above_c + st.in_c <= CAP) {
    st.ghi = Bound(st.kmax, 0u);
    st.want = st.top_k - 1u;
    st.covered = 1u;
  }
  atomicStore(&gcount, 0u);
  st.phase = PH_GATHER;
}

// Thread 0: the transition after each collective step.
fn step(n: u32) {
  let ph = st.phase;
  if (ph == PH_BEGIN) {
    begin_stage(n);
  } else if (ph == PH_SCAN) {
    decide(n);
  } else if (ph == PH_GATHER) {
    st.gathered = min(atomicLoad(&gcount), CAP);
    st.phase = select(PH_RESOLVE, PH_WALK, st.stage == ST_WALK);
  } else if (ph == PH_RESOLVE) {
    st.has_cut = 1u;
    if (st.stage == ST_K) {
      st.ncand = st.top_k;
    }
    st.phase = PH_BEGIN;
  }
  // A BEGIN straight after a top-k stage without cut is handled on the next pass of the loop.
  if (st.phase == PH_SCAN) {
    make_pivots(n);
  }
  ctl = Ctl(st.phase, st.stage, st.metric_w);
}

// All threads: one refinement scan. Each thread counts (and sums the weights of) its in-interval
// elements at or above each pivot, in registers; then a fixed-order reduction into `totals`.
fn scan(t: u32, wm: bool, base: u32, c0: u32, c1: u32) {
  let idp = st.id_phase != 0u;
  let lo = st.lo;
  let hi = st.hi;
  let m = st.m;
  let temp = st.temp;
  // Pivots and accumulators as vec4s with constant indices: dynamically indexed arrays end up in
  // memory on CPU adapters (about 9x slower here). The 16th "pivot" is 0, which every in-interval
  // element passes: the interval's own count and weight.
  let p0 = vec4<u32>(st.piv[0], st.piv[1], st.piv[2], st.piv[3]);
  let p1 = vec4<u32>(st.piv[4], st.piv[5], st.piv[6], st.piv[7]);
  let p2 = vec4<u32>(st.piv[8], st.piv[9], st.piv[10], st.piv[11]);
  let p3 = vec4<u32>(st.piv[12], st.piv[13], st.piv[14], 0u);
  var n0 = vec4<u32>();
  var n1 = vec4<u32>();
  var n2 = vec4<u32>();
  var n3 = vec4<u32>();
  var w0 = vec4<f32>();
  var w1 = vec4<f32>();
  var w2 = vec4<f32>();
  var w3 = vec4<f32>();
  let one = vec4<u32>(1u);
  let zu = vec4<u32>();
  let zf = vec4<f32>();
  for (var e = c0; e < c1; e++) {
    let v = logits[base + e];
    let key = okey(v);
    if (ge(key, e, lo) && !ge(key, e, hi)) {
      let x = vec4<u32>(select(key, ~e, idp));
      let a0 = x >= p0;
      let a1 = x >= p1;
      let a2 = x >= p2;
      let a3 = x >= p3;
      n0 += select(zu, one, a0);
      n1 += select(zu, one, a1);
      n2 += select(zu, one, a2);
      n3 += select(zu, one, a3);
      if (wm) {
        let we = vec4<f32>(weight(v, m, temp));
        w0 += select(zf, we, a0);
        w1 += select(zf, we, a1);
        w2 += select(zf, we, a2);
        w3 += select(zf, we, a3);
      }
    }
  }
  let c = array<u32, NB>(
    n0.x, n0.y, n0.z, n0.w, n1.x, n1.y, n1.z, n1.w, n2.x, n2.y, n2.z, n2.w, n3.x, n3.y, n3.z, n3.w,
  );
  let w = array<f32, NB>(
    w0.x, w0.y, w0.z, w0.w, w1.x, w1.y, w1.z, w1.w, w2.x, w2.y, w2.z, w2.w, w3.x, w3.y, w3.z, w3.w,
  );
  // Reduce 8 values per round through the pool (counts, then weights).
  let rounds = select(2u, 4u, wm);
  for (var r = 0u; r < rounds; r++) {
    for (var j = 0u; j < 8u; j++) {
      let q = (r & 1u) * 8u + j;
      pool[j * WG + t] = select(c[q], bitcast<u32>(w[q]), r >= 2u);
    }
    workgroupBarrier();
    let src = (t / 32u) * WG + (t % 32u) * 8u;
    if (r < 2u) {
      var acc = 0u;
      for (var i = 0u; i < 8u; i++) {
        acc += pool[src + i];
      }
      small[t] = acc;
    } else {
      var acc = 0.0;
      for (var i = 0u; i < 8u; i++) {
        acc += bitcast<f32>(pool[src + i]);
      }
      small[t] = bitcast<u32>(acc);
    }
    workgroupBarrier();
    if (t < 8u) {
      if (r < 2u) {
        var acc = 0u;
        for (var i = 0u; i < 32u; i++) {
          acc += small[t * 32u + i];
        }
        totals[r * 8u + t] = acc;
      } else {
        var acc = 0.0;
        for (var i = 0u; i < 32u; i++) {
          acc += bitcast<f32>(small[t * 32u + i]);
        }
        totals[NB + (r - 2u) * 8u + t] = bitcast<u32>(acc);
      }
    }
  }
  workgroupBarrier();
}

// All threads: gathers the candidates in [glo, ghi) into the pool and returns this thread's weight
// sum of the candidates at or above ghi (kept whatever the cut inside turns out to be).
fn gather(base: u32, c0: u32, c1: u32) -> f32 {
  let kmax = st.kmax;
  let glo = st.glo;
  let ghi = st.ghi;
  let m = st.m;
  let temp = st.temp;
  var part = 0.0;
  for (var e = c0; e < c1; e++) {
    let v = logits[base + e];
    let key = okey(v);
    if (key <= kmax) {
      if (ge(key, e, ghi)) {
        part += weight(v, m, temp);
      } else if (ge(key, e, glo)) {
        let slot = atomicAdd(&gcount, 1u);
        if (slot < CAP) {
          pool[slot] = key;
          pool[G_ID + slot] = e;
          pool[G_W + slot] = bitcast<u32>(weight(v, m, temp));
        }
      }
    }
  }
  workgroupBarrier();
  return part;
}

// All threads: exact ranks of the gathered elements at or above st.valid (rank order into
// G_PERM), then the cut: by count (top-k: the element of rank st.want) or by weight (top-p: the
// last element whose weight prefix plus st.base_w is below the goal; a negative goal is computed
// here as top_p times the gathered set's total). Writes st.keep and st.cut_rank.
fn resolve(t: u32, by_weight: bool) {
  let m = st.gathered;
  let valid = st.valid;
  let want = st.want;
  let base_w = st.base_w;
  let goal0 = st.goal;
  if (t == 0u) {
    atomicStore(&gbest, 0u);
  }
  var ok = array<bool, SLOTS>();
  var rk = array<u32, SLOTS>();
  var pr = array<f32, SLOTS>();
  var mk = array<u32, SLOTS>();
  var mi = array<u32, SLOTS>();
  for (var q = 0u; q < SLOTS; q++) {
    let i = t + q * WG;
    if (i < m) {
      mk[q] = pool[i];
      mi[q] = pool[G_ID + i];
      ok[q] = ge(mk[q], mi[q], valid);
    }
  }
  var mv = 0u;
  for (var j = 0u; j < m; j++) {
    let kj = pool[j];
    let ij = pool[G_ID + j];
    if (ge(kj, ij, valid)) {
      mv += 1u;
      for (var q = 0u; q < SLOTS; q++) {
        if (kj > mk[q] || (kj == mk[q] && ij < mi[q])) {
          rk[q] += 1u;
        }
      }
    }
  }
  for (var q = 0u; q < SLOTS; q++) {
    if (ok[q]) {
      pool[G_PERM + rk[q]] = t + q * WG;
    }
  }
  workgroupBarrier();
  var best = want;
  if (by_weight) {
    // Weight prefixes in rank order: every thread adds the same sequence, so the prefix of rank
    // r + 1 is exactly the prefix of rank r plus its weight, rounded.
    for (var q = 0u; q < SLOTS; q++) {
      if (ok[q]) {
        var acc = 0.0;
        for (var r = 0u; r < rk[q]; r++) {
          acc += bitcast<f32>(pool[G_W + pool[G_PERM + r]]);
        }
        pr[q] = acc;
        if (goal0 < 0.0 && rk[q] + 1u == mv) {
          st.goal = st.top_p * (base_w + acc + bitcast<f32>(pool[G_W + t + q * WG]));
        }
      }
    }
    let goal = workgroupUniformLoad(&st.goal);
    for (var q = 0u; q < SLOTS; q++) {
      if (ok[q] && base_w + pr[q] < goal) {
        atomicMax(&gbest, rk[q]);
      }
    }
    workgroupBarrier();
    best = atomicLoad(&gbest);
  }
  for (var q = 0u; q < SLOTS; q++) {
    if (ok[q] && rk[q] == best) {
      st.keep = Bound(mk[q], mi[q] + 1u);
      st.cut_rank = best;
    }
  }
  workgroupBarrier();
}

// All threads: totals[b] = the sum of small[16b .. 16b + 16), after small[] is written.
fn block_sums(t: u32) {
  workgroupBarrier();
  if (t < 16u) {
    var acc = 0.0;
    for (var i = 0u; i < 16u; i++) {
      acc += bitcast<f32>(small[t * 16u + i]);
    }
    totals[t] = bitcast<u32>(acc);
  }
  workgroupBarrier();
}

struct Cross {
  i: u32,
  base: f32,
}

// Thread 0: the first i (with a positive small[i]) where start + the prefix of small[] through i
// exceeds goal, and the prefix before it; UNKNOWN if rounding never gets there.
fn find_cross(start: f32, goal: f32) -> Cross {
  var acc = start;
  for (var b = 0u; b < 16u; b++) {
    let blk = bitcast<f32>(totals[b]);
    if (acc + blk > goal) {
      var acc2 = acc;
      for (var i = b * 16u; i < b * 16u + 16u; i++) {
        let q = bitcast<f32>(small[i]);
        if (q > 0.0 && acc2 + q > goal) {
          return Cross(i, acc2);
        }
        acc2 += q;
      }
    }
    acc += blk;
  }
  return Cross(UNKNOWN, 0.0);
}

// Thread 0: the walk's next position: the crossing from find_cross, or (rounding put the goal
// past the end) the last i with kept elements and a goal nothing reaches, so the last kept id.
fn set_walk(start: f32, goal: f32) {
  let c = find_cross(start, goal);
  st.walk_t = c.i;
  st.walk_base = c.base;
  st.walk_goal = goal;
  if (c.i == UNKNOWN) {
    for (var i = 0u; i < WG; i++) {
      if (bitcast<f32>(small[i]) > 0.0) {
        st.walk_t = i;
      }
    }
    st.walk_goal = bitcast<f32>(0x7f7fffffu);
  }
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) t: u32) {
  let row = wid.x;
  let n = p.n;
  let base = row * n;
  let chunk = (n + WG - 1u) / WG;
  let c0 = min(n, t * chunk);
  let c1 = min(n, c0 + chunk);

  // 1. The maximum key (non-NaN keys lie in [KEY_NINF, KEY_PINF]) and its lowest index.
  // Also the least finite key, so the first refinement scan spreads its pivots over the data.
  var bk = 0u;
  var bi = 0xffffffffu;
  var mk = 0xffffffffu;
  for (var e = c0; e < c1; e++) {
    let key = okey(logits[base + e]);
    if (key >= KEY_NINF && key <= KEY_PINF) {
      if (key > bk) {
        bk = key;
        bi = e;
      }
      if (key >= KEY_MIN_FINITE) {
        mk = min(mk, key);
      }
    }
  }
  pool[t] = bk;
  pool[WG + t] = bi;
  pool[2u * WG + t] = mk;
  workgroupBarrier();
  if (t < 16u) {
    var k = pool[t * 16u];
    var i = pool[WG + t * 16u];
    var m = pool[2u * WG + t * 16u];
    for (var q = 1u; q < 16u; q++) {
      let k2 = pool[t * 16u + q];
      let i2 = pool[WG + t * 16u + q];
      if (k2 > k || (k2 == k && i2 < i)) {
        k = k2;
        i = i2;
      }
      m = min(m, pool[2u * WG + t * 16u + q]);
    }
    small[t] = k;
    small[16u + t] = i;
    small[32u + t] = m;
  }
  workgroupBarrier();
  if (t == 0u) {
    var k = small[0];
    var i = small[16];
    var m = small[32];
    for (var q = 1u; q < 16u; q++) {
      let k2 = small[q];
      let i2 = small[16u + q];
      if (k2 > k || (k2 == k && i2 < i)) {
        k = k2;
        i = i2;
      }
      m = min(m, small[32u + q]);
    }
    st.kmin = m;
    let rp = row_params[row];
    st.answer = select(i, 0u, k == 0u);
    let greedy = k == 0u || k == KEY_PINF || k == KEY_NINF || !(rp.temperature > 0.0) || rp.top_k == 1u;
    st.phase = select(PH_BEGIN, PH_DONE, greedy);
    st.stage = ST_NONE;
    st.m = kval(k);
    st.temp = rp.temperature;
    st.top_k = rp.top_k;
    st.top_p = rp.top_p;
    st.u = rp.u;
    st.kmax = k;
    st.kc = max(okey(st.m - CUTOFF * rp.temperature), KEY_MIN_FINITE);
    st.keep = Bound(st.kc, n);
    st.has_cut = 0u;
    st.covered = 0u;
    st.ncand = UNKNOWN;
    ctl = Ctl(st.phase, st.stage, st.metric_w);
  }

  // 2. The cuts: refinement scans, gathers and resolutions, as thread 0 sequences them.
  var part = 0.0;
  loop {
    let c = workgroupUniformLoad(&ctl);
    if (c.phase >= PH_WALK) {
      break;
    }
    if (c.phase == PH_SCAN) {
      scan(t, c.metric_w != 0u, base, c0, c1);
    } else if (c.phase == PH_GATHER) {
      part = gather(base, c0, c1);
    } else if (c.phase == PH_RESOLVE) {
      resolve(t, c.stage == ST_P);
    }
    if (t == 0u) {
      step(n);
    }
  }
  if (workgroupUniformLoad(&ctl.phase) == PH_DONE) {
    if (t == 0u) {
      ids[row] = st.answer;
    }
    return;
  }
  let kmax = st.kmax;
  let keep = st.keep;
  let m = st.m;
  let temp = st.temp;

  // 3. The walk over the kept set in id order. The gathered kept elements join their chunks'
  // sums (in rank order, so the sums are deterministic).
  if (st.has_cut != 0u) {
    let cut_rank = st.cut_rank;
    for (var r = 0u; r <= cut_rank; r++) {
      let g = pool[G_PERM + r];
      let id = pool[G_ID + g];
      if (id >= c0 && id < c1) {
        part += bitcast<f32>(pool[G_W + g]);
      }
    }
  }
  small[t] = bitcast<u32>(part);
  block_sums(t);
  if (t == 0u) {
    var total = 0.0;
    for (var b = 0u; b < 16u; b++) {
      total += bitcast<f32>(totals[b]);
    }
    set_walk(0.0, st.u * total);
  }
  workgroupBarrier();
  // Rescan the crossing chunk, each thread a consecutive slice of it.
  let w0 = st.walk_t * chunk;
  let w1 = min(n, w0 + chunk);
  let slice = (chunk + WG - 1u) / WG;
  let e0 = min(w1, w0 + t * slice);
  let e1 = min(w1, e0 + slice);
  var q = 0.0;
  for (var e = e0; e < e1; e++) {
    let v = logits[base + e];
    let key = okey(v);
    if (key <= kmax && ge(key, e, keep)) {
      q += weight(v, m, temp);
    }
  }
  small[t] = bitcast<u32>(q);
  block_sums(t);
  if (t == 0u) {
    set_walk(st.walk_base, st.walk_goal);
  }
  workgroupBarrier();
  if (t == st.walk_t) {
    var run = st.walk_base;
    let goal = st.walk_goal;
    var last = UNKNOWN;
    var answer = UNKNOWN;
    for (var e = e0; e < e1; e++) {
      let v = logits[base + e];
      let key = okey(v);
      if (key <= kmax && ge(key, e, keep)) {
        last = e;
        run += weight(v, m, temp);
        if (run > goal) {
          answer = e;
          break;
        }
      }
    }
    ids[row] = select(answer, last, answer == UNKNOWN);
  }
}
