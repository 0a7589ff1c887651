/**
 * CPU twins of RoPE. `ropeInvFreq` is the one place the frequencies (and rope scaling) are
 * computed; the GPU gets its output as an f32 table.
 */

/** Rotary frequency scaling, as config.json's rope_scaling / rope_parameters describe it. */
export type RopeScaling =
  | { type: 'none' }
  | { type: 'linear'; factor: number }
  | {
      type: 'llama3';
      factor: number;
      lowFreqFactor: number;
      highFreqFactor: number;
      originalMaxPositionEmbeddings: number;
    }
  /**
   * One divisor per frequency (inv_freq[i] / factors[i]), as GGUF files store Llama 3-style
   * scaling: llama.cpp's converter writes the llama3 rule's result as the rope_freqs tensor.
   */
  | { type: 'factors'; factors: readonly number[] };

/** inv_freq[i] = θ^(−2i/d), then rope scaling (HF modeling_rope_utils semantics), float64. */
export function ropeInvFreq(headDim: number, theta: number, scaling: RopeScaling): Float64Array {
  const half = headDim / 2;
  const inv = new Float64Array(half);
  for (let i = 0; i < half; i++) inv[i] = 1 / theta ** ((2 * i) / headDim);
  if (scaling.type === 'factors') {
    if (scaling.factors.length !== half) {
      throw new RangeError(`rope factors: ${scaling.factors.length} given for ${half} frequencies`);
    }
    for (let i = 0; i < half; i++) inv[i] = (inv[i] as number) / (scaling.factors[i] as number);
  } else if (scaling.type === 'linear') {
    for (let i = 0; i < half; i++) inv[i] = (inv[i] as number) / scaling.factor;
  } else if (scaling.type === 'llama3') {
    const { factor, lowFreqFactor, highFreqFactor, originalMaxPositionEmbeddings: orig } = scaling;
    const lowWavelen = orig / lowFreqFactor;
    const highWavelen = orig / highFreqFactor;
    for (let i = 0; i < half; i++) {
      const f = inv[i] as number;
      const wavelen = (2 * Math.PI) / f;
      if (wavelen < highWavelen) continue;
      if (wavelen > lowWavelen) {
        inv[i] = f / factor;
      } else {
        const smooth = (orig / wavelen - lowFreqFactor) / (highFreqFactor - lowFreqFactor);
        inv[i] = ((1 - smooth) * f) / factor + smooth * f;
      }
    }
  }
  return inv;
}

/**
 * The GPU's RoPE table: (cos, sin) of pos · invFreq[i] for pos < positions, computed in float64
 * and stored as f32 pairs, [positions][headDim / 2][2].
 */
export function ropeTable(invFreq: ArrayLike<number>, positions: number): Float32Array {
  const half = invFreq.length;
  const t = new Float32Array(positions * half * 2);
  for (let p = 0; p < positions; p++) {
    for (let i = 0; i < half; i++) {
      const ang = p * (invFreq[i] as number);
      t[(p * half + i) * 2] = Math.cos(ang);
      t[(p * half + i) * 2 + 1] = Math.sin(ang);
    }
  }
  return t;
}

/** Rotate-half RoPE on x [rows, heads·headDim] in place (float64). */
export function ropeRef(
  x: Float64Array,
  positions: readonly number[],
  heads: number,
  headDim: number,
  invFreq: ArrayLike<number>,
): Float64Array {
  const half = headDim / 2;
  positions.forEach((pos, r) => {
    for (let h = 0; h < heads; h++) {
      const base = (r * heads + h) * headDim;
      for (let i = 0; i < half; i++) {
        const ang = pos * (invFreq[i] as number);
        const c = Math.cos(ang);
        const s = Math.sin(ang);
        const a = x[base + i] as number;
        const bb = x[base + i + half] as number;
        x[base + i] = a * c - bb * s;
        x[base + i + half] = bb * c + a * s;
      }
    }
  });
  return x;
}
