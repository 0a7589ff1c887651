// gptq_quant_g{GS}: one group of GPTQ's column sweep (src/kernels/gptq.ts) for every row at once,
// one thread per row, in the V form of src/quant/gptq-solver.ts (see its file comment): with V the
// upper triangular factor of H = V·Vᵀ and e_k = w_k − ŵ_k the error of every column already
// quantized, column m of a row is quantized from
//     w̃_m = w_m + (Σ_{k<m} e_k·V_km) / V_mm.
// gptq_gemm has already summed the columns before the group, acc[m] = Σ_{k<j0} e_k·V_km; this
// kernel adds the group's own columns as their errors become known. The group's scale and zero
// point come first, by the round-to-nearest rule of quantizeRtn on the group's weights as GPTQ
// has compensated them when the group starts: w_G + x with x·V_GG = acc_G (forward substitution).
// V is read through strides, V_km = v[v_off + k·v_sk + m·v_sm] and V_mm = vd[d_off + m·d_sk] (u32,
// wrapping): from the dense factor L of the reversed matrix (V_km = L[n−1−k, n−1−m]), or from the
// blocks of V near the diagonal and the diagonal that the low-rank solve computes.
// Prepended with common/broadcast8.wgsl and `const GS` (the group size). Why this shape (lavapipe,
// where every lane's load is a separate scalar load and a dynamically indexed private array lives
// in memory): V_GG is the same for every row, so lane ℓ of each 8 loads V(j0 + 8c + ℓ, j0 + i) and
// the 8 entries reach every lane by subgroupBroadcast (GS²/8 loads per lane instead of GS² per
// loop); every loop has a constant trip count over arrays of that length, so it unrolls and the
// row's w, acc, x and e stay in registers. Measured on lavapipe, down_proj (896 rows, 152 groups):
// 0.4–0.6 s for all groups, from 1.2–1.6 s with per-lane V loads and dynamic loops. All lanes run
// to the end (the broadcasts need uniform control flow); rows past the end store nothing.
// The weight buffer holds w on entry and e on exit (the next groups' gptq_gemm reads e there);
// dead columns (see gptq_damp) count as w = 0.
// Stored scales as quantizeRtn stores them: rounded up to f32 (the quotient is nudged up one ulp
// when it fell short) or to the next f16 (exactly, from the bits); an f16 scale past 65504 sets
// status bit 2 and records its row in status[1]. Codes are round-half-up(w̃ / s) + z clamped to
// 0..15, z for an all-zero group (s = 0); e = w − (q − z)·s with the product rounded to f32, as
// `dequantize` computes it.
// Bindings: params, w (rows × n f32, row-major), v (see above), acc (rows × gs), codes (8 per u32,
// row-major, low nibble first), qp ((scale bits, zero) per row and group), dead [n], status,
// vd (the diagonal of V, see d_off).

struct Params {
  rows: u32,
  n: u32,
  j0: u32,
  groups: u32,
  // bit 0: asymmetric (zero points); bit 1: f16 scales
  flags: u32,
  grid_x: u32,
  // row of the whole matrix this chunk starts at (for error reports)
  row_start: u32,
  v_off: u32,
  v_sk: u32,
  v_sm: u32,
  // V_mm = vd[d_off + m·d_sk]
  d_off: u32,
  d_sk: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> w: array<f32>;
@group(0) @binding(2) var<storage, read> v: array<f32>;
@group(0) @binding(3) var<storage, read> acc: array<f32>;
@group(0) @binding(4) var<storage, read_write> codes: array<u32>;
@group(0) @binding(5) var<storage, read_write> qp: array<u32>;
@group(0) @binding(6) var<storage, read> dead: array<u32>;
@group(0) @binding(7) var<storage, read_write> status: array<atomic<u32>>;
@group(0) @binding(8) var<storage, read> vd: array<f32>;

const FLAG_F16_OVERFLOW: u32 = 4u;
const NC: u32 = GS / 8u;

fn v_at(k: u32, m: u32) -> f32 {
  return v[p.v_off + k * p.v_sk + m * p.v_sm];
}

// num / d (num ≥ 0, d = 7 or 15) rounded up to f32: the quotient, one ulp up if it fell short.
fn scale_f32(num: f32, d: f32) -> f32 {
  let s = num / d;
  if (s > 0.0 && s * d < num) {
    return bitcast<f32>(bitcast<u32>(s) + 1u);
  }
  return s;
}

// The smallest f16 value ≥ x (x ≥ 0 finite), as an f32, from the bits; 65536 (past the f16 range)
// when x > 65504.
fn f16_up(x: f32) -> f32 {
  let b = bitcast<u32>(x);
  if (b == 0u) {
    return 0.0;
  }
  let e = i32(b >> 23u) - 127;
  let m = (b & 0x7fffffu) | select(0x800000u, 0u, (b >> 23u) == 0u);
  var h: u32;
  if (e >= -14) {
    // Normal f16: 10 fraction bits kept, any dropped bit rounds up (a carry moves the exponent).
    h = (u32(e + 15) << 10u) | ((m >> 13u) & 0x3ffu);
    if ((m & 0x1fffu) != 0u) {
      h += 1u;
    }
  } else {
    // Subnormal f16: x / 2^-24 rounded up, x = m·2^(e − 23).
    let sh = u32(min(-1 - e, 31));
    h = m >> sh;
    if ((m & ((1u << sh) - 1u)) != 0u) {
      h += 1u;
    }
  }
  if (h >= 0x7c00u) {
    return 65536.0;
  }
  if ((h >> 10u) == 0u) {
    return f32(h) * 5.9604644775390625e-8;
  }
  return bitcast<f32>((((h >> 10u) + 112u) << 23u) | ((h & 0x3ffu) << 13u));
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(subgroup_invocation_id) sg_lane: u32) {
  let lane = sg_lane & 7u;
  // Rows past the end compute on the last row and store nothing.
  let live = gid.y * p.grid_x * 64u + gid.x < p.rows;
  let r = min(gid.y * p.grid_x * 64u + gid.x, p.rows - 1u);
  let n = p.n;
  let j0 = p.j0;
  let wrow = r * n;
  let arow = r * GS;

  // The group's block of V, spread over the lanes: vl[c][i] = V(j0 + 8c + lane, j0 + i), so one
  // load per lane brings 8 entries that every row needs (V is the same for all rows).
  var vl: array<array<f32, GS>, NC>;
  var dl: array<u32, NC>;
  var dg: array<f32, NC>;
  for (var c = 0u; c < NC; c++) {
    let k = j0 + 8u * c + lane;
    for (var i = 0u; i < GS; i++) {
      vl[c][i] = v_at(k, j0 + i);
    }
    dl[c] = dead[k];
    dg[c] = vd[p.d_off + k * p.d_sk];
  }
  var wv: array<f32, GS>;
  var av: array<f32, GS>;
  var vdiag: array<f32, GS>;
  for (var c = 0u; c < NC; c++) {
    let dead8 = broadcast8(f32(dl[c]));
    let diag8 = broadcast8(dg[c]);
    for (var j = 0u; j < 8u; j++) {
      let i = 8u * c + j;
      wv[i] = select(w[wrow + j0 + i], 0.0, dead8[j] != 0.0);
      av[i] = acc[arow + i];
      vdiag[i] = diag8[j];
    }
  }

  // The group as compensated so far, for its parameters: x·V_GG = acc_G, w̃ = w + x.
  var x: array<f32, GS>;
  var hi = 0.0;
  var lo = 0.0;
  for (var i = 0u; i < GS; i++) {
    var s = av[i];
    for (var c = 0u; c < NC; c++) {
      let v8 = broadcast8(vl[c][i]);
      for (var j = 0u; j < 8u; j++) {
        if (8u * c + j < i) {
          s -= x[8u * c + j] * v8[j];
        }
      }
    }
    let xm = s / vdiag[i];
    x[i] = xm;
    let cur = wv[i] + xm;
    hi = max(hi, cur);
    lo = min(lo, cur);
  }
  let asym = (p.flags & 1u) != 0u;
  var sc: f32;
  var z = 8.0;
  if (asym) {
    sc = scale_f32(hi - lo, 15.0);
  } else {
    sc = scale_f32(max(-lo, hi), 7.0);
  }
  if ((p.flags & 2u) != 0u) {
    sc = f16_up(sc);
    if (sc > 65504.0 && live) {
      atomicOr(&status[0], FLAG_F16_OVERFLOW);
      atomicMin(&status[1], p.row_start + r);
    }
  }
  if (asym) {
    z = select(0.0, min(15.0, floor(-lo / sc + 0.5)), sc > 0.0);
  }
  // An all-zero group (s = 0) codes every weight as z; 1 / s is then never used.
  let inv = select(0.0, 1.0, sc > 0.0);
  let sdiv = select(1.0, sc, sc > 0.0);

  // Column by column: compensate with the group's own earlier errors, round, record e.
  var e: array<f32, GS>;
  var words: array<u32, NC>;
  for (var c = 0u; c < NC; c++) {
    words[c] = 0u;
  }
  for (var i = 0u; i < GS; i++) {
    var s = av[i];
    for (var c = 0u; c < NC; c++) {
      let v8 = broadcast8(vl[c][i]);
      for (var j = 0u; j < 8u; j++) {
        if (8u * c + j < i) {
          s += e[8u * c + j] * v8[j];
        }
      }
    }
    let wm = wv[i];
    let q = clamp(inv * floor((wm + s / vdiag[i]) / sdiv + 0.5) + z, 0.0, 15.0);
    e[i] = wm - (q - z) * sc;
    words[i / 8u] |= u32(q) << (4u * (i % 8u));
  }
  if (live) {
    for (var i = 0u; i < GS; i++) {
      w[wrow + j0 + i] = e[i];
    }
    for (var c = 0u; c < NC; c++) {
      codes[(wrow + j0) / 8u + c] = words[c];
    }
    let g = (r * p.groups + j0 / GS) * 2u;
    qp[g] = bitcast<u32>(sc);
    qp[g + 1u] = u32(z);
  }
}
