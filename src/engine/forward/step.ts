/**
 * Running steps on a ForwardModel. A step writes its inputs (model.ts), encodes its plan into ONE
 * command buffer and, unless it reads nothing back, waits for one id per logit row (argmax, or the
 * GPU sampler's draw), with the logprobs rows of the logit rows that ask, or the logits. A step
 * that reads nothing (a prefill chunk before the last)
 * skips the LM head and is only queued: the queue keeps steps in order, so the next step's
 * writes cannot overtake it.
 */
import { encodeDispatches, type Dispatch } from '../../gpu/dispatch.js';
import type { GpuTimer } from '../../gpu/timer.js';
import type { ProjectionRole } from '../../model/architecture.js';
import { LOGPROBS_ROW_BYTES, unpackLogprobs, type RowLogprobs } from '../../kernels/logprobs.js';
import type { RowAdjust, RowSampling } from '../sampling/gpu.js';
import type { ForwardModel, StepInput } from './model.js';
import { StepPlan } from './plan.js';
import { RECYCLE_ROW_BYTES, unpackDrafts } from './recycle.js';

/**
 * What a step copies back: one argmax id per logit row ('ids'), one sampled id per logit row
 * ('sample': temperature / top-k / top-p / repetition penalty on the GPU), the logits, or nothing.
 */
export type StepReadback = 'ids' | 'sample' | 'logits' | 'none';

export interface StepOptions {
  /** For a 'sample' step: one entry per logit row. */
  sampling?: readonly RowSampling[];
  /**
   * Logit edits and grammar masks, one entry per logit row (null: none), applied before argmax or
   * the sample kernel ('ids' and 'sample' steps; a 'logits' step reads the raw logits). A function
   * is called once the forward pass is submitted, so its CPU work overlaps the GPU's.
   */
  adjust?: readonly (RowAdjust | null)[] | (() => Promise<readonly (RowAdjust | null)[]>);
  /** Let this step feed the attention calibration (false for synthetic steps like warm-up). */
  calibrate?: boolean;
  /**
   * Logprobs per logit row ('ids' and 'sample' steps): the alternatives asked (0..20), or null. The
   * logprobs kernel runs after the argmax or draw, on the logits it chose from, and its rows come
   * back with the ids (see runSampledStep).
   */
  logprobs?: readonly (number | null)[];
}

/** A step's chosen ids and, where asked, their logprobs. */
export interface SampledStep {
  ids: Uint32Array;
  /** One entry per logit row (null where not asked); null when no row asked. */
  logprobs: (RowLogprobs | null)[] | null;
  /**
   * Token Recycling's guesses to follow each logit row's id (forward/recycle.ts), when the plan
   * has the stage; else null.
   */
  drafts: number[][] | null;
}

/** Whether any row asks for logprobs. */
const asksLogprobs = (rows: readonly (number | null)[] | undefined): rows is readonly (number | null)[] =>
  rows !== undefined && rows.some((k) => k !== null);

/** Encodes the logprobs pass (after the argmax or draw) when a row asks; whether it did. */
function encodeLogprobs(
  pass: GPUComputePassEncoder,
  plan: StepPlan,
  rows: readonly (number | null)[] | undefined,
): boolean {
  if (!asksLogprobs(rows)) return false;
  if (!plan.logprobs) throw new RangeError('a logprobs step before the stage was enabled');
  encodeDispatches(pass, [plan.logprobs.prepare(rows)]);
  return true;
}

/**
 * Splits an ids readback (ids, then logprobs rows when asked, then recycled guesses when
 * `drafts`) into a SampledStep.
 */
function sampledStep(
  data: ArrayBuffer,
  r: number,
  rows: readonly (number | null)[] | undefined,
  drafts: boolean,
): SampledStep {
  const lp = asksLogprobs(rows);
  const at = r * 4 + (lp ? r * LOGPROBS_ROW_BYTES : 0);
  return {
    ids: new Uint32Array(data, 0, r),
    logprobs: lp ? unpackLogprobs(data.slice(r * 4, at), rows) : null,
    drafts: drafts ? unpackDrafts(data, at, r) : null,
  };
}

/**
 * Copies the recycled guesses (when the plan has the stage and the step reads ids) to `dst` at
 * `bytes`; the bytes read back after it.
 */
function copyDrafts(enc: GPUCommandEncoder, plan: StepPlan, dst: GPUBuffer, bytes: number): number {
  if (!plan.recycle) return bytes;
  const n = plan.r * RECYCLE_ROW_BYTES;
  enc.copyBufferToBuffer(plan.recycle.out, 0, dst, bytes, n);
  return bytes + n;
}

/** Runs an 'ids' or 'sample' step and returns its ids with the logprobs its rows asked for. */
export async function runSampledStep(
  fm: ForwardModel,
  input: StepInput,
  read: 'ids' | 'sample',
  o: StepOptions = {},
): Promise<SampledStep> {
  const { data, plan } = await execute(fm, input, read, o);
  return sampledStep(data as ArrayBuffer, input.logitRows.length, o.logprobs, plan.recycle !== null);
}

export async function runStep(
  fm: ForwardModel,
  input: StepInput,
  read: 'ids' | 'sample',
  o?: StepOptions,
): Promise<Uint32Array>;
export async function runStep(
  fm: ForwardModel,
  input: StepInput,
  read: 'logits',
  o?: StepOptions,
): Promise<Float32Array>;
export async function runStep(fm: ForwardModel, input: StepInput, read: 'none'): Promise<null>;
export async function runStep(
  fm: ForwardModel,
  input: StepInput,
  read: StepReadback,
  o: StepOptions = {},
): Promise<Uint32Array | Float32Array | null> {
  const { data } = await execute(fm, input, read, o);
  if (data === null) return null;
  if (read === 'logits') return new Float32Array(data);
  return new Uint32Array(data, 0, input.logitRows.length);
}

/** One step: what `read` asks for, as the bytes read back (null for 'none'), and its plan. */
async function execute(
  fm: ForwardModel,
  input: StepInput,
  read: StepReadback,
  o: StepOptions,
): Promise<{ data: ArrayBuffer | null; plan: StepPlan }> {
  const { ctx, spec } = fm;
  const r = input.logitRows.length;
  const plan = fm.writeInputs(input);
  const queue = ctx.device.queue;
  const enc = ctx.device.createCommandEncoder({ label: 'kiln.step' });
  const cal = fm.calibration;
  const capture =
    (o.calibrate ?? true) &&
    cal !== null &&
    cal.active &&
    plan.graph.scoreCapture.length > 0 &&
    read !== 'none';
  const stamp = capture ? undefined : fm.stepClock?.passWrites();
  let pass = enc.beginComputePass({ label: 'kiln.forward', ...(stamp ? { timestampWrites: stamp } : {}) });
  if (capture) pass = cal.encode(enc, pass, plan);
  else encodeDispatches(pass, plan.graph.body);
  if (read !== 'none') encodeDispatches(pass, plan.graph.head);
  // Token Recycling's table learns from the model's own logits, before any edit.
  const recycle = plan.recycle && (read === 'ids' || read === 'sample') ? plan.recycle : null;
  if (recycle) encodeDispatches(pass, [recycle.update]);
  let tailEnc = enc;
  let adjustRows: readonly (RowAdjust | null)[] | undefined;
  if (typeof o.adjust === 'function') {
    if (read === 'ids' || read === 'sample') {
      // The forward pass runs on the GPU while the CPU computes the rows' masks (a grammar
      // matcher's work); the edits, the argmax or draw and the readback follow in a second submit.
      pass.end();
      queue.submit([enc.finish()]);
      adjustRows = await o.adjust();
      tailEnc = ctx.device.createCommandEncoder({ label: 'kiln.step_tail' });
      pass = tailEnc.beginComputePass({ label: 'kiln.sample' });
    } else adjustRows = await o.adjust();
  } else adjustRows = o.adjust;
  const adjust = () => {
    if (!adjustRows) return;
    if (!plan.adjust) throw new RangeError('a logit-adjusting step before the stage was enabled');
    encodeDispatches(pass, [plan.adjust.prepare(adjustRows)]);
  };
  if (read === 'ids') {
    adjust();
    encodeDispatches(pass, [plan.graph.argmax]);
  }
  if (read === 'sample') {
    if (!o.sampling) throw new RangeError("a 'sample' step needs its rows' sampling");
    if (!plan.sampling) throw new RangeError("a 'sample' step before sampling was enabled");
    const [penalty, draw] = plan.sampling.prepare(o.sampling);
    // The repetition penalty (when used) comes before the edits, as on the CPU path.
    if (draw) encodeDispatches(pass, [penalty as Dispatch]);
    adjust();
    encodeDispatches(pass, [draw ?? (penalty as Dispatch)]);
  }
  const withLogprobs = (read === 'ids' || read === 'sample') && encodeLogprobs(pass, plan, o.logprobs);
  if (recycle) encodeDispatches(pass, [recycle.draft]);
  pass.end();
  if (read === 'none') {
    queue.submit([enc.finish()]);
    return { data: null, plan };
  }
  const logits = read === 'logits';
  const src = logits ? plan.bufs.logits : plan.bufs.outIds;
  const dst = logits ? plan.bufs.logitsReadback : plan.bufs.idsReadback;
  let bytes = logits ? r * spec.vocabSize * 4 : r * 4;
  tailEnc.copyBufferToBuffer(src, 0, dst, 0, bytes);
  if (withLogprobs && plan.logprobs) {
    tailEnc.copyBufferToBuffer(plan.logprobs.out, 0, dst, bytes, r * LOGPROBS_ROW_BYTES);
    bytes += r * LOGPROBS_ROW_BYTES;
  }
  if (recycle) bytes = copyDrafts(tailEnc, plan, dst, bytes);
  queue.submit([tailEnc.finish()]);
  try {
    await dst.mapAsync(GPUMapMode.READ, 0, bytes);
  } catch (e) {
    ctx.assertAlive();
    throw e;
  }
  const data = dst.getMappedRange(0, bytes).slice(0);
  dst.unmap();
  if (capture) {
    const phi = await cal.absorb(plan, input.tokens.length);
    if (phi) fm.setPhi(phi);
  }
  // An error raised by this step arrives as an event; do not hand back what it produced.
  ctx.assertAlive();
  return { data, plan };
}

/**
 * Submits a decode step and returns its ids' readback without waiting for it, so the next step
 * can be written and submitted while this one runs (pipelined decode). `chained`: the step's
 * token ids are the previous step's output ids, copied on the GPU before its forward pass (the
 * previous step ran the same plan: one row and one logit row per sequence, in the same order), so
 * the CPU need not know them. Each step reads back through its own buffer of the plan's ring.
 * No calibration capture: steps are pipelined only once attention is calibrated.
 */
export function submitDecodeStep(
  fm: ForwardModel,
  input: StepInput,
  read: 'ids' | 'sample',
  o: { sampling?: readonly RowSampling[]; logprobs?: readonly (number | null)[]; chained: boolean },
): Promise<SampledStep> {
  const { enc, pass, plan } = encodeDecodeForward(fm, input, o.chained);
  if (read === 'ids') encodeDispatches(pass, [plan.graph.argmax]);
  else {
    if (!o.sampling || !plan.sampling) throw new RangeError("a 'sample' step needs sampling");
    encodeDispatches(pass, plan.sampling.prepare(o.sampling));
  }
  return submitWithReadback(fm, plan, enc, pass, o.logprobs);
}

/**
 * A pipelined decode step whose rows' logit edits (a grammar's mask, logit bias, penalties) or
 * repetition penalty depend on the id the previous step is still drawing goes in two halves: its
 * forward pass up to the logits (chained as in submitDecodeStep), queued before that id is read
 * back, so the GPU computes it while the CPU waits for the id and then computes the edits; and
 * its tail (`encodeDecodeTail`), queued once they are known, in its own submit with its readback
 * started before the next step's forward pass is submitted (a mapping waits for all work
 * submitted before it). Queue order keeps the writes of a tail's inputs after its own forward
 * pass, and the next forward pass's id copy after the tail's draw.
 */
export interface DecodeTail {
  readonly enc: GPUCommandEncoder;
  /** Starts the ids' readback: call once the encoder has been submitted. */
  readonly readback: () => Promise<SampledStep>;
}

/** Submits a decode step's forward pass (chained as in submitDecodeStep). */
export function submitDecodeForward(fm: ForwardModel, input: StepInput, chained: boolean): StepPlan {
  const { enc, pass, plan } = encodeDecodeForward(fm, input, chained);
  pass.end();
  fm.ctx.device.queue.submit([enc.finish()]);
  return plan;
}

/** Submits a tail (then start its readback, before submitting anything else). */
export function submitDecodeTail(fm: ForwardModel, tail: DecodeTail): void {
  fm.ctx.device.queue.submit([tail.enc.finish()]);
}

/**
 * Encodes the second half of a step whose forward pass `plan` ran: the rows' edits and masks
 * (logit_adjust), argmax or the draw (the repetition penalty before the edits, as in a plain
 * step), logprobs, and the copy of the ids into the plan's ring; their readback as
 * submitDecodeStep returns it.
 */
export function encodeDecodeTail(
  fm: ForwardModel,
  plan: StepPlan,
  read: 'ids' | 'sample',
  o: {
    adjust: readonly (RowAdjust | null)[];
    sampling?: readonly RowSampling[];
    logprobs?: readonly (number | null)[];
  },
): DecodeTail {
  const enc = fm.ctx.device.createCommandEncoder({ label: 'kiln.step' });
  const pass = enc.beginComputePass({ label: 'kiln.sample' });
  const adjust = () => {
    if (!o.adjust.some((a) => a !== null)) return;
    if (!plan.adjust) throw new RangeError('a logit-adjusting step before the stage was enabled');
    encodeDispatches(pass, [plan.adjust.prepare(o.adjust)]);
  };
  if (read === 'ids') {
    adjust();
    encodeDispatches(pass, [plan.graph.argmax]);
  } else {
    if (!o.sampling || !plan.sampling) throw new RangeError("a 'sample' step needs sampling");
    const [penalty, draw] = plan.sampling.prepare(o.sampling);
    // The repetition penalty (when used) comes before the edits, as in a plain step.
    if (draw) encodeDispatches(pass, [penalty as Dispatch]);
    adjust();
    encodeDispatches(pass, [draw ?? (penalty as Dispatch)]);
  }
  const copy = encodeReadback(plan, enc, pass, o.logprobs);
  return { enc, readback: () => mapReadback(fm, plan, copy, o.logprobs) };
}

/** Writes a pipelined decode step's inputs and encodes its forward pass (the pass left open). */
function encodeDecodeForward(
  fm: ForwardModel,
  input: StepInput,
  chained: boolean,
): { enc: GPUCommandEncoder; pass: GPUComputePassEncoder; plan: StepPlan } {
  const r = input.logitRows.length;
  if (r !== input.tokens.length) throw new RangeError('a pipelined step has one logit row per row');
  const plan = fm.writeInputs(input);
  const enc = fm.ctx.device.createCommandEncoder({ label: 'kiln.step' });
  if (chained) enc.copyBufferToBuffer(plan.bufs.outIds, 0, plan.bufs.ids, 0, r * 4);
  const stamp = fm.stepClock?.passWrites();
  const pass = enc.beginComputePass({ label: 'kiln.forward', ...(stamp ? { timestampWrites: stamp } : {}) });
  encodeDispatches(pass, plan.graph.body);
  encodeDispatches(pass, plan.graph.head);
  if (plan.recycle) encodeDispatches(pass, [plan.recycle.update]);
  return { enc, pass, plan };
}

/** A pipelined step's readback buffer and the bytes copied into it. */
interface RingCopy {
  dst: GPUBuffer;
  bytes: number;
}

/**
 * Encodes the logprobs pass where asked (and the recycled guesses' draft), ends the pass and
 * copies the ids (logprobs rows, guesses) into the next buffer of the plan's ring.
 */
function encodeReadback(
  plan: StepPlan,
  enc: GPUCommandEncoder,
  pass: GPUComputePassEncoder,
  logprobs: readonly (number | null)[] | undefined,
): RingCopy {
  const r = plan.r;
  const withLogprobs = encodeLogprobs(pass, plan, logprobs);
  if (plan.recycle) encodeDispatches(pass, [plan.recycle.draft]);
  pass.end();
  const dst = plan.nextReadback();
  enc.copyBufferToBuffer(plan.bufs.outIds, 0, dst, 0, r * 4);
  let bytes = r * 4 + (withLogprobs ? r * LOGPROBS_ROW_BYTES : 0);
  if (withLogprobs && plan.logprobs)
    enc.copyBufferToBuffer(plan.logprobs.out, 0, dst, r * 4, r * LOGPROBS_ROW_BYTES);
  bytes = copyDrafts(enc, plan, dst, bytes);
  return { dst, bytes };
}

/** Maps a submitted ring copy and hands its ids (logprobs, recycled guesses) back. */
function mapReadback(
  fm: ForwardModel,
  plan: StepPlan,
  { dst, bytes }: RingCopy,
  logprobs: readonly (number | null)[] | undefined,
): Promise<SampledStep> {
  const { ctx } = fm;
  const r = plan.r;
  return dst.mapAsync(GPUMapMode.READ, 0, bytes).then(
    () => {
      const data = dst.getMappedRange(0, bytes).slice(0);
      dst.unmap();
      ctx.assertAlive();
      return sampledStep(data, r, logprobs, plan.recycle !== null);
    },
    (e: unknown) => {
      ctx.assertAlive();
      throw e;
    },
  );
}

/** Ends a pipelined step's pass, copies its ids into the ring, submits and reads them back. */
function submitWithReadback(
  fm: ForwardModel,
  plan: StepPlan,
  enc: GPUCommandEncoder,
  pass: GPUComputePassEncoder,
  logprobs: readonly (number | null)[] | undefined,
): Promise<SampledStep> {
  const copy = encodeReadback(plan, enc, pass, logprobs);
  fm.ctx.device.queue.submit([enc.finish()]);
  return mapReadback(fm, plan, copy, logprobs);
}

/**
 * GPU milliseconds of every dispatch of one step with these inputs (each in its own timed
 * pass), summed by kernel variant: where a step's time goes. Runs the step for real.
 */
export async function profileStep(
  fm: ForwardModel,
  input: StepInput,
  timer: GpuTimer,
): Promise<{ label: string; ms: number; count: number }[]> {
  const plan = fm.writeInputs(input);
  const all = [...plan.graph.body, ...plan.graph.head, plan.graph.argmax];
  const ms = await timer.time(all.map((d) => ({ label: d.label, dispatches: [d] })));
  const by = new Map<string, { label: string; ms: number; count: number }>();
  all.forEach((d, i) => {
    const e = by.get(d.label) ?? { label: d.label, ms: 0, count: 0 };
    e.ms += ms[i] as number;
    e.count++;
    by.set(d.label, e);
  });
  return [...by.values()].sort((a, b) => b.ms - a.ms);
}

/**
 * Runs a step (no logits) and returns the input activations of every layer's projections:
 * [layer][role] = [tokens, cols] f32 (f32 activations only). For calibrating quantizers.
 */
export async function captureLinearInputs(
  fm: ForwardModel,
  input: StepInput,
): Promise<Record<ProjectionRole, Float32Array>[]> {
  const { ctx, spec } = fm;
  if (fm.activations !== 'f32') throw new RangeError('capturing projection inputs needs f32 activations');
  const m = input.tokens.length;
  const plan = fm.writeInputs(input);
  if (plan.graph.foldsNorms)
    throw new RangeError(
      "capturing projection inputs of a one-row step needs the separate rmsnorm (normFold 'separate')",
    );
  const enc = ctx.device.createCommandEncoder({ label: 'kiln.capture' });
  const reads: { layer: number; proj: ProjectionRole; buf: GPUBuffer; bytes: number }[] = [];
  let from = 0;
  try {
    for (const c of plan.graph.linearInputs) {
      const pass = enc.beginComputePass({ label: 'kiln.forward' });
      encodeDispatches(pass, plan.graph.body.slice(from, c.after + 1));
      pass.end();
      from = c.after + 1;
      const bytes = m * c.cols * 4;
      const buf = ctx.createBuffer(
        `capture.${c.layer}.${c.proj}`,
        bytes,
        GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
      );
      reads.push({ layer: c.layer, proj: c.proj, buf, bytes });
      enc.copyBufferToBuffer(c.buffer, 0, buf, 0, bytes);
    }
    ctx.device.queue.submit([enc.finish()]);
    const out: Record<ProjectionRole, Float32Array>[] = Array.from({ length: spec.numLayers }, () => ({
      qkv: new Float32Array(0),
      o: new Float32Array(0),
      gateUp: new Float32Array(0),
      down: new Float32Array(0),
    }));
    for (const r of reads) {
      await r.buf.mapAsync(GPUMapMode.READ, 0, r.bytes);
      (out[r.layer] as Record<ProjectionRole, Float32Array>)[r.proj] = new Float32Array(
        r.buf.getMappedRange(0, r.bytes).slice(0),
      );
      r.buf.unmap();
    }
    ctx.assertAlive();
    return out;
  } finally {
    for (const r of reads) ctx.destroyBuffer(r.buf);
  }
}

/**
 * Runs `input` once through a decode plan with the async-softmax kernels (phi 0, results
 * discarded) so their pipelines are compiled at load time, not in the middle of the first
 * generation when calibration switches to them. Nothing when there is no calibration ahead.
 */
export async function warmAsyncAttention(fm: ForwardModel, input: StepInput): Promise<void> {
  if (!fm.calibration?.active) return;
  const zeros = fm.attentionPhi.map(() => 0);
  const plan = new StepPlan(fm.ctx, fm, input.tokens.length, input.logitRows.length, zeros);
  try {
    fm.writeInputsTo(plan, input);
    const enc = fm.ctx.device.createCommandEncoder({ label: 'kiln.warm' });
    const pass = enc.beginComputePass();
    encodeDispatches(pass, plan.graph.body);
    pass.end();
    fm.ctx.device.queue.submit([enc.finish()]);
    await fm.ctx.device.queue.onSubmittedWorkDone();
  } finally {
    plan.destroy();
  }
}
