// quantize_q4: round-to-nearest int4 quantization of one part of a tiled float weight (f32, f16 or
// bf16; common/tiled.wgsl layout) into the packed layout of src/quant/q4.ts (`packQ4`), at load
// time. The result must equal the CPU's `packQ4(quantizeRtn(w))` bit for bit, so every decision
// that depends on rounding is made in exact integer arithmetic on the values' bits:
//   - max|w| (and the largest positive and negative values) by integer max of the magnitude bits:
//     exact, and immune to a flush of subnormals that float compares could suffer;
//   - the scale is the smallest f32 (or f16) s with d·s ≥ max|w| (d = 7), or d·s ≥ hi − lo
//     (d = 15), which is what the CPU's float64 division rounded UP gives, with one exception: the
//     CPU rounds hi − lo to float64 first, which changes the result only when one of hi, −lo is
//     tiny next to the other (their bit spans 53+ apart); then s is the smallest with 15·s ≥ big,
//     or 15·s > big when the small one survived that rounding (see `scale_bits`). s comes from an
//     f32 estimate, then is stepped one representable value at a time until the exact test
//     `covers` flips (a couple of steps: the estimate is within a few ulps);
//   - zero points and codes are round-half-up(v / s) (JS Math.round of the float64 quotient, which
//     cannot land on a false tie: a quotient that is not a tie is at least 2^-25 away from one,
//     float64's error is below 2^-48), from an f32 estimate; an estimate within 2^-10 of a tie is
//     settled by comparing 2|v| with s·(2r + 1) exactly.
// Floats serve only as estimates that the integer checks correct, so the output does not depend on
// the adapter's division accuracy (WGSL allows 2.5 ulp), rounding mode or flushing of subnormals.
// Format choices (group size, zero points, scale type, input dtype) are uniforms, not constants:
// this runs once per weight at load time, and one pipeline compiles once (lavapipe compiles slowly).
// Measured on lavapipe (2 cores), a 4864 × 896 bf16 matrix: 60 ms (g128 sym) to 140 ms (g32 asym),
// against 190 to 450 ms for quantizeRtn + packQ4 on the CPU.
//
// Bindings: params; src: the part's tiled words; qw: codes (16-byte words tiled by 8 rows);
// scales: f32, or f16 pairs (two groups of a row per u32), tiled like the words; zeros: eight
// groups of a row per u32 (asymmetric only; a placeholder otherwise); status: [flags, first row
// with a non-finite value, first row whose scale overflows f16, 0], set with atomics. The outputs
// start zeroed (fresh buffers): scale and zero words are shared by 2 or 8 groups, so each group's
// thread ORs its bits in, and padding rows and groups stay zero as packQ4 leaves them.
// Work: one thread per (row, group), in the tiled order ((n/8)·G + g)·8 + n%8, so the 8 threads
// of a tile row read 128 contiguous input bytes per step and an f32 scale's index is the thread id.

struct Params {
  // rows of this part, K, input 16-byte words per row, groups per row, group size
  rows: u32,
  k: u32,
  kw: u32,
  groups: u32,
  gs: u32,
  // input dtype: 0 f32, 1 f16, 2 bf16
  dtype: u32,
  // bit 0: asymmetric (zero points); bit 1: f16 scales
  flags: u32,
  // first row of this part in the whole matrix (for error reports)
  row_start: u32,
  grid_x: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read_write> qw: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read_write> scales: array<atomic<u32>>;
@group(0) @binding(4) var<storage, read_write> zeros: array<atomic<u32>>;
@group(0) @binding(5) var<storage, read_write> status: array<atomic<u32>>;

const FLAG_NONFINITE: u32 = 1u;
const FLAG_F16_OVERFLOW: u32 = 2u;
const FLAG_NO_CONVERGENCE: u32 = 4u;
const F32_INF: u32 = 0x7f800000u;
const F16_INF: u32 = 0x7c00u;

// IEEE half bits → the f32 bits of the same value (exact; subnormal halves become normal f32s).
// Integer-only: a float conversion might flush half subnormals.
fn f16_to_f32_bits(h: vec4<u32>) -> vec4<u32> {
  let sign = (h & vec4<u32>(0x8000u)) << vec4<u32>(16u);
  let e = (h >> vec4<u32>(10u)) & vec4<u32>(0x1fu);
  let m = h & vec4<u32>(0x3ffu);
  let normal = ((e + 112u) << vec4<u32>(23u)) | (m << vec4<u32>(13u));
  let special = vec4<u32>(F32_INF) | (m << vec4<u32>(13u));
  // m·2^-24 with m's top bit at l: exponent l − 24, the bits below l as the fraction.
  let l = vec4<u32>(31u) - countLeadingZeros(m);
  let sub = ((l + 103u) << vec4<u32>(23u)) | ((m << (vec4<u32>(23u) - l)) & vec4<u32>(0x7fffffu));
  var r = select(normal, special, e == vec4<u32>(31u));
  r = select(r, sub, (e == vec4<u32>(0u)) & (m != vec4<u32>(0u)));
  r = select(r, vec4<u32>(0u), (e == vec4<u32>(0u)) & (m == vec4<u32>(0u)));
  return r | sign;
}

// Elements k0..k0+7 (k0 a multiple of 8) of row n as f32 bit patterns, in two vec4s.
struct Eight {
  a: vec4<u32>,
  b: vec4<u32>,
}

fn load8(n: u32, k0: u32) -> Eight {
  let base = (n >> 3u) * p.kw * 8u + (n & 7u);
  if (p.dtype == 0u) {
    let i = k0 / 4u;
    return Eight(src[base + i * 8u], src[base + (i + 1u) * 8u]);
  }
  let w = src[base + (k0 / 8u) * 8u];
  // Element 2j is the low half of u32 j.
  var lo = w & vec4<u32>(0xffffu);
  var hi = w >> vec4<u32>(16u);
  if (p.dtype == 2u) {
    lo = lo << vec4<u32>(16u);
    hi = hi << vec4<u32>(16u);
  } else {
    lo = f16_to_f32_bits(lo);
    hi = f16_to_f32_bits(hi);
  }
  return Eight(vec4<u32>(lo.x, hi.x, lo.y, hi.y), vec4<u32>(lo.z, hi.z, lo.w, hi.w));
}

// A non-negative f32 (bits) as m·2^e with m < 2^24 an integer.
fn f32_mant(b: u32) -> u32 {
  return select(b & 0x7fffffu, (b & 0x7fffffu) | 0x800000u, (b >> 23u) != 0u);
}
fn f32_exp(b: u32) -> i32 {
  return i32(max(b >> 23u, 1u)) - 150;
}

// Sign of m1·2^e1 − m2·2^e2 (any u32 m): both normalized to a top bit of 31, then exponents, then
// mantissas.
fn cmp_me(m1: u32, e1: i32, m2: u32, e2: i32) -> i32 {
  if (m1 == 0u || m2 == 0u) {
    return select(0, 1, m1 != 0u) - select(0, 1, m2 != 0u);
  }
  let l1 = countLeadingZeros(m1);
  let l2 = countLeadingZeros(m2);
  let x1 = e1 - i32(l1);
  let x2 = e2 - i32(l2);
  if (x1 != x2) {
    return select(-1, 1, x1 > x2);
  }
  let n1 = m1 << l1;
  let n2 = m2 << l2;
  return select(select(0, 1, n1 > n2), -1, n1 < n2);
}

// Whether a·2^ea ≥ b·2^eb + c·2^ec (> when `strict`), exactly, for a, b < 2^29 and c·2^ec ≤
// b·2^eb. a and b are normalized into [2^29, 2^30); if their exponents differ by 2 or more the
// answer is plain (the sum is below 2·b), else a − b is exact in an i32 and is compared with c.
fn covers(a: u32, ea: i32, b: u32, eb: i32, c: u32, ec: i32, strict: bool) -> bool {
  if (b == 0u) {
    let s = cmp_me(a, ea, c, ec);
    return select(s >= 0, s > 0, strict);
  }
  if (a == 0u) {
    return false;
  }
  let la = countLeadingZeros(a) - 2u;
  let lb = countLeadingZeros(b) - 2u;
  let xa = ea - i32(la);
  let xb = eb - i32(lb);
  if (xa >= xb + 2) {
    return true;
  }
  if (xb >= xa + 2) {
    return false;
  }
  let lo = min(xa, xb);
  let diff = i32((a << la) << u32(xa - lo)) - i32((b << lb) << u32(xb - lo));
  if (diff < 0) {
    return false;
  }
  let s = cmp_me(u32(diff), lo, c, ec);
  return select(s >= 0, s > 0, strict);
}

// The scale's storage bits (f32 or f16) as m·2^e.
fn scale_mant(b: u32, f16s: bool) -> u32 {
  if (f16s) {
    return select(b & 0x3ffu, (b & 0x3ffu) | 0x400u, (b >> 10u) != 0u);
  }
  return f32_mant(b);
}
fn scale_exp(b: u32, f16s: bool) -> i32 {
  if (f16s) {
    return i32(max(b >> 10u, 1u)) - 25;
  }
  return f32_exp(b);
}

// Target of the scale: s must satisfy d·s ≥ big + small (strict: d·s > big, small unused).
struct Target {
  d: u32,
  mb: u32,
  eb: i32,
  mc: u32,
  ec: i32,
  strict: bool,
}

fn scale_ok(bits: u32, f16s: bool, t: Target) -> bool {
  return covers(t.d * scale_mant(bits, f16s), scale_exp(bits, f16s), t.mb, t.eb, t.mc, t.ec, t.strict);
}

// Storage bits of the smallest f32 (f16) s with d·s ≥ big + small, big ≥ small ≥ 0 given as f32
// bits: the scale `quantizeRtn` stores (d = 7, small = 0: max|w| / 7; d = 15: (hi − lo) / 15).
// The CPU computes hi − lo in float64. When the two values' bits span at most 53 positions (top
// bit of big to the lowest bit of small), that sum is exact and the float64 quotient never lands
// on the wrong side of an f32 or f16 value, so the exact rule holds. Wider, the sum rounds to big
// plus t units of 2^(top − 52), and t > 0 exactly when small > 2^(top − 53) (a tie goes to even,
// t = 0); either way the rounded-up quotient is the smallest s with 15·s ≥ big (t = 0) or
// 15·s > big (t > 0): the perturbation is too small to reach the next f32 above big / 15, yet
// more than float64's half-ulp of it.
fn scale_bits(d: u32, big: u32, small: u32, f16s: bool) -> u32 {
  if (big == 0u) {
    return 0u;
  }
  let mb = f32_mant(big);
  let eb = f32_exp(big);
  var t = Target(d, mb, eb, 0u, 0, false);
  if (small != 0u) {
    let ms = f32_mant(small);
    let es = f32_exp(small);
    let top = eb + 31 - i32(countLeadingZeros(mb));
    if (top - es <= 52) {
      t.mc = ms;
      t.ec = es;
    } else {
      t.strict = cmp_me(ms, es, 1u, top - 53) > 0;
    }
  }
  // Estimate: (mb + small / 2^eb) / d in f32 (a normal number, no flush), then its exponent moved
  // by eb into the target format, fraction truncated.
  let xa = (f32(mb) + ldexp(f32(t.mc), max(t.ec - eb, -150))) / f32(d);
  let xb = bitcast<u32>(xa);
  let frac = xb & 0x7fffffu;
  let inf = select(F32_INF, F16_INF, f16s);
  var b: u32;
  if (f16s) {
    let be = i32(xb >> 23u) + eb - 112;
    if (be >= 31) {
      b = F16_INF;
    } else if (be >= 1) {
      b = (u32(be) << 10u) | (frac >> 13u);
    } else {
      let sh = u32(1 - be);
      b = select(0u, ((frac | 0x800000u) >> 13u) >> sh, sh < 32u);
    }
  } else {
    let be = i32(xb >> 23u) + eb;
    if (be >= 255) {
      b = F32_INF - 1u;
    } else if (be >= 1) {
      b = (u32(be) << 23u) | frac;
    } else {
      let sh = u32(1 - be);
      b = select(0u, (frac | 0x800000u) >> sh, sh < 32u);
    }
  }
  // Exact fix-up: up to the first value that covers, then down while the one below still does.
  var steps = 0u;
  while (b < inf && !scale_ok(b, f16s, t) && steps < 64u) {
    b++;
    steps++;
  }
  while (b > 0u && scale_ok(b - 1u, f16s, t) && steps < 64u) {
    b--;
    steps++;
  }
  if (steps >= 64u) {
    atomicOr(&status[0], FLAG_NO_CONVERGENCE);
  }
  return b;
}

// A scale as the kernel of this shader uses it: m·2^e, and 1 / m for the estimates.
struct Scale {
  m: u32,
  e: i32,
  inv: f32,
}

// round-half-up(v / s) (JS Math.round: ties toward +∞) for four values given as f32 bits, s > 0.
// The estimate t = |v| / s is within 2^-18 of the truth (|v| / s ≤ 15); only an estimate within
// 2^-10 of a tie is checked exactly: 2|v| against s·(2⌊t⌋ + 1), a tie rounding up for v ≥ 0 and
// toward zero (up, in value) for v < 0.
fn round4(bits: vec4<u32>, s: Scale) -> vec4<i32> {
  let mag = bits & vec4<u32>(0x7fffffffu);
  let biased = mag >> vec4<u32>(23u);
  let mv = select(mag & vec4<u32>(0x7fffffu), (mag & vec4<u32>(0x7fffffu)) | vec4<u32>(0x800000u),
                  biased != vec4<u32>(0u));
  let ev = vec4<i32>(max(biased, vec4<u32>(1u))) - vec4<i32>(150);
  let t = ldexp(vec4<f32>(mv) * s.inv, max(ev - vec4<i32>(s.e), vec4<i32>(-150)));
  let fl = floor(t);
  var r = vec4<u32>(floor(t + 0.5));
  let near = abs(t - fl - 0.5) < vec4<f32>(0.0009765625);
  let neg = (bits >> vec4<u32>(31u)) != vec4<u32>(0u);
  if (any(near)) {
    for (var c = 0u; c < 4u; c++) {
      if (near[c]) {
        let f = min(u32(fl[c]), 63u);
        let cmp = cmp_me(mv[c], ev[c] + 1, s.m * (2u * f + 1u), s.e);
        r[c] = f + select(u32(cmp >= 0), u32(cmp > 0), neg[c]);
      }
    }
  }
  return select(vec4<i32>(r), -vec4<i32>(r), neg);
}

// Codes of 8 elements, 4 bits each from the low nibble: clamp(round(v / s) + z, 0, 15), or z for
// an all-zero group (s = 0).
fn pack8(e: Eight, s: Scale, z: i32, zero_scale: bool) -> u32 {
  var qa = vec4<i32>(z);
  var qb = vec4<i32>(z);
  if (!zero_scale) {
    qa = clamp(round4(e.a, s) + z, vec4<i32>(0), vec4<i32>(15));
    qb = clamp(round4(e.b, s) + z, vec4<i32>(0), vec4<i32>(15));
  }
  let ua = vec4<u32>(qa) << vec4<u32>(0u, 4u, 8u, 12u);
  let ub = vec4<u32>(qb) << vec4<u32>(16u, 20u, 24u, 28u);
  let u = ua | ub;
  return u.x | u.y | u.z | u.w;
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let id = gid.y * p.grid_x * 64u + gid.x;
  let tile_row = id & 7u;
  let rest = id >> 3u;
  let g = rest % p.groups;
  let n = (rest / p.groups) * 8u + tile_row;
  if (n >= p.rows) {
    return;
  }
  let asym = (p.flags & 1u) != 0u;
  let f16s = (p.flags & 2u) != 0u;
  let k0 = g * p.gs;

  // Pass 1: the largest magnitude among non-negative and among negative values (bits order like
  // values for one sign), and whether any value is NaN or ±Inf.
  var pos = vec4<u32>(0u);
  var neg = vec4<u32>(0u);
  var bad = false;
  for (var k = k0; k < k0 + p.gs; k += 8u) {
    let e = load8(n, k);
    for (var h = 0u; h < 2u; h++) {
      let v = select(e.a, e.b, h == 1u);
      let mag = v & vec4<u32>(0x7fffffffu);
      bad = bad || any(mag >= vec4<u32>(F32_INF));
      let is_neg = (v >> vec4<u32>(31u)) != vec4<u32>(0u);
      pos = max(pos, select(mag, vec4<u32>(0u), is_neg));
      neg = max(neg, select(vec4<u32>(0u), mag, is_neg));
    }
  }
  if (bad) {
    atomicOr(&status[0], FLAG_NONFINITE);
    atomicMin(&status[1], p.row_start + n);
    return;
  }
  let hi = max(max(pos.x, pos.y), max(pos.z, pos.w));
  let lo = max(max(neg.x, neg.y), max(neg.z, neg.w));

  // The scale (as stored), and the zero point: 8, or round(−lo / s) clamped to 15.
  var sb: u32;
  if (asym) {
    sb = scale_bits(15u, max(hi, lo), min(hi, lo), f16s);
  } else {
    sb = scale_bits(7u, max(hi, lo), 0u, f16s);
  }
  if (f16s && sb >= F16_INF) {
    atomicOr(&status[0], FLAG_F16_OVERFLOW);
    atomicMin(&status[2], p.row_start + n);
    return;
  }
  let sm = scale_mant(sb, f16s);
  let s = Scale(sm, scale_exp(sb, f16s), 1.0 / f32(max(sm, 1u)));
  let zero_scale = sb == 0u;
  var z = 8;
  if (asym) {
    z = 0;
    if (!zero_scale) {
      z = min(round4(vec4<u32>(lo), s).x, 15);
    }
  }

  // Pass 2: codes, a 16-byte word (32 k) at a time, at word (n/8)·(K/32) + k/32)·8 + n%8.
  let wpr = p.k / 32u;
  let wbase = (n >> 3u) * wpr * 8u + (n & 7u);
  for (var k = k0; k < k0 + p.gs; k += 32u) {
    let w = vec4<u32>(
      pack8(load8(n, k), s, z, zero_scale),
      pack8(load8(n, k + 8u), s, z, zero_scale),
      pack8(load8(n, k + 16u), s, z, zero_scale),
      pack8(load8(n, k + 24u), s, z, zero_scale),
    );
    qw[wbase + (k / 32u) * 8u] = w;
  }

  // Scale and zero words (layouts of q4GroupIndex, q4HalfScaleIndex, q4ZeroIndex).
  let tile = n >> 3u;
  if (f16s) {
    let word = (tile * ((p.groups + 1u) / 2u) + g / 2u) * 8u + (n & 7u);
    atomicOr(&scales[word], sb << (16u * (g & 1u)));
  } else {
    atomicStore(&scales[id], sb);
  }
  if (asym) {
    let word = (tile * ((p.groups + 7u) / 8u) + g / 8u) * 8u + (n & 7u);
    atomicOr(&zeros[word], u32(z) << (4u * (g & 7u)));
  }
}
