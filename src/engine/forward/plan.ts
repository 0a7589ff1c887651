/**
 * The forward pass on the GPU. A StepPlan holds everything one step shape needs (activation
 * buffers, uniforms, bind groups, the recorded dispatch list) and is built once per (rows, logit
 * rows); a step then writes a few small input buffers and submits ONE command buffer that runs
 *   embed -> per layer [rmsnorm -> qkv (one fused matmul, +bias) -> rope(q, k) + KV-cache write
 *   -> attention -> o (+residual) -> rmsnorm -> gate·up with the SwiGLU epilogue -> down (+residual)]
 *   -> final rmsnorm of the rows that need logits -> lm head -> argmax
 * and copies back one id per logit row (argmax, or the GPU sampler's draw) or the logits.
 * Decode-shaped steps run split-K attention, exact until the per-layer unified max of the async
 * softmax has been calibrated on the first decode steps (see `absorbCapture` below).
 */
import { storageUsage, type GpuContext } from '../../gpu/device.js';
import type { GpuTimer } from '../../gpu/timer.js';
import { activationBytes, checkActivationFormat, type ActivationFormat } from '../../kernels/activation.js';
import { argmax } from '../../kernels/argmax.js';
import { attention } from '../../kernels/attention.js';
import {
  AttentionDecodeScratch,
  attentionDecode,
  pickDecodeChunk,
  supportsAttentionDecode,
} from '../../kernels/attention-decode.js';
import { DispatchBuilder, encodeDispatches, type Dispatch } from '../../gpu/dispatch.js';
import { embed } from '../../kernels/embed.js';
import { embedQ4 } from '../../kernels/embed-q4.js';
import { isQ4Weight, linear, type LinearArgs, type LinearScratch } from '../../kernels/linear.js';
import { rmsnorm } from '../../kernels/rmsnorm.js';
import { ropeKvWrite } from '../../kernels/rope-kv-write.js';
import {
  packPenaltyRows,
  packSampleParams,
  PENALTY_ROW_BYTES,
  repetitionPenalty,
  sample,
  SAMPLE_ROW_BYTES,
  type PenaltyRow,
  type SampleRowParams,
} from '../../kernels/sample.js';
import { ropeInvFreq, ropeTable } from '../../kernels/rope.ref.js';
import { BLOCK_TOKENS, type PagedKvCache } from '../kv/cache.js';
import type { ModelSpec } from '../../model/spec.js';
import type { ModelWeights } from '../../weights/loader.js';
import { KernelChoices } from '../../tuner/choices.js';

/** What one step computes: `tokens[i]` at `positions[i]`, K/V written to `slots[i]`. */
export interface StepInput {
  tokens: readonly number[];
  positions: readonly number[];
  slots: readonly number[];
  /** Offset of each row's sequence in `blockTable`. */
  blockTableOffsets: readonly number[];
  /** Concatenated block tables of the sequences in the step. */
  blockTable: readonly number[];
  /** The rows whose logits are wanted (e.g. the last prompt row), in output order. */
  logitRows: readonly number[];
  /** For a 'sample' step: one entry per logit row (the draw and its repetition penalty). */
  sampling?: readonly RowSampling[];
}

/** How one logit row is sampled on the GPU (see kernels/sample.ts). */
export interface RowSampling extends SampleRowParams {
  /** 1 = off. */
  repetitionPenalty: number;
  /** Token ids the penalty applies to (duplicates allowed; the plan dedupes them). */
  context: readonly number[];
}

/**
 * How far above phi a score may go before the async-softmax kernel flags its row for the exact
 * recompute (OVERFLOW_B in shaders/attention_split.wgsl): e^60 and sums of thousands of such terms
 * stay finite in f32.
 */
const ASYNC_WINDOW = 60;

/**
 * Steps of up to this many rows use split-K decode attention (batched decodes: one row per
 * sequence). Measured on lavapipe, BabyLlama, 16 decode rows at context 64: attention 22.5 ms per
 * step with the one-workgroup-per-(row, head) kernel, 13.6 ms split-K. Longer steps are prefill
 * chunks, which the general kernel serves with rows × heads workgroups already.
 */
export const DECODE_ATTENTION_MAX_ROWS = 32;

const USAGE_IN = () => GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST;

/**
 * What a step copies back: one argmax id per logit row ('ids'), one sampled id per logit row
 * ('sample': temperature / top-k / top-p / repetition penalty on the GPU), the logits, or nothing.
 */
export type StepReadback = 'ids' | 'sample' | 'logits' | 'none';

/** The four projections of a layer, named by what they compute. */
export type LinearInputName = 'qkv' | 'o' | 'gateUp' | 'down';

export class StepPlan {
  readonly buffers: GPUBuffer[] = [];
  /** Embedding and every layer: what each step runs. */
  readonly dispatches: Dispatch[] = [];
  /** Final norm of the logit rows and the LM head (skipped by steps that read nothing back). */
  readonly head: Dispatch[] = [];
  /** Greedy decoding's argmax over the logits (skipped when the logits are read back). */
  readonly argmax: Dispatch;
  /** CPU-side staging of the step inputs, reused every step: [m] ids, [2m] row info, [m] slots, [r] rows. */
  readonly scratch: { ids: Uint32Array; rowInfo: Uint32Array; slots: Uint32Array; logitRows: Uint32Array };
  private readonly builder: DispatchBuilder;
  /** GPU sampling state, made at the first 'sample' step (its pipeline is slow to compile). */
  private sampler: {
    params: GPUBuffer;
    penaltyRows: GPUBuffer;
    tokens: GPUBuffer;
    dispatches: Dispatch[];
  } | null = null;
  /** Split-K attention partials, for decode-shaped plans. */
  readonly decodeScratch: AttentionDecodeScratch | null = null;
  /** Exact split-K attention dispatches: their layer and index (for score calibration). */
  readonly scoreCapture: { layer: number; after: number }[] = [];
  /**
   * Where each projection's input is complete (dispatch index `after`) and which buffer holds it:
   * quantizers calibrate on these activations (see `ForwardModel.captureLinearInputs`).
   */
  readonly linearInputs: {
    layer: number;
    proj: LinearInputName;
    after: number;
    buffer: GPUBuffer;
    cols: number;
  }[] = [];
  /** [m] u32 */ readonly ids: GPUBuffer;
  /** [m] vec2<u32> (position, block-table offset) */ readonly rowInfo: GPUBuffer;
  /** [m] u32 */ readonly slots: GPUBuffer;
  /** [r] u32 */ readonly logitRowMap: GPUBuffer;
  /** [r, vocab] f32 */ readonly logits: GPUBuffer;
  /** [r] u32 */ readonly outIds: GPUBuffer;
  readonly idsReadback: GPUBuffer;
  readonly logitsReadback: GPUBuffer;

  constructor(
    private readonly ctx: GpuContext,
    readonly m: number,
    readonly r: number,
    model: ForwardModel,
  ) {
    const { spec, weights, kv } = model;
    const b = (this.builder = new DispatchBuilder(ctx));
    const f32 = (label: string, elems: number, usage = storageUsage()) =>
      this.buffer(label, elems * 4, usage);
    const H = spec.hiddenSize;
    const qDim = spec.numHeads * spec.headDim;
    const kvDim = spec.numKvHeads * spec.headDim;
    const I = spec.intermediateSize;
    this.ids = f32('step.ids', m, USAGE_IN());
    this.rowInfo = f32('step.row_info', 2 * m, USAGE_IN());
    this.slots = f32('step.slots', m, USAGE_IN());
    this.logitRowMap = f32('step.logit_rows', r, USAGE_IN());
    /** [m, H] residual stream */ const x = f32('act.x', m * H);
    /** [m, H] normed, the qkv and gate_up matmuls' X (f16 when activations are f16) */
    const xn = this.buffer(
      'act.xn',
      Math.ceil((m * H * activationBytes(model.activations)) / 4) * 4,
      storageUsage(),
    );
    /** [m, qDim + 2·kvDim] */ const qkv = f32('act.qkv', m * (qDim + 2 * kvDim));
    /** [m, qDim] rotated q */ const q = f32('act.q', m * qDim);
    /** [m, qDim] */ const att = f32('act.attn', m * qDim);
    /** [m, I] silu(gate)·up */ const act = f32('act.mlp', m * I);
    // int4 projections: the stacked gate/up output before SwiGLU, and X gathered by a column
    // permutation (GPTQ act-order), made only when some projection needs them.
    const linears = weights.layers.flatMap((L) => [L.qkv, L.o, L.gateUp, L.down]);
    const scratch: LinearScratch = {};
    if (weights.layers.some((L) => isQ4Weight(L.gateUp.weight)))
      scratch.gateUp = f32('act.gate_up', m * 2 * I);
    const permuted = linears.filter((l) => l.perm);
    if (permuted.length > 0) {
      scratch.gathered = f32('act.gathered', m * Math.max(...permuted.map((l) => l.weight.cols)));
    }
    /** [r, H] normed rows for the LM head (f16 when activations are f16) */
    const fin = this.buffer(
      'act.final',
      Math.ceil((r * H * activationBytes(model.activations)) / 4) * 4,
      storageUsage(),
    );
    this.logits = f32('act.logits', r * spec.vocabSize);
    this.outIds = f32('act.out_ids', r);
    this.idsReadback = this.buffer('readback.ids', r * 4, GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST);
    this.logitsReadback = this.buffer(
      'readback.logits',
      r * spec.vocabSize * 4,
      GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
    );

    // Decode-shaped steps (a few rows over a long context) use split-K attention; prefill chunks
    // keep the one-workgroup-per-(head, row) kernel, which already has rows × heads workgroups.
    const maxContext = model.contextLength;
    if (
      m <= DECODE_ATTENTION_MAX_ROWS &&
      // Other shapes (more than 8 query heads per KV head, unusual head_dim) keep the general kernel.
      supportsAttentionDecode(spec.numHeads, spec.numKvHeads, spec.headDim)
    ) {
      const shape = {
        heads: spec.numHeads,
        kvHeads: spec.numKvHeads,
        headDim: spec.headDim,
        kvDtype: kv.dtype,
      };
      const chunk =
        model.choices.attentionChunk(shape, m, maxContext) ??
        pickDecodeChunk({ maxContext, kvHeads: spec.numKvHeads, rows: m });
      this.decodeScratch = new AttentionDecodeScratch(ctx, {
        rows: m,
        heads: spec.numHeads,
        headDim: spec.headDim,
        maxContext,
        chunk,
      });
    }

    const ph = model.placeholder;
    // Every projection of the plan shares the placeholder, the int4 scratch and the tuned choices.
    const project = (a: Omit<LinearArgs, 'placeholder' | 'scratch' | 'choices'>): Dispatch[] =>
      linear(b, { ...a, placeholder: ph, scratch, choices: model.choices });
    const d = this.dispatches;
    const eps = spec.rmsNormEps;
    const table = weights.embed;
    d.push(
      ...(isQ4Weight(table)
        ? embedQ4(b, { table, ids: this.ids, out: x, m })
        : embed(b, { table, ids: this.ids, out: x, m })),
    );
    weights.layers.forEach((L, l) => {
      const kCache = kv.k[l] as GPUBuffer;
      const vCache = kv.v[l] as GPUBuffer;
      const normOut = { out: model.activations };
      const xIn = { xFormat: model.activations };
      d.push(
        rmsnorm(b, {
          x,
          weight: L.inputNorm,
          rows: model.identityRows,
          y: xn,
          m,
          hidden: H,
          eps,
          ...normOut,
        }),
      );
      const input = (proj: LinearInputName, buffer: GPUBuffer, cols: number) =>
        this.linearInputs.push({ layer: l, proj, after: d.length - 1, buffer, cols });
      input('qkv', xn, H);
      d.push(...project({ x: xn, lin: L.qkv, y: qkv, m, ...xIn }));
      d.push(
        ropeKvWrite(b, {
          rowInfo: this.rowInfo,
          slots: this.slots,
          table: model.ropeTable,
          qkv,
          q,
          kCache,
          vCache,
          m,
          heads: spec.numHeads,
          kvHeads: spec.numKvHeads,
          headDim: spec.headDim,
          kvDtype: kv.dtype,
        }),
      );
      const attnArgs = {
        rowInfo: this.rowInfo,
        blockTable: model.blockTable,
        q,
        kCache,
        vCache,
        out: att,
        m,
        heads: spec.numHeads,
        kvHeads: spec.numKvHeads,
        headDim: spec.headDim,
        scale: 1 / Math.sqrt(spec.headDim),
        kvDtype: kv.dtype,
      };
      if (this.decodeScratch) {
        const phi = model.attentionPhi[l] ?? null;
        const calls = attentionDecode(b, {
          ...attnArgs,
          maxContext: this.decodeScratch.shape.maxContext,
          chunk: this.decodeScratch.shape.chunk,
          variant: phi === null ? 'two_pass' : 'async_softmax',
          ...(phi === null ? {} : { phi }),
          scratch: this.decodeScratch,
        });
        // Where calibration copies this layer's split maxima out (after the exact pass 1).
        if (phi === null) this.scoreCapture.push({ layer: l, after: d.length });
        d.push(...calls);
      } else d.push(attention(b, attnArgs));
      input('o', att, qDim);
      d.push(...project({ x: att, lin: L.o, y: x, m, accumulate: true }));
      d.push(
        rmsnorm(b, { x, weight: L.postNorm, rows: model.identityRows, y: xn, m, hidden: H, eps, ...normOut }),
      );
      input('gateUp', xn, H);
      d.push(...project({ x: xn, lin: L.gateUp, y: act, m, swiglu: true, ...xIn }));
      input('down', act, I);
      d.push(...project({ x: act, lin: L.down, y: x, m, accumulate: true }));
    });
    this.head.push(
      rmsnorm(b, {
        x,
        weight: weights.finalNorm,
        rows: this.logitRowMap,
        y: fin,
        m: r,
        hidden: H,
        eps,
        out: model.activations,
      }),
      ...project({
        x: fin,
        lin: { weight: weights.lmHead },
        y: this.logits,
        m: r,
        xFormat: model.activations,
      }),
    );
    this.argmax = argmax(b, { logits: this.logits, ids: this.outIds, rows: r, n: spec.vocabSize });
    this.scratch = {
      ids: new Uint32Array(m),
      rowInfo: new Uint32Array(2 * m),
      slots: new Uint32Array(m),
      logitRows: new Uint32Array(r),
    };
  }

  /**
   * The dispatches of a sampled step's tail (repetition penalty, then sampling into outIds),
   * their inputs written for `rows`.
   */
  samplingDispatches(rows: readonly RowSampling[], maxContext: number, vocab: number): Dispatch[] {
    if (rows.length !== this.r) throw new RangeError(`sampling for ${rows.length} rows, plan has ${this.r}`);
    if (!this.sampler) {
      const params = this.buffer('sample.params', this.r * SAMPLE_ROW_BYTES, USAGE_IN());
      const penaltyRows = this.buffer('sample.penalty_rows', this.r * PENALTY_ROW_BYTES, USAGE_IN());
      const tokens = this.buffer('sample.penalty_tokens', this.r * maxContext * 4, USAGE_IN());
      const common = { logits: this.logits, rows: this.r, n: vocab };
      this.sampler = {
        params,
        penaltyRows,
        tokens,
        dispatches: [
          repetitionPenalty(this.builder, { ...common, penaltyRows, tokens }),
          sample(this.builder, { ...common, params, ids: this.outIds }),
        ],
      };
    }
    const queue = this.ctx.device.queue;
    const penalties: PenaltyRow[] = [];
    const ids: number[] = [];
    for (const row of rows) {
      const unique = row.repetitionPenalty === 1 ? [] : [...new Set(row.context)].slice(0, maxContext);
      penalties.push({ start: ids.length, count: unique.length, penalty: row.repetitionPenalty });
      ids.push(...unique);
    }
    queue.writeBuffer(this.sampler.params, 0, packSampleParams(rows));
    queue.writeBuffer(this.sampler.penaltyRows, 0, packPenaltyRows(penalties));
    if (ids.length > 0) queue.writeBuffer(this.sampler.tokens, 0, Uint32Array.from(ids));
    const withPenalty = rows.some((r) => r.repetitionPenalty !== 1);
    return withPenalty ? this.sampler.dispatches : this.sampler.dispatches.slice(1);
  }

  private buffer(label: string, bytes: number, usage: GPUBufferUsageFlags): GPUBuffer {
    const buf = this.ctx.createBuffer(label, bytes, usage);
    this.buffers.push(buf);
    return buf;
  }

  destroy(): void {
    for (const buf of this.buffers) this.ctx.destroyBuffer(buf);
    this.decodeScratch?.destroy();
    this.builder.destroy();
  }
}

/** The GPU state a plan binds: weights, KV cache, RoPE table and small shared buffers. */
export class ForwardModel {
  /** [kv token capacity][headDim / 2] vec2<f32> (cos, sin) */ readonly ropeTable: GPUBuffer;
  /** [maxRows] u32 = 0, 1, 2, ... (rmsnorm's row map inside layers) */ readonly identityRows: GPUBuffer;
  /**
   * The concatenated block tables of a step's sequences: room for `maxRows` sequences of
   * `contextLength` tokens (shared prefix blocks appear once per sequence). Rewritten each step.
   */
  readonly blockTable: GPUBuffer;
  /** Bound where a kernel has no bias. */ readonly placeholder: GPUBuffer;
  /** CPU staging of the block table, reused every step. */ private readonly blockTableScratch: Uint32Array;
  private readonly plans = new Map<string, StepPlan>();
  /** Plans kept in all (decode's is never evicted); other prefill sizes are rebuilt when needed. */
  private static readonly MAX_PLANS = 4;
  /**
   * FlashDecoding++'s unified max per layer for decode attention; null = the exact two-pass
   * softmax. Set by calibration (see `absorbCapture`) when async softmax is enabled.
   */
  readonly attentionPhi: (number | null)[];
  /** Observed range of per-row score maxima, per layer, while calibrating. */
  private readonly scoreRange: { lo: number; hi: number }[];
  private calibrationLeft: number;
  private captureBuffer: GPUBuffer | null = null;
  private captureReadback: GPUBuffer | null = null;
  /** Tuned kernel variants by shape class; plans recorded from now on use them. */
  private kernelChoices = new KernelChoices();

  constructor(
    readonly ctx: GpuContext,
    readonly spec: ModelSpec,
    readonly weights: ModelWeights,
    readonly kv: PagedKvCache,
    readonly maxRows: number,
    /** Decode steps whose attention scores calibrate phi (0: keep the exact two-pass softmax). */
    calibrationSteps = 0,
    /**
     * Storage of the normed activations the qkv, gate_up and LM-head matmuls read: 'f16' (needs
     * shader-f16) halves them; every kernel still computes in f32.
     */
    readonly activations: ActivationFormat = 'f32',
    /** Longest sequence (prompt + generated) a step serves; default: the whole KV pool. */
    readonly contextLength: number = kv.numBlocks * BLOCK_TOKENS,
  ) {
    checkActivationFormat(ctx, activations);
    this.attentionPhi = Array.from({ length: spec.numLayers }, () => null);
    this.scoreRange = Array.from({ length: spec.numLayers }, () => ({ lo: Infinity, hi: -Infinity }));
    this.calibrationLeft = calibrationSteps;
    const inv = ropeInvFreq(spec.headDim, spec.ropeTheta, spec.ropeScaling);
    const table = ropeTable(inv, contextLength);
    this.ropeTable = ctx.createBuffer('rope.table', table.byteLength, USAGE_IN());
    ctx.device.queue.writeBuffer(this.ropeTable, 0, table);
    const rows = Uint32Array.from({ length: maxRows }, (_, i) => i);
    this.identityRows = ctx.createBuffer('rows.identity', rows.byteLength, USAGE_IN());
    ctx.device.queue.writeBuffer(this.identityRows, 0, rows);
    const tableEntries = Math.max(kv.numBlocks, maxRows * Math.ceil(contextLength / BLOCK_TOKENS));
    this.blockTable = ctx.createBuffer('kv.block_table', tableEntries * 4, USAGE_IN());
    this.placeholder = ctx.createBuffer('placeholder', 4, USAGE_IN());
    this.blockTableScratch = new Uint32Array(tableEntries);
  }

  private plan(m: number, r: number): StepPlan {
    const key = `${m}:${r}`;
    let p = this.plans.get(key);
    if (p) {
      // Refresh LRU order.
      this.plans.delete(key);
      this.plans.set(key, p);
      return p;
    }
    p = new StepPlan(this.ctx, m, r, this);
    this.plans.set(key, p);
    if (this.plans.size > ForwardModel.MAX_PLANS) {
      for (const [k, old] of this.plans) {
        if (k === '1:1' || k === key) continue;
        old.destroy();
        this.plans.delete(k);
        break;
      }
    }
    return p;
  }

  /** Checks a step's size, picks its plan and writes its inputs to the GPU. */
  private writeInputs(input: StepInput): StepPlan {
    const m = input.tokens.length;
    const r = input.logitRows.length;
    if (m < 1 || m > this.maxRows) throw new RangeError(`step of ${m} rows (1..${this.maxRows})`);
    if (input.blockTable.length > this.blockTableScratch.length) {
      throw new RangeError(
        `block table of ${input.blockTable.length} blocks (max ${this.blockTableScratch.length})`,
      );
    }
    this.ctx.assertAlive();
    const plan = this.plan(m, r);
    this.writeInputsTo(plan, input);
    return plan;
  }

  private writeInputsTo(plan: StepPlan, input: StepInput): void {
    const m = input.tokens.length;
    const r = input.logitRows.length;
    const { ids, rowInfo, slots, logitRows } = plan.scratch;
    for (let i = 0; i < m; i++) {
      ids[i] = input.tokens[i] as number;
      rowInfo[2 * i] = input.positions[i] as number;
      rowInfo[2 * i + 1] = input.blockTableOffsets[i] as number;
      slots[i] = input.slots[i] as number;
    }
    for (let i = 0; i < r; i++) logitRows[i] = input.logitRows[i] as number;
    const bt = this.blockTableScratch;
    for (let i = 0; i < input.blockTable.length; i++) bt[i] = input.blockTable[i] as number;
    const queue = this.ctx.device.queue;
    queue.writeBuffer(plan.ids, 0, ids);
    queue.writeBuffer(plan.rowInfo, 0, rowInfo);
    queue.writeBuffer(plan.slots, 0, slots);
    queue.writeBuffer(plan.logitRowMap, 0, logitRows);
    queue.writeBuffer(this.blockTable, 0, bt, 0, Math.max(1, input.blockTable.length));
  }

  /**
   * GPU milliseconds of every dispatch of one step with these inputs (each in its own timed
   * pass), summed by kernel variant: where a step's time goes. Runs the step for real.
   */
  async profile(input: StepInput, timer: GpuTimer): Promise<{ label: string; ms: number; count: number }[]> {
    const plan = this.writeInputs(input);
    const all = [...plan.dispatches, ...plan.head, plan.argmax];
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
   * Runs one step: writes its inputs, submits one command buffer and, unless `read` is 'none',
   * waits for and returns the argmax id of each logit row ('ids') or the logit rows themselves
   * ([logitRows.length, vocab] f32, 'logits'). A 'none' step (a prefill chunk before the last)
   * skips the LM head and is only queued: the queue keeps steps in order, so the next step's
   * writes cannot overtake it.
   */
  async step(input: StepInput, read: 'ids' | 'sample', calibrate?: boolean): Promise<Uint32Array>;
  async step(input: StepInput, read: 'logits', calibrate?: boolean): Promise<Float32Array>;
  async step(input: StepInput, read: 'none'): Promise<null>;
  async step(
    input: StepInput,
    read: StepReadback,
    /** Let this step feed the attention calibration (false for synthetic steps like warm-up). */
    calibrate = true,
  ): Promise<Uint32Array | Float32Array | null> {
    const r = input.logitRows.length;
    const plan = this.writeInputs(input);
    const queue = this.ctx.device.queue;
    const enc = this.ctx.device.createCommandEncoder({ label: 'kiln.step' });
    const capture = calibrate && this.calibrationLeft > 0 && plan.scoreCapture.length > 0 && read !== 'none';
    let pass = enc.beginComputePass({ label: 'kiln.forward' });
    if (capture) pass = this.encodeWithCapture(enc, pass, plan);
    else encodeDispatches(pass, plan.dispatches);
    if (read !== 'none') encodeDispatches(pass, plan.head);
    if (read === 'ids') encodeDispatches(pass, [plan.argmax]);
    if (read === 'sample') {
      if (!input.sampling) throw new RangeError("a 'sample' step needs input.sampling");
      const maxContext = this.contextLength;
      encodeDispatches(pass, plan.samplingDispatches(input.sampling, maxContext, this.spec.vocabSize));
    }
    pass.end();
    if (read === 'none') {
      queue.submit([enc.finish()]);
      return null;
    }
    const src = read === 'logits' ? plan.logits : plan.outIds;
    const dst = read === 'logits' ? plan.logitsReadback : plan.idsReadback;
    const bytes = read === 'logits' ? r * this.spec.vocabSize * 4 : r * 4;
    enc.copyBufferToBuffer(src, 0, dst, 0, bytes);
    queue.submit([enc.finish()]);
    try {
      await dst.mapAsync(GPUMapMode.READ, 0, bytes);
    } catch (e) {
      this.ctx.assertAlive();
      throw e;
    }
    const data = dst.getMappedRange(0, bytes).slice(0);
    dst.unmap();
    if (capture) await this.absorbCapture(plan, input);
    // An error raised by this step arrives as an event; do not hand back what it produced.
    this.ctx.assertAlive();
    return read === 'logits' ? new Float32Array(data) : new Uint32Array(data);
  }

  /**
   * Runs a step (no logits) and returns the input activations of every layer's projections:
   * [layer][proj] = [tokens, cols] f32 (f32 activations only). For calibrating quantizers.
   */
  async captureLinearInputs(input: StepInput): Promise<Record<LinearInputName, Float32Array>[]> {
    if (this.activations !== 'f32') throw new RangeError('capturing projection inputs needs f32 activations');
    const m = input.tokens.length;
    const plan = this.writeInputs(input);
    const enc = this.ctx.device.createCommandEncoder({ label: 'kiln.capture' });
    const reads: { layer: number; proj: LinearInputName; buf: GPUBuffer; bytes: number }[] = [];
    let from = 0;
    try {
      for (const c of plan.linearInputs) {
        const pass = enc.beginComputePass({ label: 'kiln.forward' });
        encodeDispatches(pass, plan.dispatches.slice(from, c.after + 1));
        pass.end();
        from = c.after + 1;
        const bytes = m * c.cols * 4;
        const buf = this.ctx.createBuffer(
          `capture.${c.layer}.${c.proj}`,
          bytes,
          GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
        );
        reads.push({ layer: c.layer, proj: c.proj, buf, bytes });
        enc.copyBufferToBuffer(c.buffer, 0, buf, 0, bytes);
      }
      this.ctx.device.queue.submit([enc.finish()]);
      const out: Record<LinearInputName, Float32Array>[] = Array.from(
        { length: this.spec.numLayers },
        () => ({
          qkv: new Float32Array(0),
          o: new Float32Array(0),
          gateUp: new Float32Array(0),
          down: new Float32Array(0),
        }),
      );
      for (const r of reads) {
        await r.buf.mapAsync(GPUMapMode.READ, 0, r.bytes);
        (out[r.layer] as Record<LinearInputName, Float32Array>)[r.proj] = new Float32Array(
          r.buf.getMappedRange(0, r.bytes).slice(0),
        );
        r.buf.unmap();
      }
      this.ctx.assertAlive();
      return out;
    } finally {
      for (const r of reads) this.ctx.destroyBuffer(r.buf);
    }
  }

  /** True while decode steps still calibrate the async-softmax phi. */
  get calibrating(): boolean {
    return this.calibrationLeft > 0;
  }

  /**
   * Runs `input` once through a decode plan with the async-softmax kernels (phi 0, results
   * discarded) so their pipelines are compiled at load time, not in the middle of the first
   * generation when calibration switches to them.
   */
  async warmAsyncAttention(input: StepInput): Promise<void> {
    if (this.calibrationLeft === 0) return;
    const saved = [...this.attentionPhi];
    this.attentionPhi.fill(0);
    try {
      const plan = new StepPlan(this.ctx, input.tokens.length, input.logitRows.length, this);
      try {
        this.writeInputsTo(plan, input);
        const enc = this.ctx.device.createCommandEncoder({ label: 'kiln.warm' });
        const pass = enc.beginComputePass();
        encodeDispatches(pass, plan.dispatches);
        pass.end();
        this.ctx.device.queue.submit([enc.finish()]);
        await this.ctx.device.queue.onSubmittedWorkDone();
      } finally {
        plan.destroy();
      }
    } finally {
      saved.forEach((v, i) => (this.attentionPhi[i] = v));
    }
  }

  /**
   * Records a decode step with a copy of each layer's split partials after its exact pass 1, so
   * the split maxima (the scores' row maxima) can be read back: the calibration of phi.
   */
  private encodeWithCapture(
    enc: GPUCommandEncoder,
    pass: GPUComputePassEncoder,
    plan: StepPlan,
  ): GPUComputePassEncoder {
    const scratch = plan.decodeScratch as AttentionDecodeScratch;
    const layerBytes = scratch.partials.size;
    const total = layerBytes * this.spec.numLayers;
    if (!this.captureBuffer || this.captureBuffer.size < total) {
      if (this.captureBuffer) this.ctx.destroyBuffer(this.captureBuffer);
      if (this.captureReadback) this.ctx.destroyBuffer(this.captureReadback);
      this.captureBuffer = this.ctx.createBuffer('calibration.scores', total, storageUsage());
      this.captureReadback = this.ctx.createBuffer(
        'calibration.readback',
        total,
        GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
      );
    }
    let from = 0;
    for (const { layer, after } of plan.scoreCapture) {
      encodeDispatches(pass, plan.dispatches.slice(from, after + 1));
      pass.end();
      enc.copyBufferToBuffer(scratch.partials, 0, this.captureBuffer, layer * layerBytes, layerBytes);
      pass = enc.beginComputePass({ label: 'kiln.forward' });
      from = after + 1;
    }
    encodeDispatches(pass, plan.dispatches.slice(from));
    return pass;
  }

  /** Folds one captured step into the per-layer score ranges; after the last, sets phi. */
  private async absorbCapture(plan: StepPlan, input: StepInput): Promise<void> {
    const scratch = plan.decodeScratch as AttentionDecodeScratch;
    const rb = this.captureReadback as GPUBuffer;
    const layerBytes = scratch.partials.size;
    const enc = this.ctx.device.createCommandEncoder();
    enc.copyBufferToBuffer(this.captureBuffer as GPUBuffer, 0, rb, 0, layerBytes * this.spec.numLayers);
    this.ctx.device.queue.submit([enc.finish()]);
    await rb.mapAsync(GPUMapMode.READ);
    const all = new Float32Array(rb.getMappedRange().slice(0));
    rb.unmap();
    const { splits } = scratch;
    const rec = this.spec.headDim + 4; // floats per (row, head, split) record: vec4(c, l, _, _) + o
    const heads = this.spec.numHeads;
    for (const { layer } of plan.scoreCapture) {
      const base = (layer * layerBytes) / 4;
      const range = this.scoreRange[layer] as { lo: number; hi: number };
      for (let row = 0; row < input.tokens.length; row++) {
        for (let h = 0; h < heads; h++) {
          let rowMax = -Infinity;
          for (let sp = 0; sp < splits; sp++) {
            const at = base + ((row * heads + h) * splits + sp) * rec;
            if ((all[at + 1] as number) > 0) rowMax = Math.max(rowMax, all[at] as number);
          }
          if (Number.isFinite(rowMax)) {
            range.lo = Math.min(range.lo, rowMax);
            range.hi = Math.max(range.hi, rowMax);
          }
        }
      }
    }
    if (--this.calibrationLeft > 0) return;
    // phi in the middle of the observed row maxima. A layer whose maxima spread over at most half
    // the window keeps at least 3/4 of ASYNC_WINDOW of headroom above anything calibration saw
    // before the kernel flags a row (and recomputes it exactly); a wider spread keeps the exact
    // softmax for that layer (as FlashDecoding++ does for OPT).
    this.attentionPhi.forEach((_, l) => {
      const { lo, hi } = this.scoreRange[l] as { lo: number; hi: number };
      this.attentionPhi[l] = Number.isFinite(lo) && hi - lo <= ASYNC_WINDOW / 2 ? (lo + hi) / 2 : null;
    });
    for (const [key, p] of this.plans) {
      if (p.decodeScratch) {
        p.destroy();
        this.plans.delete(key);
      }
    }
    for (const b of [this.captureBuffer, this.captureReadback]) if (b) this.ctx.destroyBuffer(b);
    this.captureBuffer = this.captureReadback = null;
  }

  get choices(): KernelChoices {
    return this.kernelChoices;
  }

  /**
   * Switches to newly tuned kernels: recorded plans are dropped and re-recorded at their next
   * step with `choices`. Call between steps (nothing of a dropped plan may still be in flight).
   */
  setChoices(choices: KernelChoices): void {
    this.kernelChoices = choices;
    for (const p of this.plans.values()) p.destroy();
    this.plans.clear();
  }

  destroy(): void {
    for (const b of [this.captureBuffer, this.captureReadback]) if (b) this.ctx.destroyBuffer(b);
    for (const p of this.plans.values()) p.destroy();
    this.plans.clear();
    for (const b of [this.ropeTable, this.identityRows, this.blockTable, this.placeholder])
      this.ctx.destroyBuffer(b);
  }
}
