/**
 * Pipelined decode of a batch where some row's choice needs CPU state from the id its previous
 * step drew (`needsTail`: a grammar's mask, logit bias, presence / frequency penalties, a
 * repetition penalty). Only the choice depends on that id, not the forward pass (its input id can
 * stay on the GPU), so each step goes in two halves: the forward pass, submitted at once, and the
 * tail (edits, mask, argmax or draw, logprobs, readback: `encodeDecodeTail`), encoded once the
 * previous id has come back and the rows' masks and edits have been computed from it, then
 * submitted with its readback started before the next step's forward pass is submitted (a
 * mapping waits for everything submitted before it: in one submit with the next forward pass,
 * the id would come back only after that pass). The GPU runs step t+1's forward pass while the
 * CPU reads id t back, advances the matchers and computes mask t+1.
 *
 * Submits, one step ahead:  F0 T0 F1 | T1 F2 | T2 F3 ...   (| : id t-1 read back)
 *
 * Every choice sees the same logits, edits, masks and uniforms as an unpipelined step would, in
 * the same order, so the tokens are the same. A sequence that ends (EOS, its grammar complete or
 * allowing nothing, max tokens, abort) stops the burst as in `decodeBurst`: the forward pass in
 * flight gets its tail for the rows still live and none when none is; the ended rows' results are
 * discarded (their blocks are already free: anything written there later is queued after).
 */
import {
  encodeDecodeTail,
  submitDecodeForward,
  submitDecodeTail,
  type DecodeTail,
  type SampledStep,
} from '../forward/step.js';
import type { StepPlan } from '../forward/plan.js';
import type { RowAdjust, RowSampling } from '../sampling/gpu.js';
import type { Batch, Seq } from './batch.js';
import { absorbDecode, decodeRows, mayRunAhead } from './pipeline.js';

/** An encoded tail, and the rows' edits it applies (for the empty-mask rule). */
interface Tail {
  encoded: DecodeTail;
  adjusts: readonly (RowAdjust | null)[];
}

/** The row of a sequence that ended while its step's forward pass ran: chosen and discarded. */
const DISCARDED: RowSampling = { temperature: 0, topK: 0, topP: 1, u: 0, repetitionPenalty: 1, context: [] };

export async function adjustedBurst(b: Batch, seqs: Seq[]): Promise<void> {
  const read = seqs.every((s) => s.sampler.greedy) ? 'ids' : 'sample';
  const first = submitDecodeForward(b.forward, decodeRows(b, seqs, false), false);
  let tail = await encodeTail(b, seqs, first, read);
  let stop = false;
  for (;;) {
    // The tail goes alone and its readback starts at once: a mapping waits for everything
    // submitted before it, so the next forward pass is submitted after, not with it.
    submitDecodeTail(b.forward, tail.encoded);
    const pending = tail.encoded.readback();
    // A readback still pending when an earlier step fails is never awaited: its failure is the same.
    pending.catch(() => undefined);
    // The next forward pass, its input ids the ones the tail just queued draws.
    let next: StepPlan | null = null;
    if (!stop && mayRunAhead(b, seqs)) {
      next = submitDecodeForward(b.forward, decodeRows(b, seqs, true), true);
      b.counts.adjustedAheadSteps++;
    }
    const step: SampledStep = await pending;
    if (absorbDecode(b, seqs, step, tail.adjusts)) stop = true;
    if (b.othersWaiting()) stop = true;
    if (!next || !seqs.some((s) => live(b, s))) return;
    tail = await encodeTail(b, seqs, next, read);
  }
}

function live(b: Batch, s: Seq): boolean {
  return !s.finished && b.running.includes(s);
}

/**
 * Computes each live row's edits and mask from its sequence's state (its ids so far are on the
 * CPU) and its sampling row (a uniform from its generator, in step order), and encodes the tail.
 */
async function encodeTail(
  b: Batch,
  seqs: readonly Seq[],
  plan: StepPlan,
  read: 'ids' | 'sample',
): Promise<Tail> {
  const adjusts = await Promise.all(seqs.map((s) => (live(b, s) ? s.sampler.rowAdjust() : null)));
  const sampling =
    read === 'sample' ? seqs.map((s) => (live(b, s) ? s.sampler.gpuRow(s.tokens) : DISCARDED)) : undefined;
  const logprobs = seqs.map((s) => s.sampler.logprobs);
  const encoded = encodeDecodeTail(b.forward, plan, read, {
    adjust: adjusts,
    ...(sampling ? { sampling } : {}),
    ...(logprobs.some((k) => k !== null) ? { logprobs } : {}),
  });
  return { encoded, adjusts };
}
