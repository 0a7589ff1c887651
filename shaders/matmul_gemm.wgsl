// matmul_{f32,f16,bf16}_gemm_t{TM}x{TN}[_xf16][_swiglu]: Y[m, col_offset + n] (+)= X[m, :] · W[n, :]
// (+ bias), the register-blocked GEMM for large M (prefill chunks): the same weights (tiled
// vec4<u32> words, any weight fragment), bindings, uniform and epilogues as shaders/matmul.wgsl,
// but each thread owns a TM × TN block of outputs (TM rows of X × TN weight rows) in registers.
// Prepended by src/kernels/matmul.ts with common/broadcast8.wgsl, an activation fragment (Act), a weight
// fragment (EPW, word_elem), common/tiled.wgsl and the module constants
//   TM      rows of X per workgroup (every thread computes all of them),
//   TN      weight rows per thread (n, n + WG, ...; SWIGLU: TN / 2 gate/up pairs),
//   SWIGLU  gate and up fused with interleaved tiles (see shaders/matmul.wgsl),
//   GELU    the fused gate's activation is tanh-GELU (GeGLU) instead of silu,
//   WG      threads per workgroup (64 by default; a multiple of 8, so that every group of 8 lanes
//           broadcasts X within one subgroup),
// as `const`s, so that every loop over TM, TN and the 8 elements of a step has a constant trip
// count and unrolls into straight-line code.
//
// Why this shape (measured on lavapipe/llvmpipe, where a subgroup is one 8-wide SIMD register):
// - Inside a loop every lane's load is a separate masked scalar load, whatever its address, and a
//   dynamically indexed private array lives in memory with per-lane loads and stores too. So the
//   kernel does the fewest loads per multiply-add it can, and every private array is indexed only
//   by fully unrolled loops (constant indices: registers or plain spills).
// - The flat kernel reads X from workgroup memory, two vec4 loads per weight word and row of X (its
//   profile at MT = 8 is mostly per-lane load code, not arithmetic). Here X takes no workgroup
//   memory and no barrier: per step of 8 k, lane ℓ of every 8 loads x[m, k + ℓ] for each of the TM rows (one
//   scalar per row and lane) and the 8 values reach every lane by subgroupBroadcast from lanes
//   0..7 (register shuffles). Subgroups wider than 8 hold copies (lane ℓ and ℓ + 8 load the same x).
// - Each lane loads its TN weight words per step (16-byte loads; the tiled layout puts the 8 rows of
//   a SIMD group's lanes side by side), unpacks them once, and uses every weight for TM rows of X;
//   every x value is used for TN weight rows in all lanes. Per step a thread does TM · TN · 8
//   multiply-adds for TN weight loads (2·TN for f32 weights) and TM x loads.
// - Workgroups walk the M tiles fastest (grid x), so the workgroups that read the same weight rows
//   run back to back (on lavapipe this measured even with the flat kernel's order, M tiles in z;
//   it is kept for caches that hold a workgroup's weight rows).
// - Loop order: X for all TM rows first, then per weight row r (outer) its load and the TM rows of
//   X (inner). llvmpipe's NIR only unrolls a loop past its size budget when the loop indexes an
//   array as long as its trip count (here acc[r]); a variant with the TM loop outside stayed, at
//   TM = 16 × TN = 8, a loop over an array in memory and ran about 2× slower.
// Summation order: each output is a sequential f32 sum over steps of 8 k; a step adds its 8
// products as ((p0 + p1) + (p2 + p3)) + ((p4 + p5) + (p6 + p7)).
//
// Bindings: params, weights, x [m, k] Act, y [m, n_total] f32, bias f32 (a placeholder when flags
// bit 0 is clear), declared with Params in common/matmul_epilogue.wgsl; with the RMSNorm folded in
// (variant suffix `_rms`, TM = 1, f32 X: the raw residual rows), the norm weight [k] f32 at binding
// 5 (common/rms_fold.wgsl; common/rms_none.wgsl otherwise).

// Weight words per step of 8 k: one 16-bit word or two f32 words.
const SW: u32 = 8u / EPW;

// Element i of X as f32 (the folded RMSNorm's prologue reads it).
fn x_elem(i: u32) -> f32 {
  return f32(x[i]);
}

// The 8 weights of a step (k .. k + 7) from its word(s), as f32.
fn unpack8(w0: vec4<u32>, w1: vec4<u32>) -> array<f32, 8> {
  if (EPW == 8u) {
    return array<f32, 8>(
      word_elem(w0, 0u),
      word_elem(w0, 1u),
      word_elem(w0, 2u),
      word_elem(w0, 3u),
      word_elem(w0, 4u),
      word_elem(w0, 5u),
      word_elem(w0, 6u),
      word_elem(w0, 7u),
    );
  }
  return array<f32, 8>(
    word_elem(w0, 0u),
    word_elem(w0, 1u),
    word_elem(w0, 2u),
    word_elem(w0, 3u),
    word_elem(w1, 0u),
    word_elem(w1, 1u),
    word_elem(w1, 2u),
    word_elem(w1, 3u),
  );
}

@compute @workgroup_size(WG)
fn main(
  @builtin(workgroup_id) wid: vec3<u32>,
  @builtin(local_invocation_index) t: u32,
  @builtin(subgroup_invocation_id) sg_lane: u32,
) {
  // The folded RMSNorm's mean square of this workgroup's row (TM = 1; a no-op without it).
  rms_begin(min(wid.x * TM, p.m - 1u));
  let lane = sg_lane & 7u;
  let group = wid.z * p.grid + wid.y;
  let per_thread = select(TN, TN / 2u, SWIGLU);
  let first = group * WG * per_thread + t;
  let m0 = wid.x * TM;
  // Rows stored in this part (padded to whole tiles): out-of-range rows read a real row and are
  // never written, and rows of X past M read row M − 1, so the loop needs no guard.
  let stored = select((p.n_part + 7u) / 8u * 8u, (p.n_part + 7u) / 8u * 16u, SWIGLU);
  var wbase: array<u32, TN>;
  for (var r = 0u; r < TN; r++) {
    let n = min(weight_row(first, r), stored - 1u);
    wbase[r] = (n >> 3u) * p.kw * 8u + (n & 7u);
  }
  var xrow: array<u32, TM>;
  for (var mm = 0u; mm < TM; mm++) {
    xrow[mm] = min(m0 + mm, p.m - 1u) * p.k;
  }
  var acc: array<array<f32, TM>, TN>;
  for (var r = 0u; r < TN; r++) {
    for (var mm = 0u; mm < TM; mm++) {
      acc[r][mm] = 0.0;
    }
  }
  let last = p.kw - 1u;
  for (var i = 0u; i < p.kw; i += SW) {
    // This lane's k in the step; past K it reads a valid element and uses 0 (the zero-padded tail
    // of the weight row meets zeros of X, and an f32 step's second word past the row end is
    // clamped to the row's last word, which then only meets zeros).
    let kk = i * EPW + lane;
    let in_k = kk < p.k;
    let kc = min(kk, p.k - 1u);
    var xs: array<array<f32, 8>, TM>;
    for (var mm = 0u; mm < TM; mm++) {
      xs[mm] = broadcast8(select(0.0, rms_apply(f32(x[xrow[mm] + kc]), kc), in_k));
    }
    for (var r = 0u; r < TN; r++) {
      let w0 = weights[wbase[r] + i * 8u];
      var w1 = w0;
      if (SW == 2u) {
        w1 = weights[wbase[r] + min(i + 1u, last) * 8u];
      }
      let w = unpack8(w0, w1);
      for (var mm = 0u; mm < TM; mm++) {
        let v = xs[mm];
        acc[r][mm] += ((w[0] * v[0] + w[1] * v[1]) + (w[2] * v[2] + w[3] * v[3])) +
          ((w[4] * v[4] + w[5] * v[5]) + (w[6] * v[6] + w[7] * v[7]));
      }
    }
  }
  for (var r = 0u; r < per_thread; r++) {
    let n = first + WG * r;
    if (n >= p.n_part) {
      continue;
    }
    let col = p.col_offset + n;
    for (var mm = 0u; mm < TM; mm++) {
      let row = m0 + mm;
      if (row >= p.m) {
        continue;
      }
      if (SWIGLU) {
        store_y(row, col, acc[2u * r][mm], acc[2u * r + 1u][mm]);
      } else {
        store_y(row, col, acc[r][mm], 0.0);
      }
    }
  }
}
