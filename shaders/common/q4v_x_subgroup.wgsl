enable subgroups;
// X fragment of matmul_q4_gemv for adapters with subgroups of at least 8 lanes: lane j of every 8
// loads vec4 j of the 8 that one 16-byte weight word multiplies, and the 8 reach every lane by
// subgroupBroadcast (register shuffles on a CPU adapter; no workgroup memory, no barrier). Wider
// subgroups hold copies. (Same interface as common/q4v_x_direct.wgsl.)

var<private> x_lane_raw: u32;
var<private> x_lane_id: u32;

// At the top of `main`, in uniform control flow with every invocation active, where the exclusive
// prefix count of ones is the lane's index in its subgroup.
fn x_init() {
  x_lane_raw = subgroupExclusiveAdd(1u);
  x_lane_id = x_lane_raw & 7u;
}

// The 8 vec4s of X that word `word` multiplies, times X_SCALE, and this lane's share of their Σx.
fn x_word(word: u32) -> XWord {
  let raw = x[word * 8u + x_lane_id];
  let xl = raw * X_SCALE;
  return XWord(
    array<vec4<f32>, 8>(
      subgroupBroadcast(xl, 0u),
      subgroupBroadcast(xl, 1u),
      subgroupBroadcast(xl, 2u),
      subgroupBroadcast(xl, 3u),
      subgroupBroadcast(xl, 4u),
      subgroupBroadcast(xl, 5u),
      subgroupBroadcast(xl, 6u),
      subgroupBroadcast(xl, 7u),
    ),
    raw,
  );
}

// Σx of a group from the lanes' shares (lanes 0..7 hold the 8 distinct ones).
fn x_sum(share: vec4<f32>) -> f32 {
  return subgroupAdd(select(0.0, (share.x + share.y) + (share.z + share.w), x_lane_raw < 8u));
}
