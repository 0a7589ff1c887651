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
  // Candidates sorted by logit, cut by top-k, softmax at the temperature, then cut by top-p.
  // Sorting a 150k vocabulary every token would cost more than the GPU step, so only tokens within
  // CUTOFF·T of the top logit are candidates: each of the others has probability below e^-CUTOFF
  // (9e-14) of the top one, together under 2e-8 of the mass for any vocabulary up to 200k.
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
  const floor = max - CUTOFF * p.temperature;
  let order: number[] = [];
  for (let i = 0; i < logits.length; i++) if ((logits[i] as number) >= floor) order.push(i);
  order.sort((a, b) => (logits[b] as number) - (logits[a] as number) || a - b);
  if (p.topK > 0) order = order.slice(0, p.topK);
  const probs = order.map((i) => Math.exp(((logits[i] as number) - max) / p.temperature));
  const total = probs.reduce((a, b) => a + b, 0);
  let keep = order.length;
  if (p.topP < 1) {
    let cum = 0;
    for (let i = 0; i < order.length; i++) {
      cum += (probs[i] as number) / total;
      if (cum >= p.topP) {
        keep = i + 1;
        break;
      }
    }
  }
  const kept = probs.slice(0, keep);
  const keptTotal = kept.reduce((a, b) => a + b, 0);
  let u = rng.next() * keptTotal;
  for (let i = 0; i < keep; i++) {
    u -= kept[i] as number;
    if (u < 0) return order[i] as number;
  }
  return order[keep - 1] as number;
}
