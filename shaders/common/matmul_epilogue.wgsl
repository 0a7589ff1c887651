// What the two float matmul kernels (matmul.wgsl, matmul_gemm.wgsl) share around their inner
// loops: which storage row a thread-row reads, and how an output element is written. Both kernels
// declare WG, SWIGLU, Params `p` (n_total, flags), `y` and `bias` under the same names.

// Storage row of thread-row r: plain rows n + 64r, or (SWIGLU) gate/up rows of unit u, whose 8-row
// tiles are interleaved (gate tile j, then up tile j).
fn weight_row(first: u32, r: u32) -> u32 {
  if (SWIGLU) {
    let u = first + WG * (r / 2u);
    return (u >> 3u) * 16u + (u & 7u) + 8u * (r & 1u);
  }
  return first + WG * r;
}

// Y[row, col] from its accumulated dot product `a` (SWIGLU: the gate's, with `b` the up's): plus
// the bias (flags bit 0; [gate; up] for SWIGLU), then silu(gate) · up, then plus the old Y (flags
// bit 1, the fused residual add).
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
    v = g / (1.0 + exp(-g)) * u;
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
