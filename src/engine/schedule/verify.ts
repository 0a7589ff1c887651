/**
 * Speculative decoding's part of a step: a sequence's guesses (a token tree from its Speculator,
 * token-tree.ts; a chain is a tree) get KV slots and run as extra rows with a logit row each, a
 * node seeing only its ancestors (the tree attention mask, kernels/row-info.ts); each row's id is
 * chosen as the sequence's next token would be after the node's path (argmax, or a draw with the
 * request's own settings and a uniform of its own), and from the root the path is followed while
 * the chosen id is one of the current node's children. The accepted nodes' KV moves to the path's
 * slots, the rest go back, and the model's choices are handed on as one-token steps would have
 * produced them. The guessing itself is `speculative.ts`; this file is the glue between it and
 * the scheduler's step.
 *
 * Under sampling this is the speculative-sampling rule (Leviathan et al. 2023, Chen et al. 2023)
 * for deterministic drafts: at a node, a draw y ~ p from its row is the emitted token; when y is
 * one of the node's children the path goes on to that child's row, a draw from p given the path
 * so far. For one child x this is the one-token rule itself: x is accepted with probability
 * min(1, p(x) / 1) = p(x), and a rejection draws from p with x removed and renormalised, which y
 * given y != x is; for several children the same argument holds with the children's set in place
 * of x (the drafts put their mass on distinct tokens). Every emitted token is therefore a draw
 * from the distribution plain sampling would use at that position (the same temperature, top-k,
 * top-p, min-p and penalties, the penalties counting the path before the row), and the whole rule
 * runs in the GPU sampler with one uniform per row (rows on one path are at different depths, so
 * their uniforms are independent): only the ids come back, as for greedy rows. Its tokens are not
 * those plain sampling draws with the same seed (the uniforms are spent on more rows), only
 * distributed the same.
 */
import { ATTENTION_DECODE_MAX_ROWS } from '../../kernels/attention-decode.js';
import type { RowLogprobs } from '../../kernels/logprobs.js';
import { acceptPath, treeRows, type TokenTree } from '../token-tree.js';
import type { Batch, Seq, StepRows } from './batch.js';

const NO_DRAFT: TokenTree = { tokens: [], parents: [] };

/**
 * Guesses each decoding sequence may add to a step of decode rows that fits split-K decode
 * attention (at most ATTENTION_DECODE_MAX_ROWS rows): an equal share of the rows left after one
 * per decoding sequence, so the step still fits. One row more and the step runs the prefill
 * kernels, made for long chunks of one sequence, where a few guessed rows per sequence cost
 * several times as much (BabyLlama on lavapipe, 4 sequences copying with 8-deep drafts: 36-row
 * verifying steps produced 0.74 tokens/ms against plain decode's 1.40). A step that prefills too,
 * or has more decoding sequences than those rows, runs the prefill kernels anyway: no share, the
 * token budget bounds it (Infinity).
 */
export function guessShare(running: readonly Pick<Seq, 'tokens' | 'computed'>[]): number {
  const decoding = running.filter((s) => s.tokens.length - s.computed === 1).length;
  const prefilling = running.some((s) => s.tokens.length - s.computed > 1);
  if (prefilling || decoding > ATTENTION_DECODE_MAX_ROWS || decoding === 0) return Infinity;
  return Math.floor((ATTENTION_DECODE_MAX_ROWS - decoding) / decoding);
}

/**
 * Reserves KV slots for `s`'s guesses (at most `room` nodes within the context, and never deeper
 * than its max tokens allow) and returns them; none when the pool has no free blocks for them (a
 * guess never preempts anyone).
 */
export function guess(b: Batch, s: Seq, room: number): TokenTree {
  if (!s.spec) return NO_DRAFT;
  const nodes = Math.min(room, b.opts.contextLength - s.tokens.length - 1);
  const draft = s.spec.draft(s.tokens, nodes, b.trees, s.req.maxTokens - s.produced - 1);
  if (draft.tokens.length === 0 || !b.blocks.canAppend(s.id, draft.tokens.length)) return NO_DRAFT;
  b.copyBlocks(b.blocks.appendSlots(s.id, draft.tokens).copies);
  return draft;
}

/**
 * Adds `s`'s verifying rows to a step: its last token (plain), then each node i of `draft` at slot
 * p + 1 + i, position p + depth, seeing the committed slots and its ancestors'. Returns each row's
 * path before it (what a sampled row is drawn after).
 */
export function pushTreeRows(
  b: Batch,
  input: StepRows,
  s: Seq,
  draft: TokenTree,
  offset: number,
): number[][] {
  const p = s.computed;
  const { depth, mask } = treeRows(draft);
  const paths: number[][] = [[]];
  const row = (token: number, position: number, slotPos: number, tree?: { base: number; mask: number }) => {
    input.logitRows.push(input.tokens.length);
    input.tokens.push(token);
    input.positions.push(position);
    input.slots.push(b.blocks.slotFor(s.id, slotPos));
    input.blockTableOffsets.push(offset);
    while (input.tree.length < input.tokens.length - 1) input.tree.push(undefined);
    input.tree.push(tree);
  };
  row(s.tokens[p] as number, p, p);
  draft.tokens.forEach((t, i) => {
    row(t, p + (depth[i] as number), p + 1 + i, { base: p + 1, mask: mask[i] as number });
    const parent = draft.parents[i] as number;
    paths.push([...(paths[parent + 1] as number[]), t]);
  });
  return paths;
}

/**
 * Follows `s`'s tree through the ids of its rows (from `row0`: its last token's, then each node's)
 * and returns the logit rows whose ids it hands on (the root's, then each accepted node's). The
 * accepted nodes' KV moves to the path's slots (p + 1 + node to p + depth: never onto a slot a
 * later move reads, as a node's index is at least its depth - 1 and grows along the path), the
 * rest go back; the accepted ones count as computed.
 */
export function verifyGuesses(
  b: Batch,
  s: Seq,
  draft: TokenTree,
  got: ArrayLike<number>,
  row0: number,
): number[] {
  const p = s.computed;
  const path = acceptPath(draft, (node) => got[row0 + 1 + node] as number);
  const a = path.length;
  const rows = [s.tokens[p] as number, ...draft.tokens];
  s.spec?.record(
    rows,
    rows.map((_, i) => got[row0 + i] as number),
    a,
    Math.max(0, ...treeRows(draft).depth),
  );
  b.counts.specSteps++;
  b.counts.drafted += draft.tokens.length;
  b.counts.accepted += a;
  const moves = path.map((node, d) => ({ from: p + 1 + node, to: p + 1 + d })).filter((m) => m.from !== m.to);
  b.moveKv(s, moves);
  for (const m of moves) b.blocks.setToken(s.id, m.to, draft.tokens[m.from - p - 1] as number);
  b.blocks.truncate(s.id, p + 1 + a);
  s.computed += 1 + a;
  return [row0, ...path.map((node) => row0 + 1 + node)];
}

/**
 * Hands on a verifying sequence's tokens: the model's choices at `rows` (after its last token and
 * after each accepted guess), as one-token steps would have, each checked for EOS, max tokens and
 * the context, each with the logprobs of its row when asked (a row after accepted guesses holds
 * the logits a one-token step would have computed). The accepted guesses' slots are already in
 * place; the last token gets a new one.
 */
export function absorbVerified(
  b: Batch,
  s: Seq,
  ids: ArrayLike<number>,
  logprobs: readonly (Pick<RowLogprobs, 'logprob' | 'top'> | null | undefined)[] | null,
  rows: readonly number[],
  drafts: readonly (readonly number[])[] | null,
): void {
  for (const [r, row] of rows.entries()) {
    const token = ids[row] as number;
    const lp = logprobs?.[row];
    if (!b.emit(s, token, lp ? { logprob: lp.logprob, top: lp.top } : undefined)) return;
    if (r === rows.length - 1 && b.running.includes(s)) b.grow(s, token);
  }
  offerRecycled(s, drafts, rows.at(-1) as number);
}

/**
 * Hands `s` the tree the GPU filled from the recycling table after logit row `row`, whose id the
 * sequence has just taken (forward/recycle.ts); nothing without the stage.
 */
export function offerRecycled(s: Seq, drafts: readonly (readonly number[])[] | null, row: number): void {
  if (drafts && s.spec) s.spec.offer(drafts[row] ?? [], s.tokens.length);
}
