/**
 * The GPU buffers of one step shape (m rows, r logit rows), each with its shape, as llama2.c's
 * RunState: the step's inputs, the activations every layer reuses, and the read-back buffers.
 * Made once per StepPlan; a step only writes the inputs.
 */
import { ROW_INFO_WORDS } from '../../kernels/row-info.js';
import { storageUsage, type GpuContext } from '../../gpu/device.js';
import { activationBytes } from '../../kernels/activation.js';
import { isStackedQuantWeight } from '../../kernels/linear.js';
import { isQuantKv } from '../../kernels/kv-dtype.js';
import { LOGPROBS_ROW_BYTES } from '../../kernels/logprobs.js';
import { architectureOf } from '../../model/registry.js';
import { RECYCLE_ROW_BYTES } from './recycle.js';
import type { ForwardState } from './state.js';

const USAGE_IN = () => GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST;
const USAGE_READ = () => GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST;

export interface StepBuffers {
  /** [m] u32 token ids */ ids: GPUBuffer;
  /** [m] vec4<u32> (kernels/row-info.ts) */ rowInfo: GPUBuffer;
  /** [m] u32 KV-cache slot of each row */ slots: GPUBuffer;
  /** [m] u32 each row's slot in the sliding layers' pool (with a sliding pool only) */
  slidingSlots?: GPUBuffer | undefined;
  /** [r] u32 the row whose logits each logit row is */ logitRows: GPUBuffer;
  /** [m, hidden] f32 residual stream */ x: GPUBuffer;
  /** [m, hidden] normed rows, the qkv and gate/up matmuls' X (f16 when activations are f16) */ xn: GPUBuffer;
  /** [m, qDim + 2·kvDim] f32 q, k, v side by side */ qkv: GPUBuffer;
  /** [m, qDim] f32 rotated q */ q: GPUBuffer;
  /** [m, qDim] f32 attention output */ attn: GPUBuffer;
  /** [m, intermediate] f32 silu(gate)·up */ mlp: GPUBuffer;
  /** [m, hidden] f32 a branch's output before its norm (sandwich-norm blocks only) */
  branch?: GPUBuffer | undefined;
  /** [m, 2·intermediate] f32 int4 gate/up before SwiGLU (int4 models only) */ gateUp?: GPUBuffer | undefined;
  /** [m, widest permuted K] f32 X gathered by a column permutation (act-order GPTQ only) */
  gathered?: GPUBuffer | undefined;
  /**
   * [ceil(m / 16)][kvHeads][16][headDim] f32 K and V of the step's rows at the identity slots,
   * before kv_quantize writes them into a quantized cache (quantized caches only), and [m] u32
   * each row's lane of the recent window (written each step; kv_lowrank reads it).
   */
  kvStage?: { k: GPUBuffer; v: GPUBuffer; lanes: GPUBuffer } | undefined;
  /** [r, hidden] final-normed logit rows (f16 when activations are f16) */ final: GPUBuffer;
  /** [r, vocab] f32 */ logits: GPUBuffer;
  /** [r] u32 argmax or sampled id of each logit row */ outIds: GPUBuffer;
  /** [r] u32 ids, then [r] x LOGPROBS_ROW_BYTES logprobs rows, then [r] x RECYCLE_ROW_BYTES guesses; mappable */ idsReadback: GPUBuffer;
  /** [r, vocab] f32, mappable */ logitsReadback: GPUBuffer;
}

/** Allocates a plan's buffers; `own` receives every one (the plan frees them). */
export function createStepBuffers(
  ctx: GpuContext,
  model: ForwardState,
  m: number,
  r: number,
  own: (b: GPUBuffer) => GPUBuffer,
): StepBuffers {
  const { spec, weights } = model;
  const buffer = (label: string, bytes: number, usage = storageUsage()) =>
    own(ctx.createBuffer(label, bytes, usage));
  const f32 = (label: string, elems: number, usage = storageUsage()) => buffer(label, elems * 4, usage);
  /** Rows of `cols` activations in the model's activation format, padded to whole words. */
  const act = (label: string, rows: number, cols: number) =>
    buffer(label, Math.ceil((rows * cols * activationBytes(model.activations)) / 4) * 4);
  const H = spec.hiddenSize;
  const qDim = spec.numHeads * spec.headDim;
  const kvDim = spec.numKvHeads * spec.headDim;
  const I = spec.intermediateSize;
  const linears = weights.layers.flatMap((L) => [L.qkv, L.o, L.gateUp, L.down]);
  const permuted = linears.filter((l) => l.perm);
  return {
    ids: f32('step.ids', m, USAGE_IN()),
    rowInfo: f32('step.row_info', ROW_INFO_WORDS * m, USAGE_IN()),
    slots: f32('step.slots', m, USAGE_IN()),
    slidingSlots: model.kv.sliding ? f32('step.slots.sliding', m, USAGE_IN()) : undefined,
    logitRows: f32('step.logit_rows', r, USAGE_IN()),
    x: f32('act.x', m * H),
    xn: act('act.xn', m, H),
    qkv: f32('act.qkv', m * (qDim + 2 * kvDim)),
    q: f32('act.q', m * qDim),
    attn: f32('act.attn', m * qDim),
    mlp: f32('act.mlp', m * I),
    branch: architectureOf(spec).block.norm === 'rmsnorm-sandwich' ? f32('act.branch', m * H) : undefined,
    gateUp: weights.layers.some((L) => isStackedQuantWeight(L.gateUp.weight))
      ? f32('act.gate_up', m * 2 * I)
      : undefined,
    gathered:
      permuted.length > 0
        ? f32('act.gathered', m * Math.max(...permuted.map((l) => l.weight.cols)))
        : undefined,
    kvStage: isQuantKv(model.kv.dtype)
      ? {
          k: f32('act.kv_stage.k', Math.ceil(m / 16) * 16 * kvDim),
          v: f32('act.kv_stage.v', Math.ceil(m / 16) * 16 * kvDim),
          lanes: f32('step.kv_lanes', m, USAGE_IN()),
        }
      : undefined,
    final: act('act.final', r, H),
    logits: f32('act.logits', r * spec.vocabSize),
    outIds: f32('act.out_ids', r),
    idsReadback: buffer('readback.ids', r * (4 + LOGPROBS_ROW_BYTES + RECYCLE_ROW_BYTES), USAGE_READ()),
    logitsReadback: buffer('readback.logits', r * spec.vocabSize * 4, USAGE_READ()),
  };
}
