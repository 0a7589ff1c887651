/**
 * Quality of a model on a text, teacher forced: perplexity, and against a reference model (e.g.
 * the float model a quantized one came from) the mean KL divergence of the next-token
 * distributions KL(reference ‖ model) and how often both rank the same token first. All sums in
 * float64 from the f32 logits. Texts longer than the context are read in consecutive windows of
 * the context length, each from its own start (no sliding overlap).
 */
import { InvalidRequestError } from '../errors.js';
import type { Engine } from './engine.js';

export interface EvalResult {
  /** Predicted positions (text tokens minus one per window). */
  tokens: number;
  perplexity: number;
  reference_perplexity: number | null;
  kl_mean: number | null;
  top1_agreement: number | null;
}

/** log-softmax of one row, float64. */
export function logSoftmax(row: Float32Array, offset = 0, n = row.length): Float64Array {
  let max = -Infinity;
  for (let i = 0; i < n; i++) max = Math.max(max, row[offset + i] as number);
  let sum = 0;
  for (let i = 0; i < n; i++) sum += Math.exp((row[offset + i] as number) - max);
  const lse = max + Math.log(sum);
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) out[i] = (row[offset + i] as number) - lse;
  return out;
}

function argmax(v: Float64Array): number {
  let best = 0;
  for (let i = 1; i < v.length; i++) if ((v[i] as number) > (v[best] as number)) best = i;
  return best;
}

/** KL(p ‖ q) from log-probabilities. */
export function klDivergence(logP: Float64Array, logQ: Float64Array): number {
  let kl = 0;
  for (let i = 0; i < logP.length; i++) {
    const lp = logP[i] as number;
    if (lp > -Infinity) kl += Math.exp(lp) * (lp - (logQ[i] as number));
  }
  return kl;
}

/** Evaluates `model` (and `reference`, when given) on the token ids of a text. */
export async function evaluateText(
  model: Engine,
  ids: readonly number[],
  reference?: Engine,
  onProgress?: (done: number, total: number) => void,
  /** Ids read per step (default: the prefill chunk; 1 fills the KV cache as decoding does). */
  rowsPerStep?: number,
): Promise<EvalResult> {
  if (ids.length < 2) throw new InvalidRequestError('the evaluation text needs at least 2 tokens');
  const V = model.spec.vocabSize;
  if (reference && reference.spec.vocabSize !== V) {
    throw new InvalidRequestError(
      `the reference model's vocabulary (${reference.spec.vocabSize}) differs from the model's (${V})`,
    );
  }
  const window = Math.min(model.contextLength, reference?.contextLength ?? Infinity);
  let n = 0;
  let nll = 0;
  let refNll = 0;
  let kl = 0;
  let agree = 0;
  for (let w = 0; w < ids.length - 1; w += window) {
    const part = ids.slice(w, Math.min(ids.length, w + window));
    if (part.length < 2) break;
    const mine = model.logitChunks(part, rowsPerStep);
    const theirs = reference?.logitChunks(part, rowsPerStep);
    try {
      for (;;) {
        const a = await mine.next();
        const b = theirs ? await theirs.next() : undefined;
        if (a.done) break;
        const { start, rows, logits } = a.value;
        if (b && !b.done && (b.value.start !== start || b.value.rows !== rows)) {
          throw new InvalidRequestError('the model and the reference must use the same prefill chunk size');
        }
        for (let r = 0; r < rows; r++) {
          const pos = start + r;
          // The last position of a window predicts nothing inside it.
          if (pos + 1 >= part.length) continue;
          const target = part[pos + 1] as number;
          const lq = logSoftmax(logits, r * V, V);
          nll -= lq[target] as number;
          if (b && !b.done) {
            const lp = logSoftmax(b.value.logits, r * V, V);
            refNll -= lp[target] as number;
            kl += klDivergence(lp, lq);
            if (argmax(lp) === argmax(lq)) agree++;
          }
          n++;
        }
        onProgress?.(n, ids.length - 1);
      }
    } finally {
      await mine.return(undefined);
      await theirs?.return(undefined);
    }
  }
  return {
    tokens: n,
    perplexity: Math.exp(nll / n),
    reference_perplexity: reference ? Math.exp(refNll / n) : null,
    kl_mean: reference ? kl / n : null,
    top1_agreement: reference ? agree / n : null,
  };
}
