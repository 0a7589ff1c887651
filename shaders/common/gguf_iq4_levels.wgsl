// ggml's 16 non-linear levels of IQ4_NL and IQ4_XS (kvalues_iq4nl), shared by every fragment that
// decodes either format (embed_gguf's and matmul_gguf_vec4's): one table, so no copy can drift.
var<private> IQ4_T: array<f32, 16> = array<f32, 16>(
  -127.0, -104.0, -83.0, -65.0, -49.0, -35.0, -22.0, -10.0, 1.0, 13.0, 25.0, 38.0, 53.0, 69.0, 89.0, 113.0,
);

fn iq4_levels(q: vec4<u32>) -> vec4<f32> {
  return vec4<f32>(IQ4_T[q.x], IQ4_T[q.y], IQ4_T[q.z], IQ4_T[q.w]);
}
