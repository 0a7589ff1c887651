// The seeded generator lives with the benchmarks, which build their synthetic weights from it too.
export { randomF32 } from '../../src/kernels/random.js';

/** A seeded shuffle of 0..n-1: a block table the paged kernels must follow, not assume contiguous. */
export function shuffledBlocks(n: number, seed: number): number[] {
  const b = Array.from({ length: n }, (_, i) => i);
  let s = seed;
  for (let i = n - 1; i > 0; i--) {
    s = (s * 1103515245 + 12345) >>> 0;
    const j = s % (i + 1);
    [b[i], b[j]] = [b[j] as number, b[i] as number];
  }
  return b;
}
