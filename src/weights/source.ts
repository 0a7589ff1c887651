/**
 * Where a model's projection weights come from, as one interface: the float checkpoint as stored
 * (float.ts), a float checkpoint quantized to int4 while loading (quantize.ts), a Kiln int4
 * folder (kiln.ts), a GPTQ/AWQ folder converted while loading (imported.ts), or GGUF block tensors
 * kept quantized (upload-gguf.ts uploads them; the GGUF source may also store the embeddings). The loader
 * (loader.ts) reads everything else the same way for all of them: embeddings, norms, biases and a
 * float LM head stay in float.
 */
import type { GpuContext } from '../gpu/device.js';
import type { Checkpoint } from '../io/safetensors-checkpoint.js';
import type { TensorInfo } from '../io/safetensors.js';
import type { Linear, MatrixWeight } from '../kernels/linear.js';
import type { ModelTensors, ProjectionTensors } from '../model/architecture.js';
import type { ModelSpec } from '../model/spec.js';

/** What a source loads with: the checkpoint, the device, and the loader's bookkeeping. */
export interface LoadContext {
  readonly ctx: GpuContext;
  readonly ckpt: Checkpoint;
  readonly spec: ModelSpec;
  /** Counts bytes read from the checkpoint (load progress). */
  tick(info: TensorInfo, bytes: number): void;
  /** Registers a buffer, so that a load failing later frees it. */
  track(b: GPUBuffer): GPUBuffer;
}

export interface WeightSource {
  /** How the projections are stored, e.g. "int4 g32 asym, quantized at load" (`kiln run --json`). */
  readonly description: string;
  /**
   * The projections are quantized (int4, or GGUF blocks): their matmuls read f32 activations.
   */
  readonly quantized: boolean;
  /**
   * The LM head this source loads (quantized) is tied to the embeddings and also serves as their
   * table (gathered by embed_q4 or embed_gguf): no float embedding table is read.
   */
  readonly headServesEmbeddings: boolean;
  /** This source loads the LM head (quantized); otherwise the loader reads it in float. */
  readonly ownsHead: boolean;
  /**
   * Float checkpoint tensors this source reads itself (projection weights it stores or quantizes,
   * the head it quantizes): the loader checks their shapes and dtypes with its own.
   */
  floatTensors(spec: ModelSpec, t: ModelTensors): string[];
  /**
   * Checks the tensors only this source reads (packed int4 tensors, import tensors, group sizes)
   * before anything is allocated; the float tensors are the loader's to check.
   */
  validate(spec: ModelSpec, t: ModelTensors, ckpt: Checkpoint): void;
  /** Checkpoint tensors besides the float ones (for progress totals). */
  packedTensorNames(spec: ModelSpec, t: ModelTensors): string[];
  /** GPU bytes of what this source stores (projections, and the head when it owns it). */
  bytes(spec: ModelSpec, t: ModelTensors, ckpt: Checkpoint): number;
  /** One projection's weight (and column permutation); the loader adds its bias. */
  projection(lc: LoadContext, p: ProjectionTensors): Promise<Linear>;
  /** The LM head, when `ownsHead`. */
  lmHead(lc: LoadContext, t: ModelTensors): Promise<MatrixWeight>;
  /**
   * The embedding table, when this source stores it itself (a GGUF file's block-quantized
   * token_embd, gathered by embed_gguf); absent: the loader reads it in float, or the int4 head
   * serves (`headServesEmbeddings`). A source that has it counts t.embed in `packedTensorNames`
   * and `bytes`; the loader then does not read it as a float tensor.
   */
  embedTable?(lc: LoadContext, t: ModelTensors): Promise<MatrixWeight>;
}

/** The checkpoint tensor an LM head is read from: lm_head, or the embeddings when tied. */
export function headTensor(t: ModelTensors): string {
  return t.lmHead === null ? t.embed : `${t.lmHead}.weight`;
}

/** Every projection of the model, layer by layer. */
export function projectionsOf(t: ModelTensors): ProjectionTensors[] {
  return t.layers.flatMap((L) => [L.qkv, L.o, L.gateUp, L.down]);
}

/** The `.weight` tensors of every projection. */
export function projectionWeights(t: ModelTensors): string[] {
  return projectionsOf(t).flatMap((p) => p.sources.map((s) => `${s.prefix}.weight`));
}
