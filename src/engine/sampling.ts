/**
 * Token sampling on the CPU from one row of logits: repetition penalty, temperature, top-k, top-p,
 * with a seeded generator so a seed reproduces a sample. Greedy decoding without penalty never
 * comes here: the GPU's argmax returns the id and the logits stay on the device.
 */
export interface SamplingParams {
  /** 0 = greedy. */
  temperature: number;
  /** 0 = off. */
  topK: number;
  /** 1 = off. */
  topP: number;
  /** 1 = off; >1 discourages tokens already in the context (CTRL-style, as in HF). */
  repetitionPenalty: number;
}

export const DEFAULT_SAMPLING: SamplingParams = { temperature: 0, topK: 0, topP: 1, repetitionPenalty: 1 };

/** True when the GPU argmax alone gives the answer. */
export function isPlainGreedy(p: SamplingParams): boolean {
  return p.temperature === 0 && p.repetitionPenalty === 1;
}

/** xoshiro128** seeded by splitmix32: small, fast, and the same sequence everywhere. */
export class Rng {
  private s: Uint32Array;

  constructor(seed: number) {
    let x = seed >>> 0;
    const next = () => {
      x = (x + 0x9e3779b9) >>> 0;
      let z = x;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
      return (z ^ (z >>> 16)) >>> 0;
    };
    this.s = Uint32Array.from([next(), next(), next(), next()]);
  }

  /** Uniform in [0, 1). */
  next(): number {
    const s = this.s;
    const result = Math.imul(rotl(Math.imul(s[1] as number, 5), 7), 9) >>> 0;
    const t = ((s[1] as number) << 9) >>> 0;
    s[2] = (s[2] as number) ^ (s[0] as number);
    s[3] = (s[3] as number) ^ (s[1] as number);
    s[1] = (s[1] as number) ^ (s[2] as number);
    s[0] = (s[0] as number) ^ (s[3] as number);
    s[2] = (s[2] as number) ^ t;
    s[3] = rotl(s[3] as number, 11);
    return result / 4294967296;
  }
}

function rotl(x: number, k: number): number {
  return ((x << k) | (x >>> (32 - k))) >>> 0;
}

/** Applies the repetition penalty in place: positive logits divided, negative multiplied. */
export function applyRepetitionPenalty(
  logits: Float32Array,
  context: Iterable<number>,
  penalty: number,
): void {
  if (penalty === 1) return;
  for (const id of new Set(context)) {
    const v = logits[id];
    if (v === undefined) continue;
    logits[id] = v > 0 ? v / penalty : v * penalty;
  }
}

/** Candidates lie within this many temperatures of the top logit (see sampleToken). */
const CUTOFF = 30;

/** Picks the next token from `logits` (modified in place). */
export function sampleToken(
  logits: Float32Array,
  p: SamplingParams,
  rng: Rng,
  context: readonly number[],
): number {
  applyRepetitionPenalty(logits, context, p.repetitionPenalty);
  if (p.temperature === 0) {
    // Like the GPU argmax: the lowest index among ties, NaN never wins, 0 when every logit is NaN.
    let best = -1;
    for (let i = 0; i < logits.length; i++) {
      const v = logits[i] as number;
      if (!Number.isNaN(v) && (best < 0 || v > (logits[best] as number))) best = i;
    }
    return Math.max(best, 0);
  }
  // Top-k, then softmax at the temperature, then top-p (the order of Hugging Face's warpers),
  // without sorting the vocabulary: a sort of 150k ids per token would cost more than the GPU step.
  // Only tokens within CUTOFF·T of the top logit are candidates: each of the others has probability
  // below e^-CUTOFF (9e-14) of the top one, together under 2e-8 of the mass for vocabularies up to
  // 200k. Everything after that is exact.
  let max = -Infinity;
  let maxAt = -1;
  for (let i = 0; i < logits.length; i++) {
    const v = logits[i] as number;
    if (v > max) {
      max = v;
      maxAt = i;
    }
  }
  if (maxAt < 0) return 0; // every logit NaN or -Infinity
  // An infinite logit takes all the probability mass (exp(inf - inf) would be NaN).
  if (max === Infinity) return maxAt;
  const T = p.temperature;
  const span = CUTOFF * T;
  // Candidates as parallel typed arrays: ids, logits, and later softmax weights.
  let n = 0;
  for (let i = 0; i < logits.length; i++) if ((logits[i] as number) >= max - span) n++;
  let ids: Int32Array = new Int32Array(n);
  n = 0;
  for (let i = 0; i < logits.length; i++) if ((logits[i] as number) >= max - span) ids[n++] = i;
  if (p.topK > 0 && ids.length > p.topK) ids = topK(logits, ids, p.topK);
  const w = new Float64Array(ids.length);
  let total = 0;
  for (let j = 0; j < ids.length; j++)
    total += w[j] = Math.exp(((logits[ids[j] as number] as number) - max) / T);
  let keep: Int32Array = Int32Array.from(ids.keys());
  if (p.topP < 1) keep = nucleus(logits, ids, w, max, span, p.topP * total);
  let keptTotal = 0;
  for (const j of keep) keptTotal += w[j] as number;
  let u = rng.next() * keptTotal;
  for (const j of keep) {
    u -= w[j] as number;
    if (u < 0) return ids[j] as number;
  }
  return ids[keep[keep.length - 1] as number] as number;
}

/** The k best-ranked of `ids` (lower id first among equal logits), via a native numeric sort. */
function topK(logits: Float32Array, ids: Int32Array, k: number): Int32Array {
  const values = new Float32Array(ids.length);
  for (let j = 0; j < ids.length; j++) values[j] = logits[ids[j] as number] as number;
  const kth = values.slice().sort()[ids.length - k] as number;
  const out = new Int32Array(k);
  let n = 0;
  for (let j = 0; j < ids.length; j++) if ((values[j] as number) > kth) out[n++] = ids[j] as number;
  // Ties at the k-th value fill the rest in id order (ids are ascending).
  for (let j = 0; j < ids.length && n < k; j++) if (values[j] === kth) out[n++] = ids[j] as number;
  return out;
}

/**
 * Positions (into `ids`) of the smallest best-ranked set whose weight reaches `target` (top-p).
 * Candidates are binned by logit; bins above the crossing one are taken whole, and only the
 * crossing bin is sorted (by logit, then id: the same ranking a full sort would give).
 */
function nucleus(
  logits: Float32Array,
  ids: Int32Array,
  w: Float64Array,
  max: number,
  span: number,
  target: number,
): Int32Array {
  const BINS = 256;
  const bin = new Uint16Array(ids.length);
  const mass = new Float64Array(BINS);
  for (let j = 0; j < ids.length; j++) {
    const b = Math.min(BINS - 1, Math.floor(((max - (logits[ids[j] as number] as number)) / span) * BINS));
    bin[j] = b;
    mass[b] = (mass[b] as number) + (w[j] as number);
  }
  let cum = 0;
  let crossing = BINS - 1;
  for (let b = 0; b < BINS; b++) {
    if (cum + (mass[b] as number) >= target) {
      crossing = b;
      break;
    }
    cum += mass[b] as number;
  }
  const kept: number[] = [];
  const border: number[] = [];
  for (let j = 0; j < ids.length; j++) {
    if ((bin[j] as number) < crossing) kept.push(j);
    else if (bin[j] === crossing) border.push(j);
  }
  const logit = (j: number) => logits[ids[j] as number] as number;
  border.sort((a, b) => logit(b) - logit(a) || (ids[a] as number) - (ids[b] as number));
  for (const j of border) {
    kept.push(j);
    cum += w[j] as number;
    if (cum >= target) break;
  }
  return Int32Array.from(kept);
}
