/**
 * Model weights on the GPU, streamed from a checkpoint one tensor at a time (and each tensor in
 * bounded chunks), so the JS heap never holds more than one chunk of a shard.
 */
import { DeviceMemoryError, UnsupportedModelError } from '../errors.js';
import { formatBytes, type GpuContext } from '../gpu/device.js';
import { decodeToFloat32, DTYPE_BYTES, type SafetensorsDtype } from '../io/dtype.js';
import type { Checkpoint, TensorInfo } from '../io/safetensors.js';
import { rowsPerPart, WEIGHT_FORMAT_BYTES, type GpuWeight, type WeightFormat } from '../kernels/weight.js';
import { EMBED_TOKENS, FINAL_NORM, LM_HEAD, layerTensorNames, type ModelSpec } from './model-spec.js';

export interface LinearWeights {
  weight: GpuWeight;
  /** [rows] f32, when the projection has a bias */
  bias?: GPUBuffer;
}

export interface LayerWeights {
  /** [hidden] f32 */ inputNorm: GPUBuffer;
  /** [heads·headDim, hidden] */ q: LinearWeights;
  /** [kvHeads·headDim, hidden] */ k: LinearWeights;
  /** [kvHeads·headDim, hidden] */ v: LinearWeights;
  /** [hidden, heads·headDim] */ o: LinearWeights;
  /** [hidden] f32 */ postNorm: GPUBuffer;
  /** [intermediate, hidden] */ gate: LinearWeights;
  /** [intermediate, hidden] */ up: LinearWeights;
  /** [hidden, intermediate] */ down: LinearWeights;
}

export interface ModelWeights {
  /** [vocab, hidden] */ embed: GpuWeight;
  layers: LayerWeights[];
  /** [hidden] f32 */ finalNorm: GPUBuffer;
  /** [vocab, hidden]; the same object as `embed` when embeddings are tied */ lmHead: GpuWeight;
}

export interface LoadProgress {
  /** Tensor being loaded. */
  tensor: string;
  loadedBytes: number;
  totalBytes: number;
}

/** Upload chunk size: big enough to amortize writeBuffer, small enough to keep the heap flat. */
const CHUNK_BYTES = 8 << 20;

const GPU_FORMAT: Partial<Record<SafetensorsDtype, WeightFormat>> = { F32: 'f32', F16: 'f16', BF16: 'bf16' };

/** Every tensor the model reads, with the shape it must have. */
export function expectedTensors(spec: ModelSpec): Map<string, number[]> {
  const { hiddenSize: h, intermediateSize: inter, numHeads, numKvHeads, headDim, vocabSize } = spec;
  const qDim = numHeads * headDim;
  const kvDim = numKvHeads * headDim;
  const t = new Map<string, number[]>();
  t.set(EMBED_TOKENS, [vocabSize, h]);
  for (let i = 0; i < spec.numLayers; i++) {
    const n = layerTensorNames(i);
    t.set(n.inputNorm, [h]);
    t.set(`${n.q}.weight`, [qDim, h]);
    t.set(`${n.k}.weight`, [kvDim, h]);
    t.set(`${n.v}.weight`, [kvDim, h]);
    t.set(`${n.o}.weight`, [h, qDim]);
    if (spec.qkvBias) {
      t.set(`${n.q}.bias`, [qDim]);
      t.set(`${n.k}.bias`, [kvDim]);
      t.set(`${n.v}.bias`, [kvDim]);
    }
    if (spec.oBias) t.set(`${n.o}.bias`, [h]);
    t.set(n.postNorm, [h]);
    t.set(`${n.gate}.weight`, [inter, h]);
    t.set(`${n.up}.weight`, [inter, h]);
    t.set(`${n.down}.weight`, [h, inter]);
    if (spec.mlpBias) {
      t.set(`${n.gate}.bias`, [inter]);
      t.set(`${n.up}.bias`, [inter]);
      t.set(`${n.down}.bias`, [h]);
    }
  }
  t.set(FINAL_NORM, [h]);
  if (!spec.tieWordEmbeddings) t.set(LM_HEAD, [vocabSize, h]);
  return t;
}

/** Bytes the weights will take on the GPU (16-bit stays 16-bit, norms and biases become f32). */
export function weightBytes(spec: ModelSpec, ckpt: Checkpoint): number {
  let total = 0;
  for (const [name, shape] of expectedTensors(spec)) {
    const info = ckpt.get(name);
    const elems = shape.reduce((a, b) => a * b, 1);
    total += shape.length === 2 ? elems * DTYPE_BYTES[info.dtype] : elems * 4;
  }
  return total;
}

/**
 * Checks every tensor exists with the right shape and a float dtype before anything is allocated,
 * so a bad checkpoint fails fast with the tensor's name.
 */
export function validateCheckpoint(spec: ModelSpec, ckpt: Checkpoint): void {
  for (const [name, shape] of expectedTensors(spec)) {
    const info = ckpt.get(name);
    if (info.shape.length !== shape.length || info.shape.some((d, i) => d !== shape[i])) {
      throw new UnsupportedModelError(
        `tensor ${name} in ${ckpt.location} has shape [${info.shape.join(', ')}], but config.json implies [${shape.join(', ')}]`,
      );
    }
    if (!GPU_FORMAT[info.dtype]) {
      throw new UnsupportedModelError(
        `tensor ${name} in ${ckpt.location} has dtype ${info.dtype}; expected F32, F16 or BF16`,
      );
    }
  }
}

/** Streams every weight to the GPU (the checkpoint must have passed validateCheckpoint). */
export async function loadWeights(
  ctx: GpuContext,
  spec: ModelSpec,
  ckpt: Checkpoint,
  onProgress?: (p: LoadProgress) => void,
): Promise<ModelWeights> {
  const totalBytes = [...expectedTensors(spec).keys()].reduce((s, n) => s + ckpt.get(n).byteLength, 0);
  let loadedBytes = 0;
  const tick = (info: TensorInfo, bytes: number) => {
    loadedBytes += bytes;
    onProgress?.({ tensor: info.name, loadedBytes, totalBytes });
  };
  // Everything uploaded so far, freed if a later tensor fails (a truncated shard, device OOM).
  const created: GPUBuffer[] = [];
  const track = (b: GPUBuffer) => (created.push(b), b);
  const matrix = (name: string) => uploadMatrix(ctx, ckpt, ckpt.get(name), tick, track);
  const vector = (name: string) => uploadVector(ctx, ckpt, ckpt.get(name), tick, track);
  const linear = async (prefix: string, hasBias: boolean): Promise<LinearWeights> => {
    const weight = await matrix(`${prefix}.weight`);
    return hasBias ? { weight, bias: await vector(`${prefix}.bias`) } : { weight };
  };

  try {
    const embed = await matrix(EMBED_TOKENS);
    const layers: LayerWeights[] = [];
    for (let i = 0; i < spec.numLayers; i++) {
      const n = layerTensorNames(i);
      layers.push({
        inputNorm: await vector(n.inputNorm),
        q: await linear(n.q, spec.qkvBias),
        k: await linear(n.k, spec.qkvBias),
        v: await linear(n.v, spec.qkvBias),
        o: await linear(n.o, spec.oBias),
        postNorm: await vector(n.postNorm),
        gate: await linear(n.gate, spec.mlpBias),
        up: await linear(n.up, spec.mlpBias),
        down: await linear(n.down, spec.mlpBias),
      });
    }
    const finalNorm = await vector(FINAL_NORM);
    const lmHead = spec.tieWordEmbeddings ? embed : await matrix(LM_HEAD);
    return { embed, layers, finalNorm, lmHead };
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
  const freeMatrix = (m: GpuWeight) => m.parts.forEach((p) => free(p.buffer));
  const freeLinear = (l: LinearWeights) => {
    freeMatrix(l.weight);
    free(l.bias);
  };
  freeMatrix(w.embed);
  freeMatrix(w.lmHead);
  free(w.finalNorm);
  for (const l of w.layers) {
    free(l.inputNorm);
    free(l.postNorm);
    [l.q, l.k, l.v, l.o, l.gate, l.up, l.down].forEach(freeLinear);
  }
}

const STORAGE = () => GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC;

/**
 * Uploads a [rows, cols] matrix in its own format, split by rows across buffers that each fit
 * maxStorageBufferBindingSize. writeBuffer needs 4-byte multiples, so bytes that end a chunk off a
 * word boundary are carried into the next write (and the final word is zero-padded).
 */
async function uploadMatrix(
  ctx: GpuContext,
  ckpt: Checkpoint,
  info: TensorInfo,
  tick: (info: TensorInfo, bytes: number) => void,
  track: (b: GPUBuffer) => GPUBuffer,
): Promise<GpuWeight> {
  const format = GPU_FORMAT[info.dtype] as WeightFormat;
  const [rows, cols] = info.shape as [number, number];
  const elemBytes = WEIGHT_FORMAT_BYTES[format];
  const limit = ctx.limits.maxStorageBufferBindingSize;
  const per = rowsPerPart(rows, cols, format, limit);
  if (per === 0) {
    throw new DeviceMemoryError(
      `tensor ${info.name}: one row of ${formatBytes(cols * elemBytes)} does not fit this device's maxStorageBufferBindingSize (${formatBytes(limit)})`,
    );
  }
  const parts: GpuWeight['parts'] = [];
  for (let r = 0; r < rows; r += per) {
    const n = Math.min(per, rows - r);
    const bytes = n * cols * elemBytes;
    const buffer = await ctx.guardAllocation(`tensor ${info.name}`, bytes, () =>
      track(ctx.createBuffer(`${info.name}[${r}:${r + n}]`, bytes, STORAGE())),
    );
    parts.push({ buffer, rowStart: r, rows: n });
  }
  const partBytes = per * cols * elemBytes;
  const queue = ctx.device.queue;
  let carry: Uint8Array<ArrayBuffer> = new Uint8Array(0);
  let carryAt = 0;
  const flush = (pad: boolean) => {
    // Writes whole words of `carry` to the parts they belong to (part boundaries are word-aligned).
    let usable = pad ? Math.ceil(carry.length / 4) * 4 : carry.length & ~3;
    if (pad && usable > carry.length) {
      const padded = new Uint8Array(usable);
      padded.set(carry);
      carry = padded;
    }
    let pos = 0;
    while (pos < usable) {
      const abs = carryAt + pos;
      const partIndex = Math.floor(abs / partBytes);
      const part = parts[partIndex];
      if (!part) break;
      const within = abs - partIndex * partBytes;
      const n = Math.min(usable - pos, part.buffer.size - within);
      queue.writeBuffer(part.buffer, within, carry, pos, n);
      pos += n;
    }
    usable = pos;
    carry = carry.slice(usable);
    carryAt += usable;
  };
  for await (const { bytes } of ckpt.readTensorChunks(info, CHUNK_BYTES)) {
    if (carry.length === 0) carry = bytes as Uint8Array<ArrayBuffer>;
    else {
      const joined = new Uint8Array(carry.length + bytes.length);
      joined.set(carry);
      joined.set(bytes, carry.length);
      carry = joined;
    }
    flush(false);
    tick(info, bytes.length);
  }
  flush(true);
  ctx.assertAlive();
  return { name: info.name, format, rows, cols, parts };
}

/** Norm weights and biases: small, so decoded to f32 on the CPU (one kernel format for them). */
async function uploadVector(
  ctx: GpuContext,
  ckpt: Checkpoint,
  info: TensorInfo,
  tick: (info: TensorInfo, bytes: number) => void,
  track: (b: GPUBuffer) => GPUBuffer,
): Promise<GPUBuffer> {
  const raw = await ckpt.readTensor(info);
  const values = decodeToFloat32(info.dtype, raw);
  const buffer = await ctx.guardAllocation(`tensor ${info.name}`, values.byteLength, () =>
    track(ctx.createBuffer(info.name, values.byteLength, STORAGE())),
  );
  ctx.device.queue.writeBuffer(buffer, 0, values);
  tick(info, raw.length);
  return buffer;
}
