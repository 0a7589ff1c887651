/**
 * Model weights on the GPU, streamed from a checkpoint one tensor at a time (and each tensor in
 * bounded chunks), so the JS heap never holds more than one chunk of a shard. The model's tensors
 * come from its architecture (src/model/tensors.ts); the projections (and a quantized LM head)
 * from the WeightSource, everything else in float: embeddings tiled, norms and biases as f32.
 */
import { UnsupportedModelError } from '../errors.js';
import type { GpuContext } from '../gpu/device.js';
import type { Checkpoint } from '../io/safetensors-checkpoint.js';
import type { TensorInfo } from '../io/safetensors.js';
import { isGgufWeight, isQ4Weight, type Linear, type MatrixWeight } from '../kernels/linear.js';
import type { ModelTensors, ProjectionTensors } from '../model/architecture.js';
import type { ModelSpec } from '../model/spec.js';
import {
  embeddingScale,
  expectedTensors,
  modelTensors,
  normTensors,
  normWeightValues,
} from '../model/tensors.js';
import type { LoadContext, WeightSource } from './source.js';
import { q4Buffers } from './upload-q4.js';
import { ggufBuffers } from './upload-gguf.js';
import { floatFormat, floatTensorBytes, uploadMatrix, uploadVector } from './upload.js';

export type { MatrixWeight } from '../kernels/linear.js';

/** A projection: its weight (float or int4), bias and int4 column permutation. */
export type LinearWeights = Linear;

export interface LayerWeights {
  /** [hidden] f32 */ inputNorm: GPUBuffer;
  /** q, k and v stacked: [(heads + 2·kvHeads)·headDim, hidden], one matmul per step */ qkv: LinearWeights;
  /** [hidden, heads·headDim] */ o: LinearWeights;
  /** [hidden] f32 */ postNorm: GPUBuffer;
  /** [headDim] f32 per-head q and k norms (recipe qkNorm 'rmsnorm-head') */ qNorm?: GPUBuffer | undefined;
  kNorm?: GPUBuffer | undefined;
  /** [hidden] f32 norms of the attention and MLP outputs (recipe norm 'rmsnorm-sandwich') */
  attnOutNorm?: GPUBuffer | undefined;
  mlpOutNorm?: GPUBuffer | undefined;
  /** gate and up fused for the SwiGLU epilogue: [intermediate] units of [hidden] */ gateUp: LinearWeights;
  /** [hidden, intermediate] */ down: LinearWeights;
}

export interface ModelWeights {
  /**
   * [vocab, hidden]; int4 only when it is a tied LM head quantized with the rest, GGUF blocks when
   * the source stores the table (a GGUF file's token_embd)
   */
  embed: MatrixWeight;
  layers: LayerWeights[];
  /** [hidden] f32 */ finalNorm: GPUBuffer;
  /** [vocab, hidden]; the same object as `embed` when embeddings are tied and float */ lmHead: MatrixWeight;
  /** Multiplier of the gathered embeddings (1, or Gemma's √hidden in the table's dtype). */
  embedScale: number;
}

export interface LoadProgress {
  /** Tensor being loaded. */
  tensor: string;
  loadedBytes: number;
  totalBytes: number;
}

/**
 * The float tensors a load reads, with the shapes they must have, in the checkpoint's canonical
 * order: the loader's own (embeddings unless an int4 head replaces them, norms, biases, a float
 * LM head) and those the source reads itself.
 */
function floatTensors(spec: ModelSpec, t: ModelTensors, source: WeightSource): Map<string, number[]> {
  const all = expectedTensors(spec);
  const want = new Set(source.floatTensors(spec, t));
  if (!source.headServesEmbeddings && !source.embedTable) want.add(t.embed);
  for (const n of normTensors(t)) want.add(n);
  for (const L of t.layers) {
    for (const p of [L.qkv, L.o, L.gateUp, L.down]) {
      if (p.bias) for (const s of p.sources) want.add(`${s.prefix}.bias`);
    }
  }
  if (!source.ownsHead && t.lmHead !== null) want.add(`${t.lmHead}.weight`);
  return new Map([...all].filter(([name]) => want.has(name)));
}

/** The float tensors the loader stores itself (everything but what the source reads). */
function loaderTensors(spec: ModelSpec, t: ModelTensors, source: WeightSource): string[] {
  const own = new Set(source.floatTensors(spec, t));
  return [...floatTensors(spec, t, source).keys()].filter((n) => !own.has(n));
}

/**
 * Checks every tensor exists with the right shape and dtype before anything is allocated, so a
 * bad checkpoint fails fast with the tensor's name.
 */
export function validateCheckpoint(spec: ModelSpec, ckpt: Checkpoint, source: WeightSource): void {
  const t = modelTensors(spec);
  for (const [name, shape] of floatTensors(spec, t, source)) {
    const info = ckpt.get(name);
    if (info.shape.length !== shape.length || info.shape.some((d, i) => d !== shape[i])) {
      throw new UnsupportedModelError(
        `tensor ${name} in ${ckpt.location} has shape [${info.shape.join(', ')}], but config.json implies [${shape.join(', ')}]`,
      );
    }
    if (!floatFormat(info.dtype)) {
      throw new UnsupportedModelError(
        `tensor ${name} in ${ckpt.location} has dtype ${info.dtype}; expected F32, F16 or BF16`,
      );
    }
  }
  source.validate(spec, t, ckpt);
}

/** Bytes the weights will take on the GPU (16-bit stays 16-bit, norms and biases become f32). */
export function weightBytes(spec: ModelSpec, ckpt: Checkpoint, source: WeightSource): number {
  const t = modelTensors(spec);
  let total = source.bytes(spec, t, ckpt);
  for (const name of loaderTensors(spec, t, source)) {
    const info = ckpt.get(name);
    total += floatTensorBytes(info.shape, info.dtype);
  }
  return total;
}

/** Streams every weight to the GPU (the checkpoint must have passed validateCheckpoint). */
export async function loadWeights(
  ctx: GpuContext,
  spec: ModelSpec,
  ckpt: Checkpoint,
  source: WeightSource,
  onProgress?: (p: LoadProgress) => void,
): Promise<ModelWeights> {
  const t = modelTensors(spec);
  const names = [...floatTensors(spec, t, source).keys(), ...source.packedTensorNames(spec, t)];
  const totalBytes = names.reduce((s, n) => s + ckpt.get(n).byteLength, 0);
  let loadedBytes = 0;
  // Everything uploaded so far, freed if a later tensor fails (a truncated shard, device OOM).
  const created: GPUBuffer[] = [];
  const lc: LoadContext = {
    ctx,
    ckpt,
    spec,
    tick(info: TensorInfo, bytes: number) {
      loadedBytes += bytes;
      onProgress?.({ tensor: info.name, loadedBytes, totalBytes });
    },
    track: (b) => (created.push(b), b),
  };
  const linear = async (p: ProjectionTensors): Promise<LinearWeights> => {
    const lin = await source.projection(lc, p);
    if (!p.bias) return lin;
    return {
      ...lin,
      bias: await uploadVector(
        lc,
        p.sources.map((s) => `${s.prefix}.bias`),
      ),
    };
  };
  // RMSNorm weights as the kernels multiply by them ((1 + w) for Gemma).
  const norm = (name: string) => uploadVector(lc, [name], (w) => normWeightValues(spec, w));
  const optionalNorm = async (name: string | undefined) => (name === undefined ? undefined : norm(name));
  try {
    let embed: MatrixWeight | null = source.headServesEmbeddings
      ? null
      : source.embedTable
        ? await source.embedTable(lc, t)
        : await uploadMatrix(lc, t.embed, [t.embed]);
    const layers: LayerWeights[] = [];
    for (const L of t.layers) {
      layers.push({
        inputNorm: await norm(L.inputNorm),
        qkv: await linear(L.qkv),
        qNorm: await optionalNorm(L.qNorm),
        kNorm: await optionalNorm(L.kNorm),
        o: await linear(L.o),
        attnOutNorm: await optionalNorm(L.attnOutNorm),
        postNorm: await norm(L.postNorm),
        gateUp: await linear(L.gateUp),
        down: await linear(L.down),
        mlpOutNorm: await optionalNorm(L.mlpOutNorm),
      });
    }
    const finalNorm = await norm(t.finalNorm);
    let lmHead: MatrixWeight;
    if (source.ownsHead) lmHead = await source.lmHead(lc, t);
    else if (t.lmHead === null) lmHead = embed as MatrixWeight;
    else lmHead = await uploadMatrix(lc, `${t.lmHead}.weight`, [`${t.lmHead}.weight`]);
    embed ??= lmHead;
    return { embed, layers, finalNorm, lmHead, embedScale: embeddingScale(spec, t, ckpt) };
  } catch (e) {
    for (const b of created) ctx.destroyBuffer(b);
    throw e;
  }
}

/** Frees every buffer of the weights. */
export function destroyWeights(ctx: GpuContext, w: ModelWeights): void {
  const seen = new Set<GPUBuffer>();
  const free = (b: GPUBuffer | undefined) => {
    if (b && !seen.has(b)) {
      seen.add(b);
      ctx.destroyBuffer(b);
    }
  };
  const freeMatrix = (m: MatrixWeight) =>
    (isGgufWeight(m) ? ggufBuffers(m) : isQ4Weight(m) ? q4Buffers(m) : m.parts.map((p) => p.buffer)).forEach(
      free,
    );
  const freeLinear = (l: LinearWeights) => {
    freeMatrix(l.weight);
    free(l.bias);
    free(l.perm);
  };
  freeMatrix(w.embed);
  freeMatrix(w.lmHead);
  free(w.finalNorm);
  for (const l of w.layers) {
    for (const n of [l.inputNorm, l.postNorm, l.qNorm, l.kNorm, l.attnOutNorm, l.mlpOutNorm]) free(n);
    [l.qkv, l.o, l.gateUp, l.down].forEach(freeLinear);
  }
}
