/**
 * What an architecture file (src/model/arch/<name>.ts) declares: the config.json fields only it
 * reads, its checkpoint's tensors, and how its decoder block computes. The config parser, the
 * weight loader, the forward graph, the float64 reference, the quantizer and the catalog all read
 * these declarations, so an architecture whose ops exist is one file plus a registry row.
 */
import type { Fields } from './fields.js';
import type { ModelSpec } from './spec.js';

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
}

/**
 * A decoder block's computation, as the forward graph (src/engine/forward/graph.ts) and the
 * reference model (src/model/reference.ts) run it. Each field names one choice among those the
 * kernels implement; a new choice is a new member here plus its case in both.
 */
export interface BlockRecipe {
  /** 'rmsnorm-pre': RMSNorm(x)·w before attention and before the MLP, each branch added back to x. */
  norm: 'rmsnorm-pre';
  /** 'rope': rotate-half rotary embedding of q and k in every layer. */
  positions: 'rope';
  /** 'swiglu': down(silu(gate(x)) · up(x)). */
  mlp: 'swiglu';
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
   * `bias`, `${prefix}.bias` is [rows]. gateUp has exactly two, gate then up (the SwiGLU epilogue
   * pairs row j of each).
   */
  sources: readonly { prefix: string; rows: number }[];
  cols: number;
  bias: boolean;
}

export interface LayerTensors {
  /** [hidden] */ inputNorm: string;
  /** [hidden] */ postNorm: string;
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
