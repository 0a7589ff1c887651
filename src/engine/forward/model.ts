/**
 * The forward pass's GPU state: the weights, the KV cache, the RoPE table and the small shared
 * buffers every plan binds, the kernel choices and the calibrated unified max, and the plans made
 * so far (at most MAX_PLANS step shapes; decode's is never evicted). Running a step is step.ts's.
 */
import type { GpuContext } from '../../gpu/device.js';
import { checkActivationFormat, type ActivationFormat } from '../../kernels/activation.js';
import { ropeTable } from '../../kernels/rope.ref.js';
import { writeRowInfo, type TreeKeys } from '../../kernels/row-info.js';
import { ropeOfKind } from '../../model/rope.js';
import { layerRope, type LayerRope, type ModelSpec } from '../../model/spec.js';
import { KernelChoices } from '../../tuner/choices.js';
import type { TuneTarget } from '../../tuner/classes.js';
import type { ModelWeights } from '../../weights/loader.js';
import { BLOCK_TOKENS, type PagedKvCache } from '../kv/cache.js';
import { Calibration } from './calibration.js';
import type { StepGpuClock } from './step-clock.js';
import { StepPlan } from './plan.js';
import { createRecycleTable } from './recycle.js';
import type { ForwardState } from './state.js';

/** What one step computes: `tokens[i]` at `positions[i]`, K/V written to `slots[i]`. */
export interface StepInput {
  tokens: readonly number[];
  positions: readonly number[];
  slots: readonly number[];
  /** Offset of each row's sequence in `blockTable`. */
  blockTableOffsets: readonly number[];
  /** Concatenated block tables of the sequences in the step. */
  blockTable: readonly number[];
  /**
   * Rows of a token tree (speculative decoding): the row sees its sequence's slots [0, base) and
   * base + b for each bit b of mask (kernels/row-info.ts); absent or undefined: plain causal.
   */
  tree?: readonly (TreeKeys | undefined)[];
  /** The rows whose logits are wanted (e.g. the last prompt row), in output order. */
  logitRows: readonly number[];
  /**
   * With a sliding pool (PagedKvCache.sliding): each row's slot in it, and the sequences' sliding
   * block tables at the same offsets as `blockTable` (entries outside a row's window released).
   */
  slidingSlots?: readonly number[];
  slidingBlockTable?: readonly number[];
}

const USAGE_IN = () => GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST;

export class ForwardModel implements ForwardState {
  readonly ropeTable: GPUBuffer;
  readonly layerRopeTables: readonly GPUBuffer[];
  /** One table per RoPE kind the layers use. */
  private readonly ropeTables = new Map<LayerRope, GPUBuffer>();
  readonly identityRows: GPUBuffer;
  /**
   * Room for `maxRows` sequences of `contextLength` tokens (shared prefix blocks appear once per
   * sequence).
   */
  readonly blockTable: GPUBuffer;
  /** The sliding layers' block tables, at the same offsets (null without a sliding pool). */
  readonly slidingBlockTable: GPUBuffer | null;
  readonly placeholder: GPUBuffer;
  /** CPU staging of the block table, reused every step. */ private readonly blockTableScratch: Uint32Array;
  private readonly plans = new Map<string, StepPlan>();
  /**
   * Wall milliseconds spent making plans so far: a step that made one paid for recording it and
   * compiling any kernel variant it was first to use, which its shape's later steps do not pay.
   */
  private planning = 0;
  get planningMs(): number {
    return this.planning;
  }
  /** Plans kept in all (decode's is never evicted); other prefill sizes are rebuilt when needed. */
  private static readonly MAX_PLANS = 4;
  readonly attentionPhi: (number | null)[];
  /** Observes the first decode steps' scores to set attentionPhi; null once done (or never). */
  calibration: Calibration | null;
  /** Stamps every step's GPU time while set (benchmarks: Engine.measureSteps). */
  stepClock: StepGpuClock | null = null;
  private kernelChoices = new KernelChoices();
  private normFolding = true;
  /** Plans get the GPU sampling stage (set at the first sampled request). */
  private sampling = false;
  private adjusting = false;
  private logprobs = false;
  /** Token Recycling's table ([vocab, RECYCLE_K] u32), once enabled. */
  private recycleTable: GPUBuffer | null = null;

  constructor(
    readonly ctx: GpuContext,
    readonly spec: ModelSpec,
    readonly weights: ModelWeights,
    readonly kv: PagedKvCache,
    /** Most rows a step has (the prefill chunk). */
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
    this.calibration =
      calibrationSteps > 0
        ? new Calibration(ctx, spec.numLayers, spec.numHeads, spec.headDim, calibrationSteps)
        : null;
    const tableOf = (kind: LayerRope): GPUBuffer => {
      let buf = this.ropeTables.get(kind);
      if (!buf) {
        const table = ropeTable(ropeOfKind(spec, kind), kind === 'none' ? 0 : contextLength);
        buf = ctx.createBuffer(`rope.table.${kind}`, table.byteLength, USAGE_IN());
        ctx.device.queue.writeBuffer(buf, 0, table);
        this.ropeTables.set(kind, buf);
      }
      return buf;
    };
    this.ropeTable = tableOf('global');
    this.layerRopeTables = Array.from({ length: spec.numLayers }, (_, l) => tableOf(layerRope(spec, l)));
    const rows = Uint32Array.from({ length: maxRows }, (_, i) => i);
    this.identityRows = ctx.createBuffer('rows.identity', rows.byteLength, USAGE_IN());
    ctx.device.queue.writeBuffer(this.identityRows, 0, rows);
    const tableEntries = Math.max(kv.numBlocks, maxRows * Math.ceil(contextLength / BLOCK_TOKENS));
    this.blockTable = ctx.createBuffer('kv.block_table', tableEntries * 4, USAGE_IN());
    this.slidingBlockTable = kv.sliding
      ? ctx.createBuffer('kv.block_table.sliding', tableEntries * 4, USAGE_IN())
      : null;
    this.placeholder = ctx.createBuffer('placeholder', 4, USAGE_IN());
    this.blockTableScratch = new Uint32Array(tableEntries);
  }

  get choices(): KernelChoices {
    return this.kernelChoices;
  }

  /**
   * Whether one-row steps fold each RMSNorm into the matmul that reads it, where the chosen kernel
   * has the prologue (src/kernels/rms-fold.ts); false keeps the separate rmsnorm dispatches.
   */
  get foldNorms(): boolean {
    return this.normFolding;
  }

  /** Switches the RMSNorm folding (plans are re-recorded at their next step). Call between steps. */
  setFoldNorms(on: boolean): void {
    if (on === this.normFolding) return;
    this.normFolding = on;
    this.dropPlans(() => true);
  }

  /** The plan of a step shape, made (and recorded) the first time it is needed. */
  plan(m: number, r: number): StepPlan {
    const key = `${m}:${r}`;
    let p = this.plans.get(key);
    if (p) {
      // Refresh LRU order.
      this.plans.delete(key);
      this.plans.set(key, p);
      return p;
    }
    const t0 = performance.now();
    p = new StepPlan(this.ctx, this, m, r);
    if (this.sampling) p.enableSampling();
    if (this.adjusting) p.enableAdjust();
    if (this.logprobs) p.enableLogprobs();
    if (this.recycleTable) p.enableRecycling(this.recycleTable);
    this.planning += performance.now() - t0;
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
  writeInputs(input: StepInput): StepPlan {
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

  /** Writes a step's inputs into `plan`'s buffers and the shared block table. */
  writeInputsTo(plan: StepPlan, input: StepInput): void {
    const m = input.tokens.length;
    const r = input.logitRows.length;
    const { ids, rowInfo, slots, logitRows } = plan.staging;
    for (let i = 0; i < m; i++) {
      ids[i] = input.tokens[i] as number;
      writeRowInfo(
        rowInfo,
        i,
        input.positions[i] as number,
        input.blockTableOffsets[i] as number,
        input.tree?.[i],
      );
      slots[i] = input.slots[i] as number;
    }
    for (let i = 0; i < r; i++) logitRows[i] = input.logitRows[i] as number;
    const bt = this.blockTableScratch;
    for (let i = 0; i < input.blockTable.length; i++) bt[i] = input.blockTable[i] as number;
    const queue = this.ctx.device.queue;
    queue.writeBuffer(plan.bufs.ids, 0, ids);
    queue.writeBuffer(plan.bufs.rowInfo, 0, rowInfo);
    queue.writeBuffer(plan.bufs.slots, 0, slots);
    // The recent window's lanes follow the steps in the order their inputs are written, which is
    // the order they run.
    const lanes = this.kv.lanes;
    if (lanes && plan.bufs.kvStage) {
      queue.writeBuffer(plan.bufs.kvStage.lanes, 0, lanes.assign(slots.subarray(0, m), plan.staging.lanes));
    }
    queue.writeBuffer(plan.bufs.logitRows, 0, logitRows);
    queue.writeBuffer(this.blockTable, 0, bt, 0, Math.max(1, input.blockTable.length));
    if (this.slidingBlockTable) {
      const sSlots = input.slidingSlots;
      const sTable = input.slidingBlockTable;
      if (!sSlots || !sTable || sSlots.length !== m || sTable.length !== input.blockTable.length)
        throw new RangeError("a step over a sliding KV pool needs the rows' sliding slots and block tables");
      const staged = plan.staging.slidingSlots;
      for (let i = 0; i < m; i++) staged[i] = sSlots[i] as number;
      for (let i = 0; i < sTable.length; i++) bt[i] = sTable[i] as number;
      queue.writeBuffer(plan.bufs.slidingSlots as GPUBuffer, 0, staged);
      queue.writeBuffer(this.slidingBlockTable, 0, bt, 0, Math.max(1, sTable.length));
    }
  }

  /**
   * Gives every plan, now and later, the GPU sampling stage. Called when the first sampled
   * request is admitted, between steps: its pipeline is slow to compile, so greedy-only engines
   * never build it.
   */
  enableSampling(): void {
    if (this.sampling) return;
    this.sampling = true;
    for (const p of this.plans.values()) p.enableSampling();
  }

  /** Gives every plan, now and later, the logit_adjust stage (first request that edits logits). */
  enableAdjust(): void {
    if (this.adjusting) return;
    this.adjusting = true;
    for (const p of this.plans.values()) p.enableAdjust();
  }

  /** Gives every plan, now and later, the logprobs stage (first request that asks for logprobs). */
  enableLogprobs(): void {
    if (this.logprobs) return;
    this.logprobs = true;
    for (const p of this.plans.values()) p.enableLogprobs();
  }

  /**
   * Gives every plan, now and later, Token Recycling's stage (forward/recycle.ts): the table update
   * from each step's logits and the guesses built from it (an engine with recycling speculation).
   */
  enableRecycling(): void {
    if (this.recycleTable) return;
    this.recycleTable = createRecycleTable(this.ctx, this.spec.vocabSize);
    for (const p of this.plans.values()) p.enableRecycling(this.recycleTable);
  }

  /**
   * Switches to newly tuned kernels: recorded plans are dropped and re-recorded at their next
   * step with `choices`. Call between steps (nothing of a dropped plan may still be in flight).
   */
  setChoices(choices: KernelChoices): void {
    this.kernelChoices = choices;
    this.dropPlans(() => true);
  }

  /**
   * Sets the unified max of each layer's decode attention (calibration's result): decode plans
   * are re-recorded with the async-softmax kernels at their next step. Call between steps.
   */
  setPhi(phi: readonly (number | null)[]): void {
    phi.forEach((v, l) => (this.attentionPhi[l] = v));
    this.calibration?.destroy();
    this.calibration = null;
    this.dropPlans((p) => p.decode !== null);
  }

  private dropPlans(which: (p: StepPlan) => boolean): void {
    for (const [key, p] of this.plans) {
      if (!which(p)) continue;
      p.destroy();
      this.plans.delete(key);
    }
  }

  /** What the kernel tuner times: one layer's projections (every layer shares their shapes), the LM head, decode attention. */
  tuneTarget(): TuneTarget {
    const L = this.weights.layers[0];
    const x = this.activations;
    return {
      ctx: this.ctx,
      projections: L
        ? [
            { lin: L.qkv, swiglu: false, xFormat: x },
            { lin: L.o, swiglu: false, xFormat: 'f32' },
            { lin: L.gateUp, swiglu: true, xFormat: x },
            { lin: L.down, swiglu: false, xFormat: 'f32' },
          ]
        : [],
      lmHead: { lin: { weight: this.weights.lmHead }, swiglu: false, xFormat: x },
      attention: {
        heads: this.spec.numHeads,
        kvHeads: this.spec.numKvHeads,
        headDim: this.spec.headDim,
        kvDtype: this.kv.dtype,
      },
      maxRows: this.maxRows,
      contextLength: this.contextLength,
    };
  }

  destroy(): void {
    this.calibration?.destroy();
    this.dropPlans(() => true);
    for (const b of [...this.ropeTables.values(), this.identityRows, this.blockTable, this.placeholder])
      this.ctx.destroyBuffer(b);
    if (this.slidingBlockTable) this.ctx.destroyBuffer(this.slidingBlockTable);
    if (this.recycleTable) this.ctx.destroyBuffer(this.recycleTable);
  }
}
