enable subgroups;

// Lane j's value v (of each group of 8 subgroup lanes) to every lane, for j = 0..7: how the GEMM-
// shaped kernels (matmul_gemm, gptq_gemm, gptq_quant) share 8 consecutive k values of one row
// without workgroup memory. Call it in uniform control flow.
fn broadcast8(v: f32) -> array<f32, 8> {
  return array<f32, 8>(
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
