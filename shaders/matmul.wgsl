// matmul_{f32,f16,bf16}_m{MT}r{R}x{XV}[_swiglu|_geglu]: Y[m, col_offset + n] (+)= X[m, :] · W[n, :] (+ bias)
// for the rows n of one weight part (big tensors are split across buffers by output rows), the
// flat GEMM of FlashDecoding++ shaped for decode: M is padded only to MT (1, 4 or 8) rows.
// Prepended with an activation fragment (common/act_*.wgsl: the element type Act of x), a weight
// fragment (EPW, word_dot, word_elem) and common/tiled.wgsl.
//
// Bindings: params, weights (tiled vec4<u32> words), x [m, k] Act (f32, or f16 where the adapter
// has shader-f16: converted to f32 as it is staged), y [m, n_total] f32,
// bias f32 (a 4-byte placeholder when flags bit 0 is clear); declared with Params in
// common/matmul_epilogue.wgsl.
// Work: 64 threads per workgroup, each owning R whole output rows (n, n + 64, ...), so a thread
// streams its rows word by word (16-byte loads; the tiled layout puts the 8 rows of neighbouring
// lanes side by side) and reuses each weight word for all MT rows of X in registers: every weight
// byte is read once per MT rows. X is staged in workgroup memory in chunks of XV vec4s per row,
// double-buffered: while the threads multiply chunk c, they have already loaded chunk c + 1 into
// the other buffer, so there is one barrier per chunk and X is read from storage once per
// workgroup instead of once per thread (per-thread reads of X were the bottleneck on CPU adapters).
//
// SWIGLU: the weight is gate and up fused with their 8-row tiles interleaved (gate tile j, then up
// tile j), thread rows pair up as (gate u, up u) and the epilogue writes silu(gate) · up for unit
// u: the MLP's activation never round-trips through memory. Bias (if any) is [gate; up]. GELU (the
// _geglu variants, Gemma) takes the tanh approximation of GELU of the gate instead of silu.

override MT: u32 = 1u;
override R: u32 = 4u;
override XV: u32 = 512u;
override SWIGLU: bool = false;
override GELU: bool = false;
const WG: u32 = 64u;

// Words of a weight row per staged chunk of X.
override WPC: u32 = XV * 4u / EPW;

var<workgroup> xs: array<vec4<f32>, 2u * MT * XV>;

// Loads chunk c of the MT rows of X into buffer half `half` (zero past k and past m).
fn stage(t: u32, m0: u32, c: u32, half: u32) {
  let i0 = c * WPC;
  let vecs = min(WPC, p.kw - i0) * (EPW / 4u);
  let k0 = i0 * EPW;
  for (var v = t; v < MT * vecs; v += WG) {
    let mm = v / vecs;
    let q = v % vecs;
    let row = m0 + mm;
    let kk = k0 + q * 4u;
    var val = vec4<f32>(0.0);
    if (row < p.m) {
      let base = row * p.k + kk;
      if (kk + 3u < p.k) {
        val = vec4<f32>(f32(x[base]), f32(x[base + 1u]), f32(x[base + 2u]), f32(x[base + 3u]));
      } else {
        for (var e = 0u; e < 4u; e++) {
          if (kk + e < p.k) {
            val[e] = f32(x[base + e]);
          }
        }
      }
    }
    xs[half * MT * XV + mm * XV + q] = val;
  }
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) t: u32) {
  let group = wid.y * p.grid + wid.x;
  let per_thread = select(R, R / 2u, SWIGLU);
  let first = group * WG * per_thread + t;
  let m0 = wid.z * MT;
  // Rows stored in this part (padded to whole tiles): out-of-range rows read a real row and are
  // never written, which keeps the inner loop free of branches.
  let stored = select((p.n_part + 7u) / 8u * 8u, (p.n_part + 7u) / 8u * 16u, SWIGLU);
  var rows: array<u32, 4>;
  for (var r = 0u; r < R; r++) {
    rows[r] = min(weight_row(first, r), stored - 1u);
  }
  var acc: array<f32, 32>;
  let chunks = (p.kw + WPC - 1u) / WPC;
  stage(t, m0, 0u, 0u);
  for (var c = 0u; c < chunks; c++) {
    workgroupBarrier();
    if (c + 1u < chunks) {
      stage(t, m0, c + 1u, (c + 1u) & 1u);
    }
    let half = (c & 1u) * MT * XV;
    let i0 = c * WPC;
    let words = min(WPC, p.kw - i0);
    for (var j = 0u; j < words; j++) {
      for (var r = 0u; r < R; r++) {
        let w = weights[tiled_word(rows[r], i0 + j, p.kw)];
        for (var mm = 0u; mm < MT; mm++) {
          let xb = half + mm * XV + j * (EPW / 4u);
          acc[r * MT + mm] += word_dot(w, xs[xb], xs[xb + 1u]);
        }
      }
    }
  }
  for (var r = 0u; r < per_thread; r++) {
    let n = first + WG * r;
    if (n >= p.n_part) {
      continue;
    }
    let col = p.col_offset + n;
    for (var mm = 0u; mm < MT; mm++) {
      let row = m0 + mm;
      if (row >= p.m) {
        continue;
      }
      if (SWIGLU) {
        store_y(row, col, acc[(2u * r) * MT + mm], acc[(2u * r + 1u) * MT + mm]);
      } else {
        store_y(row, col, acc[r * MT + mm], 0.0);
      }
    }
  }
}
