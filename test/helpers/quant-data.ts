/**
 * Synthetic calibration data for the int4 quantizer tests (test/quant/methods.test.ts and
 * gptq.test.ts): weights and activations shaped like an LLM layer's, the Hessian GPTQ works
 * from, and the layer output error every method is judged by.
 */
import { randomF32 } from '../../src/kernels/random.js';
import { accumulateHessian } from '../../src/quant/gptq-solver.js';
import { dequantize, type Q4Matrix } from '../../src/quant/q4.js';

/**
 * Heavy-tailed weights: a cubed uniform (most mass near 0, long tails), shifted per row so some
 * groups are skewed, plus ±(4..8)·scale outliers at a rate `outliers`.
 */
export function heavyTailedWeights(
  rows: number,
  cols: number,
  seed: number,
  outliers = 0.004,
  scale = 0.05,
): Float32Array {
  const u = randomF32(rows * cols, seed);
  const o = randomF32(rows * cols, seed + 101);
  const shift = randomF32(rows, seed + 202, 0.3 * scale);
  const w = new Float32Array(rows * cols);
  for (let i = 0; i < w.length; i++) {
    const x = u[i] as number;
    const r = o[i] as number;
    let v = x * x * x * 3 * scale + (shift[Math.floor(i / cols)] as number);
    if (Math.abs(r) > 1 - outliers) v += Math.sign(r) * (4 + 40 * (1 - Math.abs(r))) * scale;
    w[i] = v;
  }
  return w;
}

export interface ActivationOptions {
  /** Latent directions mixed into the features. */
  factors?: number;
  /** Scale of the isotropic noise. */
  noise?: number;
  /** Seed of the tokens (the mixing and gains come from `seed`): another draw is held-out data. */
  tokenSeed?: number;
  /** Columns that are all zero (dead features). */
  dead?: readonly number[];
}

/**
 * Correlated activations: `factors` latent directions mixed into `cols` features, per-column gains
 * (a few columns much larger, as LLM hidden states have), plus isotropic noise.
 */
export function correlatedActivations(
  tokens: number,
  cols: number,
  seed: number,
  { factors = 8, noise = 0.2, tokenSeed = seed, dead = [] }: ActivationOptions = {},
): Float32Array {
  const mix = randomF32(factors * cols, seed + 1);
  const gain = randomF32(cols, seed + 2);
  const lat = randomF32(tokens * factors, tokenSeed + 3);
  const eps = randomF32(tokens * cols, tokenSeed + 4, noise);
  const x = new Float32Array(tokens * cols);
  for (let t = 0; t < tokens; t++) {
    for (let k = 0; k < cols; k++) {
      let s = eps[t * cols + k] as number;
      for (let f = 0; f < factors; f++) s += (lat[t * factors + f] as number) * (mix[f * cols + k] as number);
      x[t * cols + k] = s * (1 + 8 * Math.abs(gain[k] as number) ** 8);
    }
  }
  for (let t = 0; t < tokens; t++) for (const k of dead) x[t * cols + k] = 0;
  return x;
}

/** H = XᵀX / tokens in float64. */
export function hessianOf(x: Float32Array, tokens: number, cols: number): Float64Array {
  const h = new Float64Array(cols * cols);
  accumulateHessian(h, x, tokens, cols);
  for (let i = 0; i < h.length; i++) h[i] = (h[i] as number) / tokens;
  return h;
}

/** ‖X·Wᵀ − X·Ŵᵀ‖², straight from X in float64. */
export function outputError(x: Float32Array, tokens: number, w: Float32Array, q: Q4Matrix): number {
  const { rows, cols } = q;
  const deq = dequantize(q);
  const d = new Float64Array(cols);
  let e = 0;
  for (let r = 0; r < rows; r++) {
    for (let k = 0; k < cols; k++) d[k] = (w[r * cols + k] as number) - (deq[r * cols + k] as number);
    for (let t = 0; t < tokens; t++) {
      let s = 0;
      for (let k = 0; k < cols; k++) s += (x[t * cols + k] as number) * (d[k] as number);
      e += s * s;
    }
  }
  return e;
}
