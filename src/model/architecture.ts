/**
 * What an architecture file (src/model/arch/<name>.ts) declares: the config.json fields only it
 * reads, its checkpoint's tensors, and how its decoder block computes. The config parser, the
 * weight loader, the forward graph, the float64 reference, the quantizer and the catalog all read
 * these declarations, so an architecture whose ops exist is one file plus a registry row.
 */
import type { Fields } from './fields.js';
import type { ModelSpec, RopeScaling } from './spec.js';

export interface Architecture {
  /** Registry key, stored in ModelSpec.architecture; config.json's model_type. */
  readonly name: string;
  /** The config.json `architectures[0]` classes this file implements (transformers' names). */
  readonly hfClasses: readonly string[];
  /** Reads the config.json fields only this architecture has (see ArchConfig). */
  config(f: Fields, base: ArchConfigBase): ArchConfig;
  /** The checkpoint's tensors and how they stack into the forward pass's matmuls. */
  tensors(spec: ModelSpec): ModelTensors;
  /** How a decoder block computes. */
  readonly block: BlockRecipe;
}

/** What the common parser has already read when it asks the architecture for its own fields. */
export interface ArchConfigBase {
  numLayers: number;
  headDim: number;
}

/** The per-architecture rules of config.json. */
export interface ArchConfig {
  qkvBias: boolean;
  oBias: boolean;
  mlpBias: boolean;
  /**
   * The attention window of each layer (ModelSpec.layerWindows: one entry per layer, 0 for full
   * causal attention); absent means every layer attends to the whole context. `layerWindowsFrom`
   * (windows.ts) builds it from `layer_types` or a rule.
   */
  layerWindows?: readonly number[] | undefined;
  /** Per layer, whether it applies RoPE (SmolLM3's `no_rope_layers`); undefined: all do. */
  ropeLayers?: boolean[] | undefined;
  /**
   * RoPE of the sliding layers (a window in layerWindows) when it differs from the global one
   * (Gemma 3's `rope_local_base_freq`, unscaled); undefined: the same as the global layers.
   */
  localRope?: { theta: number; scaling: RopeScaling } | undefined;
  /** Overrides of the global RoPE when the architecture reads it from its own fields (Gemma 3 v5). */
  globalRope?: { theta: number; scaling: RopeScaling } | undefined;
  /** Rotated elements per head (Phi-3's `partial_rotary_factor`); undefined: the whole head. */
  rotaryDim?: number | undefined;
  /** Attention score scale (Gemma's `query_pre_attn_scalar`^-½); undefined: head_dim^-½. */
  attentionScale?: number | undefined;
  /** tanh soft-capping of attention scores (Gemma 2's `attn_logit_softcapping`). */
  attnLogitSoftcap?: number | undefined;
  /** tanh soft-capping of the final logits (Gemma 2's `final_logit_softcapping`). */
  finalLogitSoftcap?: number | undefined;
}

/**
 * A decoder block's computation, as the forward graph (src/engine/forward/graph.ts) and the
 * reference model (src/model/reference.ts) run it. Each field names one choice among those the
 * kernels implement; a new choice is a new member here plus its case in both.
 */
export interface BlockRecipe {
  /**
   * 'rmsnorm-pre': RMSNorm(x)·w before attention and before the MLP, each branch added back to x.
   * 'rmsnorm-sandwich' (Gemma 2/3): also an RMSNorm on each branch's output before it is added
   * (`post_attention_layernorm`, `post_feedforward_layernorm`): four norms per layer.
   */
  norm: 'rmsnorm-pre' | 'rmsnorm-sandwich';
  /**
   * How every RMSNorm weight scales: 'w' (Llama) or 'one-plus-w' (Gemma: the stored weight is
   * centred on 0 and the norm multiplies by (1 + w), in f32).
   */
  normWeight: 'w' | 'one-plus-w';
  /** 'rmsnorm-head': an RMSNorm over each q and k head ([head_dim] weights) before RoPE (Qwen3, Gemma 3). */
  qkNorm: 'none' | 'rmsnorm-head';
  /**
   * 'rope': rotate-half rotary embedding of q and k; which layers rotate, how many elements and
   * with which frequencies is the ModelSpec's (layerRope, rotaryDim, localRopeTheta).
   */
  positions: 'rope';
  /** 'swiglu': down(silu(gate(x)) · up(x)); 'geglu-tanh': down(gelu_tanh(gate(x)) · up(x)) (Gemma). */
  mlp: 'swiglu' | 'geglu-tanh';
  /** 'sqrt-hidden': embeddings multiplied by √hidden rounded to the embedding dtype (Gemma). */
  embedScale: 'none' | 'sqrt-hidden';
}

/** The four matmuls of a block: q/k/v stacked, the output projection, gate/up stacked, down. */
export type ProjectionRole = 'qkv' | 'o' | 'gateUp' | 'down';

/** One matmul of the forward pass and the checkpoint tensors it is made of. */
export interface ProjectionTensors {
  /** The fused matmul's name (buffer labels, messages): `model.layers.0.self_attn.qkv_proj`. */
  name: string;
  role: ProjectionRole;
  layer: number;
  /**
   * Checkpoint tensor prefixes stacked by rows: `${prefix}.weight` is [rows, cols] and, with
   * `bias`, `${prefix}.bias` is [rows]. gateUp has two, gate then up (the gated epilogue pairs row
   * j of each), or one stored [gate; up] (Phi-3's `gate_up_proj`).
   */
  sources: readonly { prefix: string; rows: number }[];
  cols: number;
  bias: boolean;
}

export interface LayerTensors {
  /** [hidden] */ inputNorm: string;
  /** [hidden] the norm before the MLP */ postNorm: string;
  /** [head_dim] per-head norms of q and k (qkNorm 'rmsnorm-head') */ qNorm?: string;
  kNorm?: string;
  /** [hidden] norms of the attention and MLP outputs (norm 'rmsnorm-sandwich') */ attnOutNorm?: string;
  mlpOutNorm?: string;
  qkv: ProjectionTensors;
  o: ProjectionTensors;
  gateUp: ProjectionTensors;
  down: ProjectionTensors;
}

export interface ModelTensors {
  /** [vocab, hidden] */ embed: string;
  layers: LayerTensors[];
  /** [hidden] */ finalNorm: string;
  /** Prefix of the [vocab, hidden] LM head (`${lmHead}.weight`), null when tied to `embed`. */
  lmHead: string | null;
}

/** Rows of a projection (the sum of its sources). */
export function projectionRows(p: ProjectionTensors): number {
  return p.sources.reduce((a, s) => a + s.rows, 0);
}
