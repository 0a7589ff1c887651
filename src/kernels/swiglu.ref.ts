/** CPU twin of swiglu (float64): silu(g)·u with silu(z) = z / (1 + e^(−z)). */
export function swigluRef(gate: ArrayLike<number>, up: ArrayLike<number>): Float64Array {
  const out = new Float64Array(gate.length);
  for (let i = 0; i < gate.length; i++) {
    const g = gate[i] as number;
    out[i] = (g / (1 + Math.exp(-g))) * (up[i] as number);
  }
  return out;
}

/** GELU's tanh approximation (float64): 0.5·z·(1 + tanh(√(2/π)·(z + 0.044715·z³))). */
export function geluTanh(z: number): number {
  return 0.5 * z * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (z + 0.044715 * z ** 3)));
}

/** CPU twin of the GeGLU epilogue (float64): gelu_tanh(g)·u. */
export function gegluRef(gate: ArrayLike<number>, up: ArrayLike<number>): Float64Array {
  const out = new Float64Array(gate.length);
  for (let i = 0; i < gate.length; i++) out[i] = geluTanh(gate[i] as number) * (up[i] as number);
  return out;
}
