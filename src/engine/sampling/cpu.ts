/**
 * Token sampling on the CPU from one read-back row of logits (EngineOptions.sampling 'cpu'):
 * repetition penalty, temperature, top-k, top-p, drawn with the request's seeded Rng. Greedy
 * decoding without penalty never comes here: the GPU's argmax returns the id and the logits stay
 * on the device. The rules are the sample kernel's (shaders/sample.wgsl; its float64 twin,
 * src/kernels/sample.ref.ts, states them and the tests hold this to it): the same candidates, ranks
 * and cuts, the kept set walked in id order with one uniform per token, so for the same seed the
 * CPU and the GPU path draw the same tokens. This path is the twin made fast for whole
 * vocabularies: no sort of all ids.
 */
import type { SamplingParams } from '../../api/types.js';
import { SAMPLE_CUTOFF } from '../../kernels/sample.ref.js';
import type { Rng } from './rng.js';

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
  // One uniform per sampled token, drawn first: the GPU path draws one per row whatever the row
  // holds, so both paths consume a request's generator alike.
  const uniform = rng.next();
  // Top-k, then softmax at the temperature, then top-p (the order of Hugging Face's warpers),
  // without sorting the vocabulary: a sort of 150k ids per token would cost more than the GPU step.
  // Only tokens within SAMPLE_CUTOFF·T of the top logit are candidates: each of the others has
  // probability below e^-30 (9e-14) of the top one, together under 2e-8 of the mass for
  // vocabularies up to 200k. Everything after that is exact.
  let maxAt = -1;
  for (let i = 0; i < logits.length; i++) {
    const v = logits[i] as number;
    if (!Number.isNaN(v) && (maxAt < 0 || v > (logits[maxAt] as number))) maxAt = i;
  }
  if (maxAt < 0) return 0; // every logit NaN
  const max = logits[maxAt] as number;
  // An infinite top logit takes all the probability mass (exp(inf - inf) would be NaN); with every
  // logit -Infinity nothing is drawable: the argmax, as greedy. Top-k 1 is greedy too.
  if (max === Infinity || max === -Infinity || p.topK === 1) return maxAt;
  const T = p.temperature;
  const span = SAMPLE_CUTOFF * T;
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
  // The kept set is walked in id order (ids ascend with their position j), as the kernel walks it.
  if (p.topP < 1) keep = nucleus(logits, ids, w, max, span, p.topP * total).sort();
  let keptTotal = 0;
  for (const j of keep) keptTotal += w[j] as number;
  let u = uniform * keptTotal;
  for (const j of keep) {
    u -= w[j] as number;
    if (u < 0) return ids[j] as number;
  }
  return ids[keep[keep.length - 1] as number] as number;
}

/**
 * The k best-ranked of `ids` (lower id first among equal logits), via a native numeric sort,
 * returned in ascending id order.
 */
function topK(logits: Float32Array, ids: Int32Array, k: number): Int32Array {
  const values = new Float32Array(ids.length);
  for (let j = 0; j < ids.length; j++) values[j] = logits[ids[j] as number] as number;
  const kth = values.slice().sort()[ids.length - k] as number;
  const out = new Int32Array(k);
  let n = 0;
  for (let j = 0; j < ids.length; j++) if ((values[j] as number) > kth) out[n++] = ids[j] as number;
  // Ties at the k-th value fill the rest in id order (ids are ascending).
  for (let j = 0; j < ids.length && n < k; j++) if (values[j] === kth) out[n++] = ids[j] as number;
  return out.sort();
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
