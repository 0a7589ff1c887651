/**
 * What `createEngine` decides before it allocates anything: whether the model fits Kiln at all
 * (head size, tokenizer against vocabulary), the options that depend on the adapter (f16 features,
 * the KV cache's element type), and the memory plan, confirmed by an allocation probe on the
 * device and cut down until the device accepts it. The option checks that need neither the model
 * nor the adapter are options.ts's.
 */
import { DeviceMemoryError, InvalidRequestError, KilnError, UnsupportedModelError } from '../errors.js';
import { formatBytes, type GpuContext } from '../gpu/device.js';
import type { Checkpoint } from '../io/safetensors-checkpoint.js';
import type { KilnTokenizer } from '../io/tokenizer.js';
import { ATTENTION_MAX_HEAD_DIM } from '../kernels/attention.js';
import { isQuantKv } from '../kernels/kv-dtype.js';
import type { ModelSpec } from '../model/spec.js';
import type { WeightSource } from '../weights/source.js';
import type { KvDtype } from './kv/cache.js';
import { planMemory, type MemoryPlan } from './memory.js';
import type { EngineChoices, EngineOptions } from './options.js';

export const DEFAULT_CONTEXT = 4096;
export const DEFAULT_PREFILL_CHUNK = 256;

/** Refuses a model whose heads the attention kernel cannot hold. */
export function checkModel(spec: ModelSpec, location: string): void {
  if (spec.headDim > ATTENTION_MAX_HEAD_DIM) {
    throw new UnsupportedModelError(
      `config.json in ${location}: head_dim ${spec.headDim} is over the ${ATTENTION_MAX_HEAD_DIM} Kiln's attention kernel supports`,
    );
  }
}

/** Refuses a tokenizer with ids outside the model's vocabulary. */
export function checkTokenizer(spec: ModelSpec, tokenizer: KilnTokenizer, location: string): void {
  if (tokenizer.vocabSize > spec.vocabSize) {
    throw new KilnError(
      `the tokenizer in ${location} has ${tokenizer.vocabSize} tokens but config.json's vocab_size is ${spec.vocabSize}`,
    );
  }
}

/** Refuses f16 activations for quantized weights (their kernels read f32). */
export function checkActivations(choices: EngineChoices, source: WeightSource): void {
  if (choices.activations === 'f16' && source.quantized) {
    throw new InvalidRequestError(
      "activations 'f16' applies to float weights; quantized models (int4, GGUF blocks) read f32 activations (use 'f32')",
    );
  }
}

/**
 * Checks the f16 options against the adapter's features and resolves the KV cache's element type
 * ('auto': f16 where the adapter has shader-f16).
 */
export function resolveKvDtype(choices: EngineChoices, ctx: GpuContext, spec: ModelSpec): KvDtype {
  const adapterName = ctx.adapter.description || ctx.adapter.device;
  if (choices.activations === 'f16' && !ctx.adapter.shaderF16) {
    throw new InvalidRequestError(
      `activations 'f16' needs the shader-f16 feature, which this adapter (${adapterName}) lacks; use 'f32'`,
    );
  }
  if (choices.kvCache === 'f16' && !ctx.adapter.shaderF16) {
    throw new InvalidRequestError(
      `kvCache 'f16' needs the shader-f16 feature, which this adapter (${adapterName}) lacks; use 'auto' or 'f32'`,
    );
  }
  const kvDtype: KvDtype =
    choices.kvCache === 'auto' ? (ctx.adapter.shaderF16 ? 'f16' : 'f32') : choices.kvCache;
  if (isQuantKv(kvDtype) && spec.headDim % 4 !== 0) {
    throw new InvalidRequestError(
      `kvCache '${kvDtype}' needs head_dim to be a multiple of 4, this model's is ${spec.headDim}; use 'auto', 'f16' or 'f32'`,
    );
  }
  return kvDtype;
}

/**
 * The memory plan for this device. It needs the KV element type and the limits, known only with
 * the adapter; nothing is allocated yet. A probe under an error scope then checks the device can
 * hold it all, and the plan is cut to three quarters until it can (three tries).
 */
export async function planOnDevice(
  ctx: GpuContext,
  opts: EngineOptions,
  spec: ModelSpec,
  ckpt: Checkpoint,
  source: WeightSource,
  kvDtype: KvDtype,
): Promise<MemoryPlan> {
  const requestedContext = Math.min(spec.maxPositionEmbeddings, opts.contextLength ?? DEFAULT_CONTEXT);
  const cap = (limit: number, c: number | undefined) => Math.min(limit, c ?? Infinity);
  const planInput = {
    spec,
    ckpt,
    source,
    kvDtype,
    requestedContext,
    prefillChunkTokens: opts.prefillChunkTokens ?? DEFAULT_PREFILL_CHUNK,
    slidingKv: opts.slidingKv ?? 'release',
    ...(opts.kvCacheTokens !== undefined ? { kvTokens: opts.kvCacheTokens } : {}),
    limits: {
      maxBufferSize: cap(ctx.limits.maxBufferSize, opts.limits?.maxBufferSize),
      maxStorageBufferBindingSize: cap(
        ctx.limits.maxStorageBufferBindingSize,
        opts.limits?.maxStorageBufferBindingSize,
      ),
    },
  };
  let plan = planMemory({
    ...planInput,
    ...(opts.memoryLimitBytes !== undefined ? { budgetBytes: opts.memoryLimitBytes } : {}),
  });
  for (let tries = 0; !(await ctx.probeAllocation(plan.total)); tries++) {
    // The device refused the whole plan at once: plan again for three quarters of it.
    if (tries === 3) {
      throw new DeviceMemoryError(
        `this device could not allocate ${formatBytes(plan.total)} (weights ${formatBytes(plan.weights)}) even after shrinking the KV cache`,
      );
    }
    const budgetBytes = Math.floor(plan.total * 0.75);
    plan = planMemory({ ...planInput, budgetBytes });
    plan.note = `${plan.note ?? ''}${plan.note ? '; ' : ''}an allocation probe failed, so the plan was cut to ${formatBytes(budgetBytes)}`;
  }
  return plan;
}
