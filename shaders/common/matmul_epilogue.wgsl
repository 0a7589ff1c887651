// What the two float matmul kernels (matmul.wgsl, matmul_gemm.wgsl) share around their inner
// loops: the uniform and bindings (src/kernels/matmul.ts packs both kernels' Params alike), which
// storage row a thread-row reads, and how an output element is written. Each kernel declares
// SWIGLU and GELU (overrides in matmul.wgsl, consts in matmul_gemm.wgsl) and WG, its threads per
// workgroup (64 in matmul.wgsl, a variant's const in matmul_gemm.wgsl); the activation fragment
// declares Act.

struct Params {
  m: u32,
  k: u32,
  // 16-byte words per weight row
  kw: u32,
  // rows of this part (SWIGLU: units, i.e. gate/up pairs)
  n_part: u32,
  // columns of y (SWIGLU: units)
  n_total: u32,
  col_offset: u32,
  // workgroups along the first grid dimension over N (the rest wrap into the next one)
  grid: u32,
  // bit 0: add bias; bit 1: accumulate into y (residual add)
  flags: u32,
  // the folded RMSNorm's epsilon (common/rms_fold.wgsl; unused otherwise)
  norm_eps: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> weights: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> x: array<Act>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<storage, read> bias: array<f32>;

// Storage row of thread-row r: plain rows n + WG·r, or (SWIGLU) gate/up rows of unit u, whose 8-row
// tiles are interleaved (gate tile j, then up tile j).
fn weight_row(first: u32, r: u32) -> u32 {
  if (SWIGLU) {
    let u = first + WG * (r / 2u);
    return (u >> 3u) * 16u + (u & 7u) + 8u * (r & 1u);
  }
  return first + WG * r;
}

// Y[row, col] from its accumulated dot product `a` (SWIGLU: the gate's, with `b` the up's): plus
// the bias (flags bit 0; [gate; up] for SWIGLU), then silu(gate) · up (GELU: gelu_tanh(gate) · up),
// then plus the old Y (flags bit 1, the fused residual add).
fn store_y(row: u32, col: u32, a: f32, b: f32) {
  let idx = row * p.n_total + col;
  var v: f32;
  if (SWIGLU) {
    var g = a;
    var u = b;
    if ((p.flags & 1u) != 0u) {
      g += bias[col];
      u += bias[p.n_total + col];
    }
    if (GELU) {
      v = gelu_tanh(g) * u;
    } else {
      v = g / (1.0 + exp(-g)) * u;
    }
  } else {
    v = a;
    if ((p.flags & 1u) != 0u) {
      v += bias[col];
    }
  }
  if ((p.flags & 2u) != 0u) {
    v += y[idx];
  }
  y[idx] = v;
}

// GELU's tanh approximation (PyTorch's gelu(approximate="tanh")):
// 0.5·z·(1 + tanh(y)), y = √(2/π)·(z + 0.044715·z³), computed as z / (1 + e^(−2y)) (the same
// value: 0.5·(1 + tanh(y)) is sigmoid(2y)), which neither cancels for negative z nor overflows.
fn gelu_tanh(z: f32) -> f32 {
  let y = 0.7978845608028654 * (z + 0.044715 * z * z * z);
  return z / (1.0 + exp(-2.0 * y));
}
