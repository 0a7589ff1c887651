enable subgroups;
// X fragment of matmul_gguf_vec4 for adapters with subgroups of at least 8 lanes: the 8 vec4s of
// X a 32-element step multiplies are loaded one per lane (lane j of every 8 takes vec4 j) and
// broadcast from lane to lane, as common/q4_x_subgroup.wgsl does for matmul_q4 (on llvmpipe each
// lane's load inside a loop is a separate scalar load, a broadcast is a register shuffle).

var<private> x_lane: u32;

// Called at the top of `main` in uniform control flow with every invocation active, where the
// exclusive prefix count of ones is the lane's index in its subgroup.
fn x_init() {
  x_lane = subgroupExclusiveAdd(1u) & 7u;
}

// vec4s at .. at + 7 of x (every lane passes the same `at`).
fn x_step(at: u32) -> array<vec4<f32>, 8> {
  let v = x[at + x_lane];
  return array<vec4<f32>, 8>(
    subgroupBroadcast(v, 0u),
    subgroupBroadcast(v, 1u),
    subgroupBroadcast(v, 2u),
    subgroupBroadcast(v, 3u),
    subgroupBroadcast(v, 4u),
    subgroupBroadcast(v, 5u),
    subgroupBroadcast(v, 6u),
    subgroupBroadcast(v, 7u),
  );
}
