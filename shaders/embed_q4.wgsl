// embed_q4: out[m, :] = W[ids[m], :] dequantized, (q − z)·s rounded once to f32, for the token ids
// that fall in this part of an int4 embedding table (rows row_start .. row_start + rows; a tied
// model's LM head, so it is stored in the matmul_q4 layout of src/quant/q4.ts). The value equals
// `dequantize` exactly: q − z is a small integer and s an f32 (or f16, decoded bit by bit so that
// a subnormal half is not flushed), so one multiplication rounds once, as the CPU does.
// The format is in the uniform, not in constants: one pipeline for every format (a gather is
// bound by its few loads, and lavapipe compiles slowly).
// Bindings: params, qw (codes, 16-byte words tiled by 8 rows), scales (f32, or f16 pairs: groups
// 2j, 2j+1 of a row per u32), zeros (8 groups of a row per u32; a placeholder when symmetric),
// ids [m] u32, out [m, hidden] f32 as vec4s (hidden is a multiple of 32).
// Work: a thread owns one u32 of codes (8 consecutive k, inside one group); x covers hidden / 8 in
// 64-wide workgroups, y is the token row.

struct Params {
  m: u32,
  hidden: u32,
  row_start: u32,
  rows: u32,
  groups: u32,
  gs: u32,
  // bit 0: asymmetric (zero points); bit 1: f16 scales
  flags: u32,
  // the embedding multiplier (1, or Gemma's √hidden rounded to the original table's dtype)
  embed_scale: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> qw: array<u32>;
@group(0) @binding(2) var<storage, read> scales: array<u32>;
@group(0) @binding(3) var<storage, read> zeros: array<u32>;
@group(0) @binding(4) var<storage, read> ids: array<u32>;
@group(0) @binding(5) var<storage, read_write> out: array<vec4<f32>>;

// An IEEE half (the low 16 bits) as f32, exactly, with integer operations only.
fn half_to_f32(h: u32) -> f32 {
  let e = (h >> 10u) & 0x1fu;
  let m = h & 0x3ffu;
  if (e == 0u) {
    // m·2^-24; a scale is never negative, and a zero group has m = 0.
    if (m == 0u) {
      return 0.0;
    }
    let l = 31u - countLeadingZeros(m);
    return bitcast<f32>(((l + 103u) << 23u) | ((m << (23u - l)) & 0x7fffffu));
  }
  return bitcast<f32>((((e + 112u) << 23u) | (m << 13u)) | ((h & 0x8000u) << 16u));
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let j = gid.x;
  let row = gid.y;
  if (j * 8u >= p.hidden || row >= p.m) {
    return;
  }
  let id = ids[row];
  if (id < p.row_start || id >= p.row_start + p.rows) {
    return;
  }
  let n = id - p.row_start;
  let tile = n >> 3u;
  let lane = n & 7u;
  let k = j * 8u;
  // u32 j % 4 of 16-byte word k / 32 of row n.
  let codes = qw[((tile * (p.hidden / 32u) + k / 32u) * 8u + lane) * 4u + (j & 3u)];
  let g = k / p.gs;
  var s: f32;
  if ((p.flags & 2u) != 0u) {
    let word = scales[(tile * ((p.groups + 1u) / 2u) + g / 2u) * 8u + lane];
    s = half_to_f32((word >> (16u * (g & 1u))) & 0xffffu);
  } else {
    s = bitcast<f32>(scales[(tile * p.groups + g) * 8u + lane]);
  }
  var z = 8u;
  if ((p.flags & 1u) != 0u) {
    z = (zeros[(tile * ((p.groups + 7u) / 8u) + g / 8u) * 8u + lane] >> (4u * (g & 7u))) & 15u;
  }
  let q = (vec4<u32>(codes) >> vec4<u32>(0u, 4u, 8u, 12u)) & vec4<u32>(15u);
  let r = (vec4<u32>(codes) >> vec4<u32>(16u, 20u, 24u, 28u)) & vec4<u32>(15u);
  let zf = vec4<f32>(f32(z));
  let at = (row * p.hidden + k) / 4u;
  out[at] = (vec4<f32>(q) - zf) * s * p.embed_scale;
  out[at + 1u] = (vec4<f32>(r) - zf) * s * p.embed_scale;
}
