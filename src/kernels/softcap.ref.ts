/** CPU twin of softcap (float64): cap · tanh(x / cap), elementwise. */
export function softcapRef(x: ArrayLike<number>, cap: number): Float64Array {
  return Float64Array.from(x, (v) => cap * Math.tanh(v / cap));
}
