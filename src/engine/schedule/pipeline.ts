/**
 * Pipelined decode: when every running sequence decodes one row and each row's next input is the
 * id its previous step drew, up to `pipelineDepth` steps of the batch are in flight at once, each
 * taking its input ids from the previous step's output on the GPU. This file owns that burst: when
 * it may start, the KV slots reserved ahead of their tokens, the ring of steps in flight and the
 * in-order hand-off of their ids to the Batch.
 */
import { submitDecodeStep, type SampledStep } from '../forward/step.js';
import type { RowAdjust } from '../sampling/gpu.js';
import { emptyRows, type Batch, type Seq, type StepRows } from './batch.js';
import { offerRecycled } from './verify.js';

/**
 * Whether this step may start a pipelined burst: every running sequence decodes (one row each),
 * none waits to be admitted, attention is calibrated (calibration reads each step back), no
 * sequence asked for depth 1 (`ScheduledRequest.pipeline`), and every row's token is chosen on
 * the GPU (greedy, or drawn there: not CPU sampling). Logprobs do not stop a burst: the logprobs
 * kernel runs in each step and its rows come back with the ids, through the same readback ring.
 * Rows whose choice needs CPU state from the previous id (a grammar's mask, logit bias, presence /
 * frequency penalties, a repetition penalty: `needsTail`) run as an `adjustedBurst`
 * (adjusted-burst.ts), the others as a `decodeBurst`. A speculative sequence with no guesses this
 * step (resting, or nothing to guess) pipelines too; the burst stops once it has guesses to verify
 * (`mayRunAhead`).
 */
export function pipelinable(b: Batch, work: readonly { s: Seq; n: number }[]): boolean {
  if ((b.opts.pipelineDepth ?? 2) < 2 || b.waiting.length > 0) return false;
  if (b.forward.calibration?.active) return false;
  return work.every(
    ({ s, n }) => n === 1 && s.req.pipeline !== false && (s.sampler.greedy || b.opts.gpuSampling),
  );
}

/**
 * Whether a sequence's next choice needs CPU state from the id its previous step drew: its logit
 * edits (a grammar's mask, logit bias, presence / frequency penalties) or a repetition penalty
 * over its tokens so far. Such rows cannot be written with the step's forward pass ahead of that
 * id; `adjustedBurst` submits them in a second command buffer once it is known.
 */
export function needsTail(s: Seq): boolean {
  return s.sampler.adjusts || s.sampler.params.repetitionPenalty !== 1;
}

/**
 * Pipelined decode of a fixed batch: up to `pipelineDepth` steps in flight. Each step after the
 * first reserves the next KV slot of every sequence (its token id still unknown to the CPU) and
 * takes its input ids from the previous step's output on the GPU; ids come back through a ring
 * of readback buffers and are handled in order, as one-at-a-time steps would handle them. When a
 * sequence ends (EOS, max tokens, context, abort), a request arrives, or other work waits for
 * the GPU, no further step is submitted: the steps in flight are drained, the ended sequences'
 * extra rows discarded (their blocks are already free: anything written there later is queued
 * after those rows), and the next step is planned afresh.
 */
export async function decodeBurst(b: Batch, seqs: Seq[]): Promise<void> {
  const depth = Math.min(3, Math.max(1, b.opts.pipelineDepth ?? 2));
  const read = seqs.every((s) => s.sampler.greedy) ? 'ids' : 'sample';
  const inFlight: Promise<SampledStep>[] = [submitDecode(b, seqs, read, false)];
  let stop = false;
  for (;;) {
    while (!stop && inFlight.length < depth && mayRunAhead(b, seqs)) {
      inFlight.push(submitDecode(b, seqs, read, true));
    }
    const step = await (inFlight.shift() as Promise<SampledStep>);
    if (absorbDecode(b, seqs, step)) stop = true;
    if (b.othersWaiting()) stop = true;
    // Nothing in flight: the ids just handled are on the CPU, and the next step is planned
    // afresh by the loop (a new burst if nothing changed).
    if (inFlight.length === 0) return;
  }
}

/**
 * Whether every sequence of the burst can take one more step ahead: none ended or cancelled,
 * each still short of its max tokens and the context counting the steps in flight, and blocks
 * to reserve the slots.
 */
export function mayRunAhead(b: Batch, seqs: readonly Seq[]): boolean {
  if (b.othersWaiting()) return false;
  let blocks = 0;
  for (const s of seqs) {
    if (s.finished || s.cancelled || s.req.signal?.aborted) return false;
    // Guesses to verify: the steps in flight drain and the next step verifies them.
    if (s.spec?.wants(s.tokens)) return false;
    // After the steps in flight, this one would produce token produced + reserved + 2.
    if (s.produced + s.reserved + 1 >= s.req.maxTokens) return false;
    if (s.tokens.length + s.reserved + 1 >= b.opts.contextLength) return false;
    blocks += b.blocks.blocksNeeded(s.id, 1);
  }
  return blocks <= b.blocks.availableBlocks;
}

/**
 * Writes and submits one decode step of the burst. `ahead`: the step runs before the previous
 * step's ids are known; each row's position is the next one, its slot reserved now, its id
 * copied on the GPU.
 */
function submitDecode(
  b: Batch,
  seqs: readonly Seq[],
  read: 'ids' | 'sample',
  ahead: boolean,
): Promise<SampledStep> {
  const input = decodeRows(b, seqs, ahead);
  // One uniform per non-greedy draw, from the request's own generator, in step order.
  const sampling = read === 'sample' ? seqs.map((s) => s.sampler.gpuRow(s.tokens)) : undefined;
  const logprobs = seqs.map((s) => s.sampler.logprobs);
  const step = submitDecodeStep(b.forward, input, read, {
    chained: ahead,
    ...(sampling ? { sampling } : {}),
    ...(logprobs.some((k) => k !== null) ? { logprobs } : {}),
  });
  // A step still in flight when an earlier one fails is never awaited: its failure is the same.
  step.catch(() => undefined);
  return step;
}

/**
 * The rows of one decode step of a burst, one per sequence, counted in the stats. `ahead`: each
 * sequence's next KV slot is reserved now and its input id (still on the GPU) written as 0, to be
 * replaced there by the previous step's output before the forward pass.
 */
export function decodeRows(b: Batch, seqs: readonly Seq[], ahead: boolean): StepRows {
  const input = emptyRows();
  seqs.forEach((s, i) => {
    if (ahead) {
      b.copyBlocks(b.blocks.appendSlots(s.id, [0]).copies);
      s.reserved++;
    }
    const pos = s.tokens.length - 1 + s.reserved;
    const offset = input.blockTable.length;
    input.blockTable.push(...b.blocks.blockTable(s.id));
    b.addSliding(input, s, pos, pos + 1);
    // An id still on the GPU is written as 0 and replaced there before the forward pass.
    input.tokens.push(ahead ? 0 : (s.tokens[pos] as number));
    input.positions.push(pos);
    input.slots.push(b.blocks.slotFor(s.id, pos));
    input.blockTableOffsets.push(offset);
    input.logitRows.push(i);
  });
  b.counts.steps++;
  if (ahead) b.counts.aheadSteps++;
  return input;
}

/**
 * Handles the ids of one burst step, as a plain step handles its ids; a sequence that ended at an
 * earlier step of the burst is skipped (its row was extra). `adjusts`: the rows' edits and masks
 * of an adjusted burst's step (a row whose grammar allowed nothing ends its sequence, as in a
 * plain step). True when a sequence ended.
 */
export function absorbDecode(
  b: Batch,
  seqs: readonly Seq[],
  { ids, logprobs, drafts }: SampledStep,
  adjusts?: readonly (RowAdjust | null)[],
): boolean {
  let ended = false;
  const live = seqs.filter((s) => !s.finished && b.running.includes(s));
  for (const s of live) {
    s.computed += 1;
    b.blocks.markComputed(s.id, s.computed);
  }
  seqs.forEach((s, i) => {
    if (!live.includes(s) || s.finished) return;
    if (s.cancelled || s.req.signal?.aborted) {
      b.finish(s, 'abort');
      ended = true;
      return;
    }
    const mask = adjusts?.[i]?.mask;
    if (mask && !mask.some((w) => w !== 0)) {
      b.finish(s, 'stop');
      ended = true;
      return;
    }
    const token = ids[i] as number;
    // emit advances the sequence's grammar matcher and penalty counts, as after a plain step.
    const lp = logprobs?.[i];
    if (!b.emit(s, token, lp ? { logprob: lp.logprob, top: lp.top } : undefined)) {
      ended = true;
      return;
    }
    if (!b.running.includes(s)) return;
    offerRecycled(s, drafts, i);
    if (s.reserved > 0) {
      // Its slot was reserved by the step in flight that reads this token.
      s.reserved--;
      b.blocks.setToken(s.id, s.tokens.length - 1, token);
    } else b.grow(s, token);
  });
  return ended;
}
