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
  | { type: 'factors'; factors: readonly number[] }
  | {
      /**
       * Phi-3's LongRoPE: per-frequency divisors, `shortFactor` below `originalMaxPositionEmbeddings`
       * and `longFactor` from there on, and cos/sin multiplied by `attentionFactor`.
       */
      type: 'longrope';
      shortFactor: readonly number[];
      longFactor: readonly number[];
      originalMaxPositionEmbeddings: number;
      attentionFactor: number;
    };

/**
 * The rotation of one layer: the first `rotaryDim` elements of each head are rotated (rotate-half
 * within them), the rest pass through (Phi-3's partial_rotary_factor; 0 = no RoPE, SmolLM3's NoPE
 * layers). `invFreqAt(pos)` gives the rotaryDim / 2 frequencies used at a position, `mscale` the
 * factor on cos and sin.
 */
export interface RopeAngles {
  rotaryDim: number;
  invFreqAt(pos: number): ArrayLike<number>;
  mscale: number;
}

/** The rotation of `rotaryDim` elements with base `theta` and `scaling` (float64). */
export function ropeAngles(rotaryDim: number, theta: number, scaling: RopeScaling): RopeAngles {
  if (scaling.type !== 'longrope') {
    const inv = ropeInvFreq(rotaryDim, theta, scaling);
    return { rotaryDim, invFreqAt: () => inv, mscale: 1 };
  }
  const half = rotaryDim / 2;
  const withFactors = (factors: readonly number[]) =>
    Float64Array.from(
      { length: half },
      (_, i) => 1 / ((factors[i] as number) * theta ** ((2 * i) / rotaryDim)),
    );
  const short = withFactors(scaling.shortFactor);
  const long = withFactors(scaling.longFactor);
  const orig = scaling.originalMaxPositionEmbeddings;
  // transformers switches to the long factors once the sequence is longer than the original
  // context (seq_len > original_max_position_embeddings); a token decoded at position p is the
  // (p + 1)-th, so positions from `orig` on use them.
  return { rotaryDim, invFreqAt: (pos) => (pos >= orig ? long : short), mscale: scaling.attentionFactor };
}

/** No rotation at all (a NoPE layer). */
export const NO_ROPE: RopeAngles = { rotaryDim: 0, invFreqAt: () => [], mscale: 1 };

function anglesOf(r: ArrayLike<number> | RopeAngles): RopeAngles {
  if ('invFreqAt' in r) return r;
  return { rotaryDim: 2 * r.length, invFreqAt: () => r, mscale: 1 };
}

/**
 * inv_freq[i] = θ^(−2i/d), then rope scaling (HF modeling_rope_utils semantics), float64. LongRoPE
 * depends on the position: see {@link ropeAngles} (this gives its short-context frequencies).
 */
export function ropeInvFreq(headDim: number, theta: number, scaling: RopeScaling): Float64Array {
  if (scaling.type === 'longrope') return ropeAngles(headDim, theta, scaling).invFreqAt(0) as Float64Array;
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
 * The GPU's RoPE table: mscale · (cos, sin) of pos · invFreq[i] for pos < positions, computed in
 * float64 and stored as f32 pairs, [positions][rotaryDim / 2][2]. At least one pair, so a NoPE
 * layer's table is still a valid buffer.
 */
export function ropeTable(rope: ArrayLike<number> | RopeAngles, positions: number): Float32Array {
  const a = anglesOf(rope);
  const half = a.rotaryDim / 2;
  const t = new Float32Array(Math.max(2, positions * half * 2));
  for (let p = 0; p < positions; p++) {
    const inv = a.invFreqAt(p);
    for (let i = 0; i < half; i++) {
      const ang = p * (inv[i] as number);
      t[(p * half + i) * 2] = Math.cos(ang) * a.mscale;
      t[(p * half + i) * 2 + 1] = Math.sin(ang) * a.mscale;
    }
  }
  return t;
}

/**
 * Rotate-half RoPE on x [rows, heads·headDim] in place (float64): the first rotaryDim elements of
 * each head (all of them for a plain frequency list) rotate, the rest pass through.
 */
export function ropeRef(
  x: Float64Array,
  positions: readonly number[],
  heads: number,
  headDim: number,
  rope: ArrayLike<number> | RopeAngles,
): Float64Array {
  const angles = anglesOf(rope);
  const half = angles.rotaryDim / 2;
  positions.forEach((pos, r) => {
    const inv = angles.invFreqAt(pos);
    for (let h = 0; h < heads; h++) {
      const base = (r * heads + h) * headDim;
      for (let i = 0; i < half; i++) {
        const ang = pos * (inv[i] as number);
        const c = Math.cos(ang) * angles.mscale;
        const s = Math.sin(ang) * angles.mscale;
        const a = x[base + i] as number;
        const bb = x[base + i + half] as number;
        x[base + i] = a * c - bb * s;
        x[base + i + half] = bb * c + a * s;
      }
    }
  });
  return x;
}
