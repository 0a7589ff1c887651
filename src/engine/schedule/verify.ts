/**
 * Speculative decoding's part of a step: a sequence's guessed tokens (from its Speculator) get KV
 * slots and run as extra rows with a logit row each; each row's id is chosen as the sequence's
 * next token would be after the guesses before it (argmax, or a draw with the request's own
 * settings and a uniform of its own), and the guesses are accepted while they equal those ids.
 * The rejected ones' slots go back, and the model's choices are handed on as one-token steps
 * would have produced them. The guessing itself is `speculative.ts`; this file is the glue
 * between it and the scheduler's step.
 *
 * Under sampling this is the speculative-sampling rule (Leviathan et al. 2023, Chen et al. 2023)
 * for a deterministic draft: the draft puts all its mass on its guess x, so x is accepted with
 * probability min(1, p(x) / 1) = p(x), and a rejection draws from p with x removed and
 * renormalised. A draw y ~ p from the row, accepted when y = x, does both at once: P(y = x) = p(x),
 * and given y != x, y is distributed as that residual. The row after the last accepted guess (or
 * after the last token) is a plain draw from p. Every emitted token is therefore a draw from the
 * distribution plain sampling would use at that position (the same temperature, top-k, top-p,
 * min-p and penalties, the penalties counting the guesses before the row), and the whole rule
 * runs in the GPU sampler with one uniform per row: only the ids come back, as for greedy rows.
 * Its tokens are not those plain sampling draws with the same seed (the uniforms are spent on
 * more rows), only distributed the same.
 */
import type { RowLogprobs } from '../../kernels/logprobs.js';
import type { Batch, Seq } from './batch.js';

/**
 * Reserves KV slots for `s`'s guesses (at most `room` rows, and never past its max tokens or
 * the context) and returns them; none when the pool has no free blocks for them (a guess never
 * preempts anyone).
 */
export function guess(b: Batch, s: Seq, room: number): number[] {
  if (!s.spec) return [];
  const limit = Math.min(room, s.req.maxTokens - s.produced - 1, b.opts.contextLength - s.tokens.length - 1);
  const draft = s.spec.draft(s.tokens, limit);
  if (draft.length === 0 || !b.blocks.canAppend(s.id, draft.length)) return [];
  b.copyBlocks(b.blocks.appendSlots(s.id, draft).copies);
  return draft;
}

/**
 * Checks `s`'s guesses against the argmax ids of its rows (from `row0`: its last token's, then
 * each guess's) and returns how many were accepted. The rejected guesses' slots go back; the
 * accepted ones hold the KV of the tokens the model chose (equal ids), so they count as computed.
 */
export function verifyGuesses(
  b: Batch,
  s: Seq,
  draft: readonly number[],
  got: ArrayLike<number>,
  row0: number,
): number {
  let a = 0;
  while (a < draft.length && draft[a] === got[row0 + a]) a++;
  const rows = [s.tokens[s.computed] as number, ...draft];
  s.spec?.record(
    rows,
    rows.map((_, i) => got[row0 + i] as number),
    a,
  );
  b.counts.specSteps++;
  b.counts.drafted += draft.length;
  b.counts.accepted += a;
  b.blocks.truncate(s.id, s.computed + 1 + a);
  s.computed += 1 + a;
  return a;
}

/**
 * Hands on a verifying sequence's tokens: the model's choices after its last token and after
 * each accepted guess (the rows [row0, row0 + accepted]), as one-token steps would have, each
 * checked for EOS, max tokens and the context, each with the logprobs of its row when asked (a row
 * after accepted guesses holds the logits a one-token step would have computed). The accepted
 * guesses' slots are already in place; the last token gets a new one.
 */
export function absorbVerified(
  b: Batch,
  s: Seq,
  ids: ArrayLike<number>,
  logprobs: readonly (Pick<RowLogprobs, 'logprob' | 'top'> | null | undefined)[] | null,
  row0: number,
  accepted: number,
  drafts: readonly (readonly number[])[] | null,
): void {
  for (let r = 0; r <= accepted; r++) {
    const token = ids[row0 + r] as number;
    const lp = logprobs?.[row0 + r];
    if (!b.emit(s, token, lp ? { logprob: lp.logprob, top: lp.top } : undefined)) return;
    if (r === accepted && b.running.includes(s)) b.grow(s, token);
  }
  offerRecycled(s, drafts, row0 + accepted);
}

/**
 * Hands `s` the guesses the GPU built from the recycling table after logit row `row`, whose id
 * the sequence has just taken (forward/recycle.ts); nothing without the stage.
 */
export function offerRecycled(s: Seq, drafts: readonly (readonly number[])[] | null, row: number): void {
  if (drafts && s.spec) s.spec.offer(drafts[row] ?? [], s.tokens.length);
}
