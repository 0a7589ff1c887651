enable subgroups;
// X fragment of matmul_q4 for adapters with subgroups of at least 8 lanes (a CPU adapter's SIMD
// width). X is read straight from the storage buffer: the 8 vec4s that one 16-byte weight word
// multiplies are loaded one per lane (lane j of every 8 takes vec4 j), scaled by X_SCALE and
// broadcast from lane to lane, and Σx comes from a subgroup sum of the same loads. No workgroup
// memory and no barrier: on llvmpipe a barrier makes the shader a coroutine that keeps its loop
// state in memory, and every lane's load inside a loop is a separate scalar load, so loading each
// vec4 of X in every lane cost 8× the loads. (Same interface as common/q4_x_plain.wgsl.)

struct XPair {
  a: vec4<f32>,
  b: vec4<f32>,
}

// The lane's index in its subgroup, that index mod 8, and the first vec4 of each row of X this
// lane reads (rows past M read row M − 1: valid memory, never written out).
var<private> x_lane_raw: u32;
var<private> x_lane_id: u32;
var<private> x_row: array<u32, MT>;

// Called at the top of `main` in uniform control flow with every invocation active, where the
// exclusive prefix count of ones is the lane's index in its subgroup.
fn x_init(m0: u32) {
  x_lane_raw = subgroupExclusiveAdd(1u);
  x_lane_id = x_lane_raw & 7u;
  for (var m = 0u; m < MT; m++) {
    x_row[m] = min(m0 + m, p.m - 1u) * (p.k / 4u) + x_lane_id;
  }
}

fn x_stage(chunk: u32, m0: u32, t: u32) {}

fn x_sync() {}

// This lane's vec4 of the 8 that word `word` of row m of X covers.
fn x_lane(m: u32, word: u32) -> vec4<f32> {
  return rms_apply4(x[x_row[m] + word * 8u], (x_lane_id + word * 8u) * 4u) * X_SCALE;
}

// Σx of the word's 32 values (each of lanes 0..7 holds 4; wider subgroups hold copies).
fn x_lane_sum(xl: vec4<f32>) -> f32 {
  let v = xl / X_SCALE;
  return subgroupAdd(select(0.0, (v.x + v.y) + (v.z + v.w), x_lane_raw < 8u));
}

fn x_pair0(xv: u32, m: u32, xl: vec4<f32>) -> XPair {
  return XPair(subgroupBroadcast(xl, 0u), subgroupBroadcast(xl, 1u));
}
fn x_pair1(xv: u32, m: u32, xl: vec4<f32>) -> XPair {
  return XPair(subgroupBroadcast(xl, 2u), subgroupBroadcast(xl, 3u));
}
fn x_pair2(xv: u32, m: u32, xl: vec4<f32>) -> XPair {
  return XPair(subgroupBroadcast(xl, 4u), subgroupBroadcast(xl, 5u));
}
fn x_pair3(xv: u32, m: u32, xl: vec4<f32>) -> XPair {
  return XPair(subgroupBroadcast(xl, 6u), subgroupBroadcast(xl, 7u));
}

fn x_group_sum(c: u32, m: u32, gl: u32, summed: f32) -> f32 {
  return summed;
}
