/**
 * Float64 twin of the logprobs kernel (shaders/logprobs.wgsl): the log-softmax of one logits row
 * at temperature 1, as the row stands after the sampler's own edits (repetition penalty, logit
 * bias, presence / frequency penalties, grammar mask, min-p cut), summarised as its log-sum-exp, the
 * chosen token's logprob and the `top` most likely tokens.
 *
 * - lse = M + ln Σ exp(v - M) over the finite logits (M their maximum); logprob(i) = v_i - lse.
 * - One or more +Infinity logits take all the mass, shared evenly: lse = +Infinity, each of the c
 *   infinite tokens has logprob -ln(c), every other token -Infinity.
 * - No finite or +Infinity logit (every logit -Infinity or NaN): lse = -Infinity and every logprob
 *   -Infinity.
 * - A NaN logit is no token: it adds nothing to the sum and its logprob is NaN.
 * - The top list: the `top` best tokens by rank (logit descending, then id ascending: among equal
 *   logits the lower id comes first; -0 equals +0) whose logprob is above -Infinity, so it is
 *   shorter when fewer tokens have any probability (a grammar mask that allows three tokens gives
 *   at most three).
 * - A chosen id outside the row has logprob NaN.
 */
export interface LogprobsRefResult {
  lse: number;
  /** logprob of the chosen token. */
  logprob: number;
  /** Best first. */
  top: { id: number; logprob: number }[];
}

export function logprobsRef(logits: ArrayLike<number>, top: number, chosen: number): LogprobsRefResult {
  const n = logits.length;
  let max = -Infinity;
  let infinite = 0;
  for (let i = 0; i < n; i++) {
    const v = logits[i] as number;
    if (v === Infinity) infinite++;
    else if (Number.isFinite(v) && v > max) max = v;
  }
  let lse: number;
  let of: (v: number) => number;
  if (infinite > 0) {
    lse = Infinity;
    of = (v) => (Number.isNaN(v) ? NaN : v === Infinity ? -Math.log(infinite) : -Infinity);
  } else if (max === -Infinity) {
    lse = -Infinity;
    of = (v) => (Number.isNaN(v) ? NaN : -Infinity);
  } else {
    let sum = 0;
    for (let i = 0; i < n; i++) {
      const v = logits[i] as number;
      if (Number.isFinite(v)) sum += Math.exp(v - max);
    }
    const log = Math.log(sum);
    lse = max + log;
    of = (v) => (Number.isNaN(v) ? NaN : v === -Infinity ? -Infinity : v - max - log);
  }
  // The best `top` by rank, kept in order while the row is read once (ids ascend, so an equal logit
  // met later never displaces an earlier one): a sort of the whole vocabulary per token would cost
  // more than the step on the CPU sampling path, which uses this twin.
  const k = Math.max(0, top);
  const best: number[] = [];
  for (let i = 0; i < n && k > 0; i++) {
    const v = logits[i] as number;
    if (!(of(v) > -Infinity)) continue;
    const last = best.length === k ? (logits[best[k - 1] as number] as number) : undefined;
    // +Infinity ties compare equal here too (the only case where v - last is NaN).
    if (last !== undefined && !(v > last)) continue;
    let at = best.length;
    while (at > 0 && (logits[best[at - 1] as number] as number) < v) at--;
    best.splice(at, 0, i);
    if (best.length > k) best.pop();
  }
  const list = best.map((id) => ({ id, logprob: of(logits[id] as number) }));
  const logprob = chosen >= 0 && chosen < n ? of(logits[chosen] as number) : NaN;
  return { lse, logprob, top: list };
}
