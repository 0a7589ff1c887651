// KV-cache fragment: f16 K and V, where the adapter has shader-f16. Halves the cache's memory and
// the bytes attention reads per token; kernels still compute in f32, converting each element as
// they load it (exact: every f16 is an f32) and rounding once, to nearest, as they store it.
enable f16;
alias Kv = f16;
