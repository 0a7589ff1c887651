// Dequant fragment of matmul_q4, f32 (any adapter): turns a u32 of 8 codes into two vec4<f32>
// with shifts, masks and u32 → f32 conversions. (Same interface as common/q4_dequant_f16.wgsl;
// see shaders/matmul_q4.wgsl.)
//
// Nibble j of each 16-bit half is masked in place and converted (value q·16^j, exact in f32); the X
// fragments hand out X pre-multiplied by X_SCALE = 16^-j (exact: a power of two), so
// (q·16^j)·(x·16^-j) = q·x with one shift per u32 instead of eight. The zero point is not applied
// here: the kernel adds −s·z·Σx per group.
const DQ_ZERO_FOLDED: bool = false;
const X_SCALE = vec4<f32>(1.0, 0.0625, 0.00390625, 0.000244140625);
const NIB_MASK = vec4<u32>(0xfu, 0xf0u, 0xf00u, 0xf000u);

// Per (row, group) operand of `dq`: unused here.
alias DqZero = u32;
fn dq_zero(z: u32) -> DqZero {
  return 0u;
}

// Codes k..k+3 (lo) and k+4..k+7 (hi) of one u32 as q·16^j.
fn dq(u: u32, zc: DqZero) -> Dq {
  return Dq(vec4<f32>(vec4<u32>(u) & NIB_MASK), vec4<f32>(vec4<u32>(u >> 16u) & NIB_MASK));
}
