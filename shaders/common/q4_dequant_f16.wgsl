enable f16;
// Dequant fragment of matmul_q4, f16 "0x6400 magic" (FasterTransformer / MARLIN; needs
// shader-f16): OR-ing a code q into the low mantissa bits of the f16 1024.0 (bits 0x6400, where
// the f16 step is exactly 1) gives the f16 value 1024 + q, and a code at mantissa bits 4..7 gives
// 1024 + 16·q. One AND and one OR make two such f16 values (one per 16-bit half), and one f16
// subtraction of 1024 + z resp. 1024 + 16·z leaves q − z resp. 16·(q − z) exactly (both operands
// are integers in [1024, 1264], their difference one of magnitude ≤ 240), so the zero point takes
// no extra operation and the kernel needs no −s·z·Σx term. The results are converted to f32
// (exact) and multiplied and accumulated in f32 like the f32 fragment's codes: with X
// pre-multiplied by X_SCALE = (1, 1/16, 1, 1/16) each product is (q − z)·x; no f16 arithmetic
// touches X or a sum. (Same interface as common/q4_dequant_f32.wgsl; see shaders/matmul_q4.wgsl.)
const DQ_ZERO_FOLDED: bool = true;
const X_SCALE = vec4<f32>(1.0, 0.0625, 1.0, 0.0625);
const DQ_MAGIC = vec2<u32>(0x64006400u);
// Nibbles 0 and 4 (bits 0..3 of each 16-bit half), nibbles 1 and 5 (bits 4..7 of each half).
const DQ_MASK = vec2<u32>(0x000f000fu, 0x00f000f0u);

// Per (row, group) operand of `dq`: the f16 values a code equal to the zero point turns into,
// (1024 + z, 1024 + z, 1024 + 16·z, 1024 + 16·z), in the component order of `dq`'s bitcasts.
alias DqZero = vec4<f16>;
fn dq_zero(z: u32) -> DqZero {
  return bitcast<vec4<f16>>(vec2<u32>(z * 0x00010001u, z * 0x00100010u) | DQ_MAGIC);
}

// Codes k..k+3 (lo) and k+4..k+7 (hi) of one u32, minus the zero point, times (1, 16, 1, 16).
// The bitcast of a vec2<u32> puts the low half of component 0 first: from u, (q0, q4, 16·q1,
// 16·q5); from u >> 8, (q2, q6, 16·q3, 16·q7).
fn dq(u: u32, zc: DqZero) -> Dq {
  let a = bitcast<vec4<f16>>((vec2<u32>(u) & DQ_MASK) | DQ_MAGIC) - zc;
  let b = bitcast<vec4<f16>>((vec2<u32>(u >> 8u) & DQ_MASK) | DQ_MAGIC) - zc;
  return Dq(vec4<f32>(vec4<f16>(a.xz, b.xz)), vec4<f32>(vec4<f16>(a.yw, b.yw)));
}
