// matmul_q4: Y[m, col_offset + n] (+)= X[m, :] · W[n, :] (+ bias[col_offset + n]) for the rows n
// of one part of an int4 group-wise weight (src/quant/q4.ts: W[n, k] = (q − z)·s per group).
//
// Module constants prepended by src/kernels/matmul-q4.ts (the pipeline label names them all):
//   WG    threads per workgroup (64 by default; 16, 32, 128 are tuner candidates);
//   R     output rows per thread (1, 2, 4): rows n0 + WG·r, so the 8 lanes of a SIMD group stay on
//         8 consecutive rows (one tile of the layout) and read 128 contiguous bytes per step;
//   MT    rows of X per workgroup (1, 4, 8): each weight word is loaded once and used MT times;
//   GS    group size (32, 64, 128); ASYM: zero points from `zeros`, else z = 8; F16S: f16 scales;
//   XC    vec4s of one X row per chunk of K (a multiple of GS / 4).
// They are `const`, not `override`: the pipeline cache compiles WGSL text per variant, and consts
// fold before code generation, so every loop over R, MT and the 8 nibbles has a constant trip count
// and unrolls into straight-line code (llvmpipe puts dynamically indexed local arrays in memory).
//
// Bindings (layouts in src/quant/q4.ts): params (uniform); qw: codes, 16-byte words tiled by 8
// rows (word i of row n at ((n/8)·K/32 + i)·8 + n%8; u32 j of a word holds k = 8j..8j+7, low
// nibble first); scales: f32 at ((n/8)·G + g)·8 + n%8, or f16 with groups 2j, 2j+1 of row n in u32
// ((n/8)·⌈G/2⌉ + j)·8 + n%8; zeros: groups 8j..8j+7 of row n in the nibbles of u32
// ((n/8)·⌈G/8⌉ + j)·8 + n%8 (a placeholder when symmetric); x [m, k] f32; y [m, n_total] f32;
// bias [n_total] f32 (a placeholder when flags bit 0 is clear); with the RMSNorm folded in (variant
// suffix `_rms`: MT = 1 and the subgroup X path, X the raw residual rows), the norm weight [k] f32
// at binding 7 (common/rms_fold.wgsl, which the X fragment's `x_lane` applies; common/rms_none.wgsl
// otherwise).
//
// Prepended with an X fragment that says where X comes from (x_init, x_stage, x_sync, x_lane,
// x_lane_sum, x_pair0..3, x_group_sum): common/q4_x_plain.wgsl stages X in workgroup memory,
// common/q4_x_subgroup.wgsl reads it straight from `x` and broadcasts it across subgroup lanes.
// And with a dequant fragment that says how codes become numbers (X_SCALE, DQ_ZERO_FOLDED, DqZero,
// dq_zero, dq): common/q4_dequant_f32.wgsl masks nibbles in place and converts u32 → f32 (any
// adapter); common/q4_dequant_f16.wgsl (variant suffix `_h`, needs shader-f16) is the "0x6400
// magic" of FasterTransformer / MARLIN: AND, OR into the mantissa of the f16 1024.0, and one f16
// subtraction of 1024 + z that yields q − z exactly, so the zero point is folded (DQ_ZERO_FOLDED)
// and the −s·z·Σx term and Σx disappear. Either way `dq` hands out exact small integers as f32,
// and every product and sum is f32.
//
// Work: a workgroup of WG threads owns WG·R consecutive output rows and MT rows of X, walking K in
// chunks of XC vec4s (the plain fragment's staging unit, ping-pong: chunk c+1 is staged into the
// other half while chunk c is read, so one barrier per chunk suffices). Per group the kernel
// accumulates only the raw Σq·x in f32 and adds s·Σq·x − s·z·Σx, Σx being summed once per
// workgroup (staged) or per subgroup (direct): the inner loop is mask, convert, multiply-add
// (f16 dequant: Σ(q − z)·x and s·Σ(q − z)·x; AND, OR, f16 subtract, f16 → f32, multiply-add).
// Each lane streams its rows' 16-byte weight words; every weight word is used for MT rows of X
// and every X value for R rows.
// Measured on lavapipe (llvmpipe): inside a loop every lane's load is a separate masked scalar load,
// whatever its address, so the kernel is bound by the number of per-lane loads; and a barrier turns
// the shader into a coroutine whose loop state lives in memory. Hence the subgroup fragment (one
// vec4 of X per lane per word, broadcast; no workgroup memory, no barrier), scales and zero points
// packed for several groups per u32, and R = 4 at M = 1. The f16 dequant is SLOWER there, most
// likely because this x86 CPU has no f16 arithmetic (no AVX512-FP16), so LLVM lowers each f16
// subtraction to convert, f32 subtract, convert back, on top of the f16 → f32 conversion and the
// 16-bit lane shuffles of the bitcasts (the generated code was not inspected). Measured (2 shared
// cores under load from other jobs, g32 sym f16 scales, subgroup path, 10 alternating rounds of
// 5 runs, best median f32 → f16 ms): Llama-3.2-1B gate_up 16384×2048 M=1 11.7 → 24.0, M=16
// 212 → 304; 8192×2048 M=1 4.0 → 10.6, M=16 54 → 93; down 2048×8192 M=1 10.0 → 14.1, M=16
// 63 → 100; median per-round f16/f32 ratio 1.2–2.4 (asym g32: 1.3–1.9). In one-off experiments
// (down, 6 rounds; not included) subtracting in f32 after the f16 → f32 conversion gave 1.16–1.29,
// and the same trick in f32 (0x4b000000 = 2^23, step 1) was at parity (0.96–1.03). The f16
// variant is kept for adapters with native (packed) f16 ALUs, where it should save ALU work per
// code; not measured on one.

struct Params {
  m: u32,
  // rows of this part
  n_part: u32,
  k: u32,
  // row stride of y (all parts)
  n_total: u32,
  col_offset: u32,
  grid_x: u32,
  // bit 0: add bias; bit 1: accumulate into y (residual add)
  flags: u32,
  // GS / 4
  gv: u32,
  // the folded RMSNorm's epsilon (common/rms_fold.wgsl; unused otherwise)
  norm_eps: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> qw: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> scales: array<u32>;
@group(0) @binding(3) var<storage, read> zeros: array<u32>;
@group(0) @binding(4) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;
@group(0) @binding(6) var<storage, read> bias: array<f32>;

// vec4s of X per group, 16-byte weight words per group, groups per chunk, vec4s per buffer half
const GV: u32 = GS / 4u;
const WPG: u32 = GS / 32u;
const CG: u32 = XC / GV;
const XHALF: u32 = MT * XC;
// Per (row, X row), accumulate a vec4 of products (4 registers, no horizontal adds per word; was
// faster at M = 1) when R·MT is small, else a scalar of dots (fewer registers, nothing spills).
const VACC: bool = R * MT <= 4u;

// Element i of X (the folded RMSNorm's prologue reads it).
fn x_elem(i: u32) -> f32 {
  return x[i >> 2u][i & 3u];
}

// Two vec4s of codes from one u32 (k..k+3 and k+4..k+7), from the dequant fragment's `dq`.
struct Dq {
  lo: vec4<f32>,
  hi: vec4<f32>,
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) t: u32) {
  let tile = wid.y * p.grid_x + wid.x;
  let n0 = tile * (WG * R) + t;
  let m0 = wid.z * MT;
  // The folded RMSNorm's mean square of row m0 (MT = 1, subgroup X; a no-op without it).
  rms_begin(min(m0, p.m - 1u));
  x_init(m0);
  let kw = p.k / 32u;
  let groups = p.k / GS;
  // Rows past the padded part read its last row (never written), so the loop needs no guard.
  let last_row = ((p.n_part + 7u) / 8u) * 8u - 1u;
  var wb: array<u32, R>;
  // Scale and zero-point words are cached: an f16 word holds two groups, a zero word eight.
  var sb: array<u32, R>;
  var zb: array<u32, R>;
  var sw: array<u32, R>;
  var zw: array<u32, R>;
  for (var r = 0u; r < R; r++) {
    let nr = min(n0 + r * WG, last_row);
    wb[r] = (nr >> 3u) * kw * 8u + (nr & 7u);
    if (F16S) {
      sb[r] = (nr >> 3u) * ((groups + 1u) / 2u) * 8u + (nr & 7u);
    } else {
      sb[r] = (nr >> 3u) * groups * 8u + (nr & 7u);
    }
    zb[r] = (nr >> 3u) * ((groups + 7u) / 8u) * 8u + (nr & 7u);
  }
  var acc: array<array<f32, MT>, R>;
  let kv_row = p.k / 4u;
  let nchunks = (kv_row + XC - 1u) / XC;
  x_stage(0u, m0, t);
  for (var c = 0u; c < nchunks; c++) {
    // Staged X: chunk c is visible, and every thread is done with chunk c − 1, whose half is
    // refilled next (no-ops for the subgroup fragment, which reads X directly).
    x_sync();
    if (c + 1u < nchunks) {
      x_stage(c + 1u, m0, t);
    }
    let xh = (c & 1u) * XHALF;
    let g0 = c * CG;
    let ng = min(CG, groups - g0);
    for (var gl = 0u; gl < ng; gl++) {
      let g = g0 + gl;
      // Explicit zeroing: lavapipe was seen carrying the implicit zero-init of a loop-local array
      // over from the previous iteration.
      var gd: array<array<vec4<f32>, MT>, R>;
      for (var r = 0u; r < R; r++) {
        for (var m = 0u; m < MT; m++) {
          gd[r][m] = vec4<f32>(0.0);
        }
      }
      // Σx of the group per row of X, for fragments that sum X as they read it.
      var xg: array<f32, MT>;
      for (var m = 0u; m < MT; m++) {
        xg[m] = 0.0;
      }
      // Groups are visited in order from 0, so the cached words are loaded at their first group.
      if (F16S && (g & 1u) == 0u) {
        for (var r = 0u; r < R; r++) {
          sw[r] = scales[sb[r] + (g >> 1u) * 8u];
        }
      }
      if (ASYM && (g & 7u) == 0u) {
        for (var r = 0u; r < R; r++) {
          zw[r] = zeros[zb[r] + (g >> 3u) * 8u];
        }
      }
      // The group's zero point per row: in `dq`'s operand (folded dequant) or as f32.
      var zf: array<f32, R>;
      var zc: array<DqZero, R>;
      for (var r = 0u; r < R; r++) {
        var z = 8u;
        if (ASYM) {
          z = (zw[r] >> ((g & 7u) * 4u)) & 15u;
        }
        zf[r] = f32(z);
        zc[r] = dq_zero(z);
      }
      for (var wi = 0u; wi < WPG; wi++) {
        let xv = xh + gl * GV + wi * 8u;
        let word = (g * WPG + wi) * 8u;
        var w: array<vec4<u32>, R>;
        for (var r = 0u; r < R; r++) {
          w[r] = qw[wb[r] + word];
        }
        // X is loaded (or broadcast) once per word and row of X, then used for all R rows.
        var xl: array<vec4<f32>, MT>;
        for (var m = 0u; m < MT; m++) {
          xl[m] = x_lane(m, g * WPG + wi);
          if (!DQ_ZERO_FOLDED) {
            xg[m] += x_lane_sum(xl[m]);
          }
        }
        // u32 c of the word: k = 8c..8c+7, multiplied by vec4s 2c and 2c + 1 of the 8. The four
        // blocks differ only in c and in x_pair<c>, whose broadcast lanes must be constants.
        {
          var lo: array<vec4<f32>, R>;
          var hi: array<vec4<f32>, R>;
          for (var r = 0u; r < R; r++) {
            let d = dq(w[r].x, zc[r]);
            lo[r] = d.lo;
            hi[r] = d.hi;
          }
          for (var m = 0u; m < MT; m++) {
            let xp = x_pair0(xv, m, xl[m]);
            for (var r = 0u; r < R; r++) {
              if (VACC) {
                gd[r][m] = fma(hi[r], xp.b, fma(lo[r], xp.a, gd[r][m]));
              } else {
                gd[r][m].x += dot(lo[r], xp.a) + dot(hi[r], xp.b);
              }
            }
          }
        }
        {
          var lo: array<vec4<f32>, R>;
          var hi: array<vec4<f32>, R>;
          for (var r = 0u; r < R; r++) {
            let d = dq(w[r].y, zc[r]);
            lo[r] = d.lo;
            hi[r] = d.hi;
          }
          for (var m = 0u; m < MT; m++) {
            let xp = x_pair1(xv, m, xl[m]);
            for (var r = 0u; r < R; r++) {
              if (VACC) {
                gd[r][m] = fma(hi[r], xp.b, fma(lo[r], xp.a, gd[r][m]));
              } else {
                gd[r][m].x += dot(lo[r], xp.a) + dot(hi[r], xp.b);
              }
            }
          }
        }
        {
          var lo: array<vec4<f32>, R>;
          var hi: array<vec4<f32>, R>;
          for (var r = 0u; r < R; r++) {
            let d = dq(w[r].z, zc[r]);
            lo[r] = d.lo;
            hi[r] = d.hi;
          }
          for (var m = 0u; m < MT; m++) {
            let xp = x_pair2(xv, m, xl[m]);
            for (var r = 0u; r < R; r++) {
              if (VACC) {
                gd[r][m] = fma(hi[r], xp.b, fma(lo[r], xp.a, gd[r][m]));
              } else {
                gd[r][m].x += dot(lo[r], xp.a) + dot(hi[r], xp.b);
              }
            }
          }
        }
        {
          var lo: array<vec4<f32>, R>;
          var hi: array<vec4<f32>, R>;
          for (var r = 0u; r < R; r++) {
            let d = dq(w[r].w, zc[r]);
            lo[r] = d.lo;
            hi[r] = d.hi;
          }
          for (var m = 0u; m < MT; m++) {
            let xp = x_pair3(xv, m, xl[m]);
            for (var r = 0u; r < R; r++) {
              if (VACC) {
                gd[r][m] = fma(hi[r], xp.b, fma(lo[r], xp.a, gd[r][m]));
              } else {
                gd[r][m].x += dot(lo[r], xp.a) + dot(hi[r], xp.b);
              }
            }
          }
        }
      }
      for (var r = 0u; r < R; r++) {
        var s: f32;
        if (F16S) {
          let pair = unpack2x16float(sw[r]);
          s = select(pair.x, pair.y, (g & 1u) == 1u);
        } else {
          s = bitcast<f32>(scales[sb[r] + g * 8u]);
        }
        let zt = -s * zf[r];
        for (var m = 0u; m < MT; m++) {
          let d = gd[r][m];
          if (DQ_ZERO_FOLDED) {
            // d is already Σ(q − z)·x.
            acc[r][m] += s * ((d.x + d.y) + (d.z + d.w));
          } else {
            acc[r][m] += s * ((d.x + d.y) + (d.z + d.w)) + zt * x_group_sum(c, m, gl, xg[m]);
          }
        }
      }
    }
  }
  for (var r = 0u; r < R; r++) {
    let n = n0 + r * WG;
    if (n < p.n_part) {
      let col = p.col_offset + n;
      for (var m = 0u; m < MT; m++) {
        if (m0 + m < p.m) {
          let idx = (m0 + m) * p.n_total + col;
          var v = acc[r][m];
          if ((p.flags & 1u) != 0u) {
            v += bias[col];
          }
          if ((p.flags & 2u) != 0u) {
            v += y[idx];
          }
          y[idx] = v;
        }
      }
    }
  }
}
