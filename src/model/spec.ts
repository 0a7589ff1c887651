/**
 * The model blueprint: every size and constant the forward pass needs, independent of file formats.
 * Built from config.json by src/model/config.ts with the rules of the model's architecture file
 * (src/model/arch/); shared by the GPU forward pass, the weight loader and the CPU reference.
 */
import type { RopeScaling } from '../kernels/rope.ref.js';

export type { RopeScaling };

export interface ModelSpec {
  /** The architecture file that read this config (src/model/registry.ts): 'llama', 'qwen2', ... */
  architecture: string;
  /** The `architectures[0]` string of config.json, for messages. */
  hfArchitecture: string;
  vocabSize: number;
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numKvHeads: number;
  headDim: number;
  rmsNormEps: number;
  ropeTheta: number;
  ropeScaling: RopeScaling;
  maxPositionEmbeddings: number;
  /**
   * The attention window of each layer (length numLayers), as transformers' sliding-window mask:
   * with W > 0 the query at position i sees the keys j with i - W < j <= i (W keys, itself
   * included); 0 means full causal attention (j <= i).
   */
  layerWindows: number[];
  tieWordEmbeddings: boolean;
  /** q/k/v projections carry biases (Qwen2 always; Llama when attention_bias is true). */
  qkvBias: boolean;
  /** o_proj carries a bias (Llama's attention_bias applies to it as well). */
  oBias: boolean;
  /** Llama's mlp_bias: gate/up/down carry biases. */
  mlpBias: boolean;
  bosTokenId: number | null;
  /** Generation stops at any of these. */
  eosTokenIds: number[];
  /**
   * config.json's `quantization_config` (or quantize_config.json) of an int4 checkpoint (Kiln,
   * GPTQ or AWQ; src/weights picks the source that reads it), null for a float checkpoint.
   */
  quantizationConfig: Record<string, unknown> | null;
  /**
   * Per layer, the RoPE it applies: 'global' (ropeTheta and ropeScaling), 'local' (localRopeTheta,
   * unscaled: Gemma 3's sliding layers) or 'none' (SmolLM3's NoPE layers). Absent: all 'global'.
   */
  layerRope?: LayerRope[] | undefined;
  /** RoPE base of the 'local' layers. */
  localRopeTheta?: number | undefined;
  /** Leading elements of each q/k head that RoPE rotates (Phi-3); absent: headDim. */
  rotaryDim?: number | undefined;
  /** Attention score scale; absent: 1 / sqrt(headDim). */
  attentionScale?: number | undefined;
  /** Attention scores become cap · tanh(score / cap) (Gemma 2). */
  attnLogitSoftcap?: number | undefined;
  /** Logits become cap · tanh(logit / cap) (Gemma 2). */
  finalLogitSoftcap?: number | undefined;
  /**
   * Prefix of every tensor name of the text decoder inside a multimodal checkpoint
   * ('language_model.' for Gemma3ForConditionalGeneration: model/text-config.ts); absent: the names
   * as the architecture file gives them.
   */
  tensorPrefix?: string | undefined;
}

export type LayerRope = 'global' | 'local' | 'none';

/** The RoPE of layer `l`. */
export function layerRope(spec: ModelSpec, l: number): LayerRope {
  return spec.layerRope?.[l] ?? 'global';
}

/** The attention score scale of the spec. */
export function attentionScale(spec: ModelSpec): number {
  return spec.attentionScale ?? 1 / Math.sqrt(spec.headDim);
}
