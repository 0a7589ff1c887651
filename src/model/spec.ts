/**
 * The model blueprint: every size and constant the forward pass needs, independent of file formats.
 * Built from config.json by src/io/config.ts; shared by the GPU forward pass and the CPU reference.
 */
export type Architecture = 'llama' | 'mistral' | 'qwen2';

export type RopeScaling =
  | { type: 'none' }
  | { type: 'linear'; factor: number }
  | {
      type: 'llama3';
      factor: number;
      lowFreqFactor: number;
      highFreqFactor: number;
      originalMaxPositionEmbeddings: number;
    };

export interface ModelSpec {
  architecture: Architecture;
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
  tieWordEmbeddings: boolean;
  /** q/k/v projections carry biases (Qwen2 always; Llama/Mistral when attention_bias is true). */
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
   * GPTQ or AWQ; src/quant parses it), null for a float checkpoint.
   */
  quantizationConfig: Record<string, unknown> | null;
}

/** HF tensor names of one decoder layer, in one place so loaders and tests agree. */
export function layerTensorNames(i: number) {
  const p = `model.layers.${i}`;
  return {
    inputNorm: `${p}.input_layernorm.weight`,
    q: `${p}.self_attn.q_proj`,
    k: `${p}.self_attn.k_proj`,
    v: `${p}.self_attn.v_proj`,
    o: `${p}.self_attn.o_proj`,
    postNorm: `${p}.post_attention_layernorm.weight`,
    gate: `${p}.mlp.gate_proj`,
    up: `${p}.mlp.up_proj`,
    down: `${p}.mlp.down_proj`,
  };
}

export const EMBED_TOKENS = 'model.embed_tokens.weight';
export const FINAL_NORM = 'model.norm.weight';
export const LM_HEAD = 'lm_head.weight';
