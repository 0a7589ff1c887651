/**
 * Float64 twin of the sample kernel (shaders/sample.wgsl), written for clarity: a full sort by
 * rank instead of the kernel's refinement scans.
 *
 * - NaN logits never win; no non-NaN logit: 0. Temperature <= 0, topK == 1, or a maximum that is
 *   +Infinity or -Infinity: the argmax (lowest index on ties).
 * - Candidates: logits >= max - 30·T and > -Infinity (each other token has probability below
 *   e^-30 of the top one, as in the CPU sampler).
 * - Rank = (logit descending, id ascending). topK > 0 keeps the first topK candidates by rank.
 * - w = exp((logit - max) / T). topP < 1 keeps the shortest rank prefix of the top-k set whose
 *   weight sum is >= topP · (the top-k set's weight sum).
 * - The token: walk the kept set in ascending id order subtracting w from u · (kept sum); the
 *   first id where it goes below 0, else the last kept id.
 *
 * The kernel gets temperature, topP and u as f32: pass f32-representable values here (Math.fround)
 * to compare against it.
 */
export const SAMPLE_CUTOFF = 30;

export interface SampleRefParams {
  temperature: number;
  topK: number;
  topP: number;
}

export interface SampleRefDetail {
  id: number;
  /**
   * How far the draw is from changing, relative to the sums involved: the smallest distance from
   * u·(kept sum) to a boundary of the walk (a prefix sum in id order, including 0 and the total),
   * over the kept sum, and from the top-p target to the prefix sums on either side of the cut, over
   * the top-k set's sum. Infinity when nothing random is involved (greedy). The f32 kernel can
   * only disagree with this twin when the margin is within its rounding (~1e-6).
   */
  margin: number;
}

/** The top-k set by rank with its weights, where top-p cuts it, or the greedy answer. */
interface Ranked {
  greedy: number | null;
  /** Ids of the top-k set, by rank. */
  order: number[];
  /** Their weights, by rank. */
  w: number[];
  /** How many of `order` top-p keeps. */
  keep: number;
  /** The top-k set's weight sum and the top-p goal (Infinity without top-p). */
  sum: number;
  goal: number;
  /** The top-p part of the margin (Infinity without top-p). */
  pMargin: number;
}

function ranked(logits: Float32Array, p: SampleRefParams): Ranked {
  let best = -1;
  for (let i = 0; i < logits.length; i++) {
    const v = logits[i] as number;
    if (!Number.isNaN(v) && (best < 0 || v > (logits[best] as number))) best = i;
  }
  const none = { order: [], w: [], keep: 0, sum: 0, goal: Infinity, pMargin: Infinity };
  if (best < 0) return { greedy: 0, ...none };
  const max = logits[best] as number;
  const T = p.temperature;
  if (!(T > 0) || p.topK === 1 || max === Infinity || max === -Infinity) return { greedy: best, ...none };
  const cut = max - SAMPLE_CUTOFF * T;
  const order: number[] = [];
  for (let i = 0; i < logits.length; i++) {
    const v = logits[i] as number;
    if (v >= cut && v > -Infinity) order.push(i);
  }
  // By rank: logit descending (-0 equals +0), then id ascending.
  order.sort((a, b) => (logits[b] as number) - (logits[a] as number) || a - b);
  if (p.topK > 0 && order.length > p.topK) order.length = p.topK;
  const w = order.map((i) => Math.exp(((logits[i] as number) - max) / T));
  let sum = 0;
  for (const x of w) sum += x;
  let keep = order.length;
  let goal = Infinity;
  let pMargin = Infinity;
  if (p.topP < 1) {
    goal = p.topP * sum;
    let acc = 0;
    for (let r = 0; r < w.length; r++) {
      const before = acc;
      acc += w[r] as number;
      if (acc >= goal) {
        keep = r + 1;
        // Moving the goal changes the cut only across W(keep) or, past the first, W(keep - 1).
        pMargin = Math.min(r > 0 ? goal - before : Infinity, acc - goal) / sum;
        break;
      }
    }
  }
  return { greedy: null, order, w, keep, sum, goal, pMargin };
}

/** The first `keep` ranked ids in ascending id order, with their weights and sum. */
function keptById(r: Ranked, keep: number): { ids: number[]; w: number[]; total: number } {
  const at = Array.from({ length: keep }, (_, j) => j).sort(
    (a, b) => (r.order[a] as number) - (r.order[b] as number),
  );
  const w = at.map((j) => r.w[j] as number);
  let total = 0;
  for (const x of w) total += x;
  return { ids: at.map((j) => r.order[j] as number), w, total };
}

/** A prepared row: the kept set is computed once, then any number of draws. */
export interface SampleRefDraws {
  /** The top-p part of every draw's margin (Infinity without top-p, or when greedy). */
  readonly cutMargin: number;
  draw(u: number): SampleRefDetail;
  /**
   * Every id that a computation whose sums are off by up to delta (relative) may pick: the walk's
   * picks for targets within delta·sum of u·sum, under every top-p cut whose prefix sum lies
   * within delta·sum of the goal. For draws whose margin is below delta.
   */
  near(u: number, delta: number): number[];
}

export function sampleRefPrepare(logits: Float32Array, p: SampleRefParams): SampleRefDraws {
  const r = ranked(logits, p);
  const k = r.greedy === null ? keptById(r, r.keep) : { ids: [], w: [], total: 0 };
  const draw = (u: number): SampleRefDetail => {
    if (r.greedy !== null) return { id: r.greedy, margin: Infinity };
    const x0 = u * k.total;
    let rest = x0;
    let id = -1;
    let acc = 0;
    let margin = Math.abs(x0);
    for (let j = 0; j < k.ids.length; j++) {
      acc += k.w[j] as number;
      margin = Math.min(margin, Math.abs(x0 - acc));
      rest -= k.w[j] as number;
      if (id < 0 && rest < 0) id = k.ids[j] as number;
    }
    if (id < 0) id = k.ids[k.ids.length - 1] as number;
    return { id, margin: Math.min(margin / k.total, r.pMargin) };
  };
  const near = (u: number, delta: number): number[] => {
    if (r.greedy !== null) return [r.greedy];
    const keeps: number[] = [];
    if (r.goal === Infinity) keeps.push(r.keep);
    else {
      let acc = 0;
      for (let j = 0; j < r.w.length; j++) {
        const before = acc;
        acc += r.w[j] as number;
        if (before >= r.goal + delta * r.sum) break;
        if (acc >= r.goal - delta * r.sum) keeps.push(j + 1);
      }
    }
    const out = new Set<number>();
    for (const keep of keeps) {
      const kk = keep === r.keep ? k : keptById(r, keep);
      const lo = (u - delta) * kk.total;
      const hi = (u + delta) * kk.total;
      let acc = 0;
      for (let j = 0; j < kk.ids.length; j++) {
        const next = acc + (kk.w[j] as number);
        // The walk picks this id for targets in [acc, next).
        if (next > lo && acc <= hi) out.add(kk.ids[j] as number);
        acc = next;
      }
      // Past the end: the last id.
      if (hi >= acc) out.add(kk.ids[kk.ids.length - 1] as number);
    }
    return [...out];
  };
  return { cutMargin: r.pMargin, draw, near };
}

/** The token sampleRef picks, and how close the draw is to picking another (see margin). */
export function sampleRefDetailed(logits: Float32Array, p: SampleRefParams, u: number): SampleRefDetail {
  return sampleRefPrepare(logits, p).draw(u);
}

/** The token drawn from `logits` with uniform number u in [0, 1); see the module comment. */
export function sampleRef(logits: Float32Array, p: SampleRefParams, u: number): number {
  return sampleRefDetailed(logits, p, u).id;
}

/** Each token's probability under `p` (the kept weights, normalized); 1 at the greedy answer. */
export function sampleRefProbabilities(logits: Float32Array, p: SampleRefParams): Float64Array {
  const out = new Float64Array(logits.length);
  const r = ranked(logits, p);
  if (r.greedy !== null) {
    if (logits.length > 0) out[r.greedy] = 1;
    return out;
  }
  const k = keptById(r, r.keep);
  k.ids.forEach((id, j) => (out[id] = (k.w[j] as number) / k.total));
  return out;
}
