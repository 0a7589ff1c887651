// argmax_lanes: shaders/argmax.wgsl's ids (the lowest index among ties, NaN and -inf never win, a
// row of neither gives 0) with one invocation per row walking it in order, for the few short rows
// of a small vocabulary's decode step (src/kernels/argmax.ts picks it by shape): on a CPU adapter
// argmax's 256-thread workgroup and its 8 barriers cost several µs per row, so a step's argmax grew
// with its rows; here 8 rows share one SIMD instruction.
// Bindings: params, logits [rows, n] f32, ids [rows] u32.

struct Params {
  n: u32,
  rows: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read_write> ids: array<u32>;

@compute @workgroup_size(8)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let r = gid.x;
  if (r >= p.rows) {
    return;
  }
  let base = r * p.n;
  var bv = bitcast<f32>(0xff7fffffu); // -FLT_MAX
  var bi = 0xffffffffu;
  for (var i = 0u; i < p.n; i++) {
    let v = logits[base + i];
    // In index order a tie never replaces the earlier index; v == v is false only for NaN.
    if (v == v && (v > bv || (v == bv && bi == 0xffffffffu))) {
      bv = v;
      bi = i;
    }
  }
  ids[r] = select(bi, 0u, bi == 0xffffffffu);
}
