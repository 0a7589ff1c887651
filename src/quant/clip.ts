/**
 * Clipping search for int4 group parameters: an error-reducing alternative to `quantizeRtn` that
 * keeps its format (see q4.ts), so `dequantize` and `packQ4` take the result unchanged.
 *
 * Round-to-nearest spends the whole code range on the group's extremes: one outlier stretches s for
 * all 32..128 weights of its group. Shrinking the range (clipping the outlier to the last code) can
 * cost that one weight more than it saves the rest, or less; which it is depends on the group, so
 * each (row, group) tries a grid of clipping ratios and keeps the one with the smallest
 * reconstruction error Σ_k c_k·(w_k − ŵ_k)². With c_k = E[x_k²] over calibration activations (see
 * `columnSecondMoments`) that error is the expected squared output error the group causes when the
 * inputs are uncorrelated, so columns that see large activations are kept accurate ("activation-
 * aware" clipping, as AWQ does); with c_k = 1 it is the plain weight MSE.
 *
 * Every candidate is scored with the scale and zero point exactly as they would be stored (the same
 * rounding UP as quantizeRtn, so a candidate clamps only the elements its ratio clips) and with ŵ
 * rounded to f32 as `dequantize` computes it. Ratio 1 is the RTN choice itself and is scored first,
 * and a later candidate replaces it only when strictly better, so no group ends worse than RTN.
 */
import { checkQ4Shape, type Q4Format, type Q4Matrix } from './q4.js';

export interface ClipOptions {
  /**
   * Per-column weights c_k ≥ 0 of the error (length cols), e.g. E[x_k²] from `columnSecondMoments`;
   * omitted: 1 for every column (weight MSE).
   */
  columnWeights?: Float32Array | Float64Array;
  /** Clipping ratios tried, evenly spaced from 1 down to 0.5 (default 20; 1 gives exactly RTN). */
  grid?: number;
}

/** 2^e for e in −64..64, exactly. */
const POW2 = Float64Array.from({ length: 129 }, (_, i) => 2 ** (i - 64));

const scratchF32 = new Float32Array(1);
const scratchU32 = new Uint32Array(scratchF32.buffer);

/**
 * The smallest f16 value ≥ x (x ≥ 0 finite), as f32; throws past the f16 range. The same value as
 * q4.ts's f16Up (which rounds to the nearest f16 and steps up once when that is below x), computed
 * as ceil(x / ulp)·ulp, exact because ulp, the f16 spacing in x's binade, is a power of two; the
 * search calls this for every candidate, and the bit conversions were a third of its time. The
 * binade comes from x's f32 exponent: rounding to f32 never crosses below a power of two and
 * crosses above one only within 2⁻²⁴ of it, where the ceiling lands on that power either way.
 */
function f16Up(x: number): number {
  if (x > 65504) {
    throw new RangeError(`int4 scale ${x} does not fit in f16 (max 65504); use scaleType 'f32'`);
  }
  scratchF32[0] = x;
  const e = (((scratchU32[0] as number) >>> 23) & 0xff) - 127;
  // Below 2⁻¹⁴ the f16 spacing stays 2⁻²⁴ (subnormals).
  const ulp = POW2[Math.max(e, -14) + 54] as number; // 2^(e − 10)
  return Math.ceil(x / ulp) * ulp;
}

/** The smallest f32 value ≥ x (x ≥ 0 finite). Mirrors q4.ts. */
function f32Up(x: number): number {
  scratchF32[0] = x;
  if ((scratchF32[0] as number) < x) scratchU32[0] = (scratchU32[0] as number) + 1;
  return scratchF32[0] as number;
}

/**
 * The stored scale for an exact scale s ≥ 0: quantizeRtn's rule (rounded UP to f32 or f16), kept in
 * step with q4.ts, where it is private; the tests check that a one-point grid reproduces
 * quantizeRtn bit for bit.
 */
export function storedQ4Scale(s: number, scaleType: Q4Format['scaleType']): number {
  return scaleType === 'f16' ? f16Up(s) : f32Up(s);
}

/** Grid steps each end of an asymmetric range is refined by around the best joint ratio. */
const REFINE = 3;

/** The clipping ratios of a grid of `n` points: 1, then evenly down to 0.5. */
export function clipRatios(n: number): Float64Array {
  if (!Number.isInteger(n) || n < 1) throw new RangeError(`clip grid ${n} must be a positive integer`);
  const r = new Float64Array(n);
  for (let i = 0; i < n; i++) r[i] = n === 1 ? 1 : 1 - (0.5 * i) / (n - 1);
  return r;
}

/** The largest double below 1/2: the one x where floor(x + 0.5) ≠ Math.round(x), see below. */
const BELOW_HALF = 0.49999999999999994;

/**
 * Math.round(x) for finite x (|x| < 2⁵²; larger values are clamped by every caller), without its
 * branch: V8 compiles Math.round to a data-dependent branch that mispredicts half the time on
 * weights (15 ns per element against 5), while floor is one instruction. x + 0.5 is exact except
 * for x in (0.25, 0.5), where it can round up, and only x = 0.5 − 2⁻⁵⁴ rounds up to an integer.
 */
export function roundHalfUp(x: number): number {
  return Math.floor(x + 0.5) - (x === BELOW_HALF ? 1 : 0);
}

/**
 * Σ_j c_j·(w_j − ŵ_j)² of one group quantized with stored scale s and zero z, ŵ as `dequantize`
 * computes it. Stops once the sum reaches `limit` (the terms are ≥ 0, so the candidate has lost by
 * then), checked every 8 elements: most losing candidates are rejected early.
 */
function groupError(
  w: Float64Array,
  wOff: number,
  c: Float64Array,
  cOff: number,
  gs: number,
  s: number,
  z: number,
  limit: number,
): number {
  let err = 0;
  if (s > 0) {
    for (let j = 0; j < gs; j++) {
      const v = w[wOff + j] as number;
      let q = roundHalfUp(v / s) + z;
      q = q < 0 ? 0 : q > 15 ? 15 : q;
      const d = v - Math.fround((q - z) * s);
      err += (c[cOff + j] as number) * d * d;
      if ((j & 7) === 7 && err >= limit) return err;
    }
  } else {
    for (let j = 0; j < gs; j++) {
      const v = w[wOff + j] as number;
      err += (c[cOff + j] as number) * v * v;
    }
  }
  return err;
}

/**
 * Chooses the (stored) scale and zero point of one group of `gs` weights w[wOff..] under column
 * weights c[cOff..], writing [s, z, error] to out. Ratios[0] must be 1 (the RTN choice, kept on
 * ties). Symmetric formats shrink max|w|; asymmetric ones first shrink the 0-including range
 * [min, max] jointly, then refine each end on its own near the joint optimum with the other end
 * fixed (a skewed group may want its long tail clipped harder than its short one). On Gaussian and
 * Laplace groups with outliers the joint grid alone cuts RTN's error by 5–11%, the two refinement
 * passes by another 0.4–0.7% (a full grid × grid search gets 0.1–0.3% more), for 32 candidates a
 * group instead of 400.
 * Shared with the GPTQ solver, which calls it with the error-updated weights of a group.
 */
export function searchGroupParams(
  w: Float64Array,
  wOff: number,
  c: Float64Array,
  cOff: number,
  gs: number,
  format: Q4Format,
  ratios: Float64Array,
  out: Float64Array,
): void {
  let lo = 0;
  let hi = 0;
  for (let j = 0; j < gs; j++) {
    const v = w[wOff + j] as number;
    if (v < lo) lo = v;
    if (v > hi) hi = v;
  }
  const st = format.scaleType;
  let bestS = 0;
  let bestZ = 0;
  let best = Infinity;
  if (format.symmetric) {
    const amax = Math.max(-lo, hi);
    for (let i = 0; i < ratios.length; i++) {
      const s = storedQ4Scale(((ratios[i] as number) * amax) / 7, st);
      const err = groupError(w, wOff, c, cOff, gs, s, 8, best);
      if (err < best) {
        best = err;
        bestS = s;
      }
    }
    out[0] = bestS;
    out[1] = 8;
    out[2] = best;
    return;
  }
  // Asymmetric: candidates are (ratio of min, ratio of max) pairs. Phase 0 moves both ends along
  // the grid; phase 1 moves the min end within REFINE steps of the best joint ratio, the max end at
  // that ratio; phase 2 moves the max end likewise, the min end at its best.
  let bestI = 0;
  let bestLo = 1;
  let bestHi = 1;
  const last = ratios.length - 1;
  for (let phase = 0; phase < 3; phase++) {
    const fixedLo = bestLo;
    const fixedHi = bestHi;
    const i0 = phase === 0 ? 0 : Math.max(0, bestI - REFINE);
    const i1 = phase === 0 ? last : Math.min(last, bestI + REFINE);
    for (let i = i0; i <= i1; i++) {
      if (phase !== 0 && i === bestI) continue; // the joint best itself, already scored
      const r = ratios[i] as number;
      const rl = phase === 2 ? fixedLo : r;
      const rh = phase === 1 ? fixedHi : r;
      const s = storedQ4Scale((rh * hi - rl * lo) / 15, st);
      const z = s > 0 ? Math.min(15, Math.max(0, Math.round((-rl * lo) / s))) : 0;
      const err = groupError(w, wOff, c, cOff, gs, s, z, best);
      if (err < best) {
        best = err;
        bestS = s;
        bestZ = z;
        bestLo = rl;
        bestHi = rh;
        if (phase === 0) bestI = i;
      }
    }
  }
  out[0] = bestS;
  out[1] = bestZ;
  out[2] = best;
}

/** Column weights as float64 (validated), or all ones. */
function columnWeightsF64(cols: number, weights?: Float32Array | Float64Array): Float64Array {
  const c = new Float64Array(cols);
  if (!weights) return c.fill(1);
  if (weights.length !== cols) {
    throw new RangeError(`int4 column weights: ${weights.length} values for ${cols} columns`);
  }
  for (let k = 0; k < cols; k++) {
    const v = weights[k] as number;
    if (!(v >= 0) || !Number.isFinite(v)) {
      throw new RangeError(`int4 column weight ${v} at col ${k} must be finite and ≥ 0`);
    }
    c[k] = v;
  }
  return c;
}

/**
 * Quantizes a row-major [rows, cols] matrix like `quantizeRtn`, but with each group's scale and zero
 * point chosen by the clipping search (see the file comment). Codes are rounded to nearest under
 * the chosen parameters and clamped to 0..15 (clamping is now intended: it is the clipping).
 */
export function quantizeClip(
  values: Float32Array,
  rows: number,
  cols: number,
  format: Q4Format,
  opts: ClipOptions = {},
): Q4Matrix {
  checkQ4Shape(rows, cols, format);
  if (values.length !== rows * cols) {
    throw new RangeError(`int4 quantize: ${values.length} values for a [${rows}, ${cols}] matrix`);
  }
  const c = columnWeightsF64(cols, opts.columnWeights);
  const ratios = clipRatios(opts.grid ?? 20);
  const gs = format.groupSize;
  const groups = cols / gs;
  const codes = new Uint8Array(rows * cols);
  const scales = new Float32Array(rows * groups);
  const zeros = new Uint8Array(rows * groups);
  // One group at a time in float64 scratch, so the search runs on a single array type.
  const w = new Float64Array(gs);
  const res = new Float64Array(3);
  for (let n = 0; n < rows; n++) {
    for (let g = 0; g < groups; g++) {
      const base = n * cols + g * gs;
      for (let j = 0; j < gs; j++) {
        const v = values[base + j] as number;
        if (!Number.isFinite(v))
          throw new RangeError(`int4 quantize: non-finite value at row ${n}, col ${g * gs + j}`);
        w[j] = v;
      }
      searchGroupParams(w, 0, c, g * gs, gs, format, ratios, res);
      const s = res[0] as number;
      const z = res[1] as number;
      scales[n * groups + g] = s;
      zeros[n * groups + g] = z;
      for (let j = 0; j < gs; j++) {
        const q = s > 0 ? roundHalfUp((w[j] as number) / s) + z : z;
        codes[base + j] = q < 0 ? 0 : q > 15 ? 15 : q;
      }
    }
  }
  return { rows, cols, format, codes, scales, zeros };
}

/**
 * E[x_k²] per column of a row-major [rowsOfX, cols] batch of activations (the inputs of the
 * matrix to quantize, one token per row): the column weights of activation-aware clipping.
 * Accumulated in float64; average over several batches by weighting each with its row count.
 */
export function columnSecondMoments(x: Float32Array, rowsOfX: number, cols: number): Float64Array {
  if (!Number.isInteger(rowsOfX) || rowsOfX < 1 || !Number.isInteger(cols) || cols < 1) {
    throw new RangeError(`activations shape [${rowsOfX}, ${cols}] must be positive integers`);
  }
  if (x.length !== rowsOfX * cols) {
    throw new RangeError(`activations: ${x.length} values for a [${rowsOfX}, ${cols}] batch`);
  }
  const m = new Float64Array(cols);
  for (let r = 0; r < rowsOfX; r++) {
    const base = r * cols;
    for (let k = 0; k < cols; k++) {
      const v = x[base + k] as number;
      m[k] = (m[k] as number) + v * v;
    }
  }
  for (let k = 0; k < cols; k++) m[k] = (m[k] as number) / rowsOfX;
  return m;
}
