/**
 * Seeded uniform values in [-scale, scale) (xorshift32), the one generator behind the synthetic
 * benchmark weights, `kiln bench kernels` and the tests' random tensors (test/helpers/random.ts
 * re-exports it). Written
 * into a Float32Array, so every value is exactly representable in f32; tests depend on the exact
 * values, so the sequence must not change.
 */
export function randomF32(n: number, seed: number, scale = 1): Float32Array {
  let s = seed >>> 0 || 1;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    out[i] = ((s / 4294967296) * 2 - 1) * scale;
  }
  return out;
}
