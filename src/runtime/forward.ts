/**
 * The forward pass on the GPU. A StepPlan holds everything one step shape needs (activation
 * buffers, uniforms, bind groups, the recorded dispatch list) and is built once per (rows, logit
 * rows); a step then writes a few small input buffers and submits ONE command buffer that runs
 *   embed -> per layer [rmsnorm -> q,k,v (+bias) -> rope(q,k) -> kv write -> attention
 *   -> o (+residual) -> rmsnorm -> gate, up -> swiglu -> down (+residual)]
 *   -> final rmsnorm of the rows that need logits -> lm head -> argmax
 * and copies back either one id per logit row or the logits.
 */
import type { GpuContext } from '../gpu/device.js';
import { argmax } from '../kernels/argmax.js';
import { attention } from '../kernels/attention.js';
import { DispatchBuilder, encodeDispatches, type Dispatch } from '../kernels/dispatch.js';
import { embed } from '../kernels/embed.js';
import { kvWrite } from '../kernels/kv-write.js';
import { matmul } from '../kernels/matmul.js';
import { rmsnorm } from '../kernels/rmsnorm.js';
import { rope } from '../kernels/rope.js';
import { ropeInvFreq, ropeTable } from '../kernels/rope.ref.js';
import { swiglu } from '../kernels/swiglu.js';
import { BLOCK_TOKENS, type PagedKvCache } from './kv-cache.js';
import type { ModelSpec } from './model-spec.js';
import type { ModelWeights } from './weights.js';

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
}

const USAGE_IN = () => GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST;
const USAGE_ACT = () => GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;

/** What a step copies back: one argmax id per logit row, the logit rows, or nothing. */
export type StepReadback = 'ids' | 'logits' | 'none';

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
    const f32 = (label: string, elems: number, usage = USAGE_ACT()) => this.buffer(label, elems * 4, usage);
    const H = spec.hiddenSize;
    const qDim = spec.numHeads * spec.headDim;
    const kvDim = spec.numKvHeads * spec.headDim;
    const I = spec.intermediateSize;
    this.ids = f32('step.ids', m, USAGE_IN());
    this.rowInfo = f32('step.row_info', 2 * m, USAGE_IN());
    this.slots = f32('step.slots', m, USAGE_IN());
    this.logitRowMap = f32('step.logit_rows', r, USAGE_IN());
    /** [m, H] residual stream */ const x = f32('act.x', m * H);
    /** [m, H] normed */ const xn = f32('act.xn', m * H);
    /** [m, qDim] */ const q = f32('act.q', m * qDim);
    /** [m, kvDim] */ const k = f32('act.k', m * kvDim);
    /** [m, kvDim] */ const v = f32('act.v', m * kvDim);
    /** [m, qDim] */ const att = f32('act.attn', m * qDim);
    /** [m, I] */ const gate = f32('act.gate', m * I);
    /** [m, I] */ const up = f32('act.up', m * I);
    /** [r, H] */ const fin = f32('act.final', r * H);
    this.logits = f32('act.logits', r * spec.vocabSize);
    this.outIds = f32('act.out_ids', r);
    this.idsReadback = this.buffer('readback.ids', r * 4, GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST);
    this.logitsReadback = this.buffer(
      'readback.logits',
      r * spec.vocabSize * 4,
      GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
    );

    const ph = model.placeholder;
    const d = this.dispatches;
    const eps = spec.rmsNormEps;
    d.push(...embed(b, { table: weights.embed, ids: this.ids, out: x, m }));
    weights.layers.forEach((L, l) => {
      d.push(rmsnorm(b, { x, weight: L.inputNorm, rows: model.identityRows, y: xn, m, hidden: H, eps }));
      d.push(...matmul(b, { x: xn, weight: L.q.weight, bias: L.q.bias, y: q, m, placeholder: ph }));
      d.push(...matmul(b, { x: xn, weight: L.k.weight, bias: L.k.bias, y: k, m, placeholder: ph }));
      d.push(...matmul(b, { x: xn, weight: L.v.weight, bias: L.v.bias, y: v, m, placeholder: ph }));
      const ropeArgs = { rowInfo: this.rowInfo, table: model.ropeTable, m, headDim: spec.headDim };
      d.push(rope(b, { ...ropeArgs, x: q, heads: spec.numHeads }));
      d.push(rope(b, { ...ropeArgs, x: k, heads: spec.numKvHeads }));
      const kc = kv.k[l] as GPUBuffer;
      const vc = kv.v[l] as GPUBuffer;
      d.push(
        kvWrite(b, {
          slots: this.slots,
          k,
          v,
          kCache: kc,
          vCache: vc,
          m,
          kvHeads: spec.numKvHeads,
          headDim: spec.headDim,
        }),
      );
      d.push(
        attention(b, {
          rowInfo: this.rowInfo,
          blockTable: model.blockTable,
          q,
          kCache: kc,
          vCache: vc,
          out: att,
          m,
          heads: spec.numHeads,
          kvHeads: spec.numKvHeads,
          headDim: spec.headDim,
          scale: 1 / Math.sqrt(spec.headDim),
        }),
      );
      d.push(
        ...matmul(b, {
          x: att,
          weight: L.o.weight,
          bias: L.o.bias,
          y: x,
          m,
          accumulate: true,
          placeholder: ph,
        }),
      );
      d.push(rmsnorm(b, { x, weight: L.postNorm, rows: model.identityRows, y: xn, m, hidden: H, eps }));
      d.push(...matmul(b, { x: xn, weight: L.gate.weight, bias: L.gate.bias, y: gate, m, placeholder: ph }));
      d.push(...matmul(b, { x: xn, weight: L.up.weight, bias: L.up.bias, y: up, m, placeholder: ph }));
      d.push(swiglu(b, { gate, up, count: m * I }));
      d.push(
        ...matmul(b, {
          x: gate,
          weight: L.down.weight,
          bias: L.down.bias,
          y: x,
          m,
          accumulate: true,
          placeholder: ph,
        }),
      );
    });
    this.head.push(
      rmsnorm(b, { x, weight: weights.finalNorm, rows: this.logitRowMap, y: fin, m: r, hidden: H, eps }),
      ...matmul(b, { x: fin, weight: weights.lmHead, y: this.logits, m: r, placeholder: ph }),
    );
    this.argmax = argmax(b, { logits: this.logits, ids: this.outIds, rows: r, n: spec.vocabSize });
    this.scratch = {
      ids: new Uint32Array(m),
      rowInfo: new Uint32Array(2 * m),
      slots: new Uint32Array(m),
      logitRows: new Uint32Array(r),
    };
  }

  private buffer(label: string, bytes: number, usage: GPUBufferUsageFlags): GPUBuffer {
    const buf = this.ctx.createBuffer(label, bytes, usage);
    this.buffers.push(buf);
    return buf;
  }

  destroy(): void {
    for (const buf of this.buffers) this.ctx.destroyBuffer(buf);
    this.builder.destroy();
  }
}

/** The GPU state a plan binds: weights, KV cache, RoPE table and small shared buffers. */
export class ForwardModel {
  /** [kv token capacity][headDim / 2] vec2<f32> (cos, sin) */ readonly ropeTable: GPUBuffer;
  /** [maxRows] u32 = 0, 1, 2, ... (rmsnorm's row map inside layers) */ readonly identityRows: GPUBuffer;
  /** [kv.numBlocks] u32, rewritten each step */ readonly blockTable: GPUBuffer;
  /** Bound where a kernel has no bias. */ readonly placeholder: GPUBuffer;
  /** CPU staging of the block table, reused every step. */ private readonly blockTableScratch: Uint32Array;
  private readonly plans = new Map<string, StepPlan>();
  /** Plans kept in all (decode's is never evicted); other prefill sizes are rebuilt when needed. */
  private static readonly MAX_PLANS = 4;

  constructor(
    readonly ctx: GpuContext,
    readonly spec: ModelSpec,
    readonly weights: ModelWeights,
    readonly kv: PagedKvCache,
    readonly maxRows: number,
  ) {
    const inv = ropeInvFreq(spec.headDim, spec.ropeTheta, spec.ropeScaling);
    const table = ropeTable(inv, kv.numBlocks * BLOCK_TOKENS);
    this.ropeTable = ctx.createBuffer('rope.table', table.byteLength, USAGE_IN());
    ctx.device.queue.writeBuffer(this.ropeTable, 0, table);
    const rows = Uint32Array.from({ length: maxRows }, (_, i) => i);
    this.identityRows = ctx.createBuffer('rows.identity', rows.byteLength, USAGE_IN());
    ctx.device.queue.writeBuffer(this.identityRows, 0, rows);
    this.blockTable = ctx.createBuffer('kv.block_table', kv.numBlocks * 4, USAGE_IN());
    this.placeholder = ctx.createBuffer('placeholder', 4, USAGE_IN());
    this.blockTableScratch = new Uint32Array(kv.numBlocks);
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

  /**
   * Runs one step: writes its inputs, submits one command buffer and, unless `read` is 'none',
   * waits for and returns the argmax id of each logit row ('ids') or the logit rows themselves
   * ([logitRows.length, vocab] f32, 'logits'). A 'none' step (a prefill chunk before the last)
   * skips the LM head and is only queued: the queue keeps steps in order, so the next step's
   * writes cannot overtake it.
   */
  async step(input: StepInput, read: 'ids'): Promise<Uint32Array>;
  async step(input: StepInput, read: 'logits'): Promise<Float32Array>;
  async step(input: StepInput, read: 'none'): Promise<null>;
  async step(input: StepInput, read: StepReadback): Promise<Uint32Array | Float32Array | null> {
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
    const enc = this.ctx.device.createCommandEncoder({ label: 'kiln.step' });
    const pass = enc.beginComputePass({ label: 'kiln.forward' });
    encodeDispatches(pass, plan.dispatches);
    if (read !== 'none') encodeDispatches(pass, plan.head);
    if (read === 'ids') encodeDispatches(pass, [plan.argmax]);
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
    // An error raised by this step arrives as an event; do not hand back what it produced.
    this.ctx.assertAlive();
    return read === 'logits' ? new Float32Array(data) : new Uint32Array(data);
  }

  destroy(): void {
    for (const p of this.plans.values()) p.destroy();
    this.plans.clear();
    for (const b of [this.ropeTable, this.identityRows, this.blockTable, this.placeholder])
      this.ctx.destroyBuffer(b);
  }
}
