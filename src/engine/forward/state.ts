/**
 * What a step plan reads from the model it runs (ForwardModel, model.ts, implements it): the
 * weights, the KV cache, the per-model GPU tables and the kernel choices.
 */
import type { GpuContext } from '../../gpu/device.js';
import type { ActivationFormat } from '../../kernels/activation.js';
import type { ModelSpec } from '../../model/spec.js';
import type { KernelChoices } from '../../tuner/choices.js';
import type { ModelWeights } from '../../weights/loader.js';
import type { PagedKvCache } from '../kv/cache.js';

export interface ForwardState {
  readonly ctx: GpuContext;
  readonly spec: ModelSpec;
  readonly weights: ModelWeights;
  readonly kv: PagedKvCache;
  /** Storage of the normed activations the qkv, gate/up and LM-head matmuls read. */
  readonly activations: ActivationFormat;
  /** Longest sequence (prompt + generated) a step serves. */
  readonly contextLength: number;
  /** [contextLength][rotaryDim / 2] vec2<f32> (cos, sin) of the global RoPE */ readonly ropeTable: GPUBuffer;
  /** Each layer's RoPE table (the global one, Gemma 3's local one, or a NoPE layer's placeholder). */
  readonly layerRopeTables: readonly GPUBuffer[];
  /** [maxRows] u32 = 0, 1, 2, ... (rmsnorm's row map inside layers) */ readonly identityRows: GPUBuffer;
  /** The concatenated block tables of a step's sequences, rewritten each step. */ readonly blockTable: GPUBuffer;
  /** The same for the sliding layers' pool (same offsets); null without one. */
  readonly slidingBlockTable: GPUBuffer | null;
  /** Bound where a kernel has no bias. */ readonly placeholder: GPUBuffer;
  /** Tuned kernel variants by shape class (empty: the kernels' own defaults). */
  readonly choices: KernelChoices;
  /** One-row steps fold each RMSNorm into the following matmul where its kernel can. */
  readonly foldNorms: boolean;
  /**
   * FlashDecoding++'s unified max per layer for decode attention; null = the exact two-pass
   * softmax (until calibration sets it, or always with attentionSoftmax 'two_pass').
   */
  readonly attentionPhi: readonly (number | null)[];
}
