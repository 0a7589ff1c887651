/**
 * Speculative decoding's part of a step: a plain greedy sequence's guessed tokens (from its
 * Speculator) get KV slots and run as extra rows with a logit row each; the guesses are accepted
 * while they equal the model's argmax ids, the rejected ones' slots go back, and the model's
 * choices are handed on as one-token steps would have produced them. The guessing itself is
 * `speculative.ts`; this file is the glue between it and the scheduler's step.
 */
import type { RowLogprobs } from '../../kernels/logprobs.js';
import type { Batch, Seq } from './batch.js';

/**
 * Reserves KV slots for `s`'s guesses (at most `room` rows, and never past its max tokens or
 * the context) and returns them; none when the pool has no free blocks for them (a guess never
 * preempts anyone).
 */
export function guess(b: Batch, s: Seq, room: number): number[] {
  if (!s.spec || s.spec.off) return [];
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
  logprobs: readonly (RowLogprobs | null)[] | null,
  row0: number,
  accepted: number,
): void {
  for (let r = 0; r <= accepted; r++) {
    const token = ids[row0 + r] as number;
    const lp = logprobs?.[row0 + r];
    if (!b.emit(s, token, lp ? { logprob: lp.logprob, top: lp.top } : undefined)) return;
    if (r === accepted && b.running.includes(s)) b.grow(s, token);
  }
}
