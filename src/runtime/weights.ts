/**
 * Model weights on the GPU, streamed from a checkpoint one tensor at a time (and each tensor in
 * bounded chunks), so the JS heap never holds more than one chunk of a shard.
 */
import { DeviceMemoryError, UnsupportedModelError } from '../errors.js';
import { formatBytes, type GpuContext } from '../gpu/device.js';
import { decodeToFloat32, DTYPE_BYTES, type SafetensorsDtype } from '../io/dtype.js';
import type { Checkpoint, TensorInfo } from '../io/safetensors.js';
import {
  packTile,
  partBytes,
  rowsPerPart,
  tileBytes,
  TILE_ROWS,
  type GpuWeight,
  type WeightFormat,
  type WeightPart,
} from '../kernels/weight.js';
import { EMBED_TOKENS, FINAL_NORM, LM_HEAD, layerTensorNames, type ModelSpec } from './model-spec.js';

export interface LinearWeights {
  weight: GpuWeight;
  /** [rows] f32, when the projection has a bias */
  bias?: GPUBuffer;
}

export interface LayerWeights {
  /** [hidden] f32 */ inputNorm: GPUBuffer;
  /** q, k and v stacked: [(heads + 2·kvHeads)·headDim, hidden], one matmul per step */ qkv: LinearWeights;
  /** [hidden, heads·headDim] */ o: LinearWeights;
  /** [hidden] f32 */ postNorm: GPUBuffer;
  /** gate and up fused for the SwiGLU epilogue: [intermediate] units of [hidden] */ gateUp: LinearWeights;
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
    if (shape.length === 2) {
      // Tiled: rows padded to whole 8-row tiles, rows to whole 16-byte words.
      const [rows, cols] = shape as [number, number];
      total += Math.ceil(rows / 8) * 8 * Math.ceil((cols * DTYPE_BYTES[info.dtype]) / 16) * 16;
    } else total += elems * 4;
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
  const matrix = (name: string, parts: string[], mode: 'stack' | 'swiglu' = 'stack') =>
    uploadMatrix(
      ctx,
      ckpt,
      name,
      parts.map((p) => ckpt.get(p)),
      mode,
      tick,
      track,
    );
  const vector = (names: string[]) =>
    uploadVector(
      ctx,
      ckpt,
      names.map((n) => ckpt.get(n)),
      tick,
      track,
    );
  const linear = async (
    name: string,
    prefixes: string[],
    hasBias: boolean,
    mode: 'stack' | 'swiglu' = 'stack',
  ): Promise<LinearWeights> => {
    const weight = await matrix(
      name,
      prefixes.map((p) => `${p}.weight`),
      mode,
    );
    return hasBias ? { weight, bias: await vector(prefixes.map((p) => `${p}.bias`)) } : { weight };
  };

  try {
    const embed = await matrix(EMBED_TOKENS, [EMBED_TOKENS]);
    const layers: LayerWeights[] = [];
    for (let i = 0; i < spec.numLayers; i++) {
      const n = layerTensorNames(i);
      layers.push({
        inputNorm: await vector([n.inputNorm]),
        qkv: await linear(`model.layers.${i}.self_attn.qkv_proj`, [n.q, n.k, n.v], spec.qkvBias),
        o: await linear(n.o, [n.o], spec.oBias),
        postNorm: await vector([n.postNorm]),
        gateUp: await linear(`model.layers.${i}.mlp.gate_up_proj`, [n.gate, n.up], spec.mlpBias, 'swiglu'),
        down: await linear(n.down, [n.down], spec.mlpBias),
      });
    }
    const finalNorm = await vector([FINAL_NORM]);
    const lmHead = spec.tieWordEmbeddings ? embed : await matrix(LM_HEAD, [LM_HEAD]);
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
    [l.qkv, l.o, l.gateUp, l.down].forEach(freeLinear);
  }
}

const STORAGE = () => GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC;

/** Hands out a tensor's bytes a whole number of rows at a time, reading it in bounded chunks. */
class RowReader {
  private readonly chunks: AsyncIterator<{ bytes: Uint8Array }>;
  private buf: Uint8Array = new Uint8Array(0);
  readonly rowBytes: number;
  readonly rows: number;

  constructor(
    ckpt: Checkpoint,
    readonly info: TensorInfo,
    private readonly tick: (info: TensorInfo, bytes: number) => void,
  ) {
    this.rows = info.shape[0] as number;
    this.rowBytes = info.byteLength / this.rows;
    this.chunks = ckpt.readTensorChunks(info, CHUNK_BYTES)[Symbol.asyncIterator]();
  }

  /** The next `n` rows, row-major. */
  async take(n: number): Promise<Uint8Array> {
    const want = n * this.rowBytes;
    while (this.buf.length < want) {
      const next = await this.chunks.next();
      if (next.done) throw new UnsupportedModelError(`tensor ${this.info.name} ended early`);
      this.tick(this.info, next.value.bytes.length);
      const joined = new Uint8Array(this.buf.length + next.value.bytes.length);
      joined.set(this.buf);
      joined.set(next.value.bytes, this.buf.length);
      this.buf = joined;
    }
    const out = this.buf.subarray(0, want);
    this.buf = this.buf.subarray(want);
    return out;
  }
}

/**
 * Uploads one matrix in the tiled layout (see shaders/common/tiled.wgsl), streamed: rows are read
 * 8 at a time, packed into tiles on the CPU and written a batch of tiles at a time, split by whole
 * tiles across buffers that each fit maxStorageBufferBindingSize.
 *   - `stack`: several tensors stacked by rows (q, k, v fused into one projection);
 *   - `swiglu`: exactly two tensors, gate and up, their tiles interleaved for the fused epilogue.
 * All tensors must share one dtype and column count.
 */
async function uploadMatrix(
  ctx: GpuContext,
  ckpt: Checkpoint,
  name: string,
  infos: TensorInfo[],
  mode: 'stack' | 'swiglu',
  tick: (info: TensorInfo, bytes: number) => void,
  track: (b: GPUBuffer) => GPUBuffer,
): Promise<GpuWeight> {
  const first = infos[0] as TensorInfo;
  const format = GPU_FORMAT[first.dtype] as WeightFormat;
  const cols = first.shape[1] as number;
  for (const info of infos) {
    if (info.dtype !== first.dtype || info.shape[1] !== cols) {
      throw new UnsupportedModelError(
        `tensors ${first.name} (${first.dtype}, ${cols} columns) and ${info.name} (${info.dtype}, ${info.shape[1]} columns) must share a dtype and a column count to be fused`,
      );
    }
  }
  const fused = mode === 'swiglu' ? ('swiglu' as const) : undefined;
  if (fused && (infos.length !== 2 || infos[0]?.shape[0] !== infos[1]?.shape[0])) {
    throw new UnsupportedModelError(`${name}: gate and up projections must have the same shape`);
  }
  const rows = fused ? (first.shape[0] as number) : infos.reduce((a, t) => a + (t.shape[0] as number), 0);
  const limit = ctx.limits.maxStorageBufferBindingSize;
  const per = rowsPerPart(rows, cols, format, limit, fused);
  if (per === 0) {
    throw new DeviceMemoryError(
      `tensor ${name}: one ${TILE_ROWS}-row tile of ${formatBytes(tileBytes(cols, format))} does not fit this device's maxStorageBufferBindingSize (${formatBytes(limit)})`,
    );
  }
  const parts: GpuWeight['parts'] = [];
  for (let r = 0; r < rows; r += per) {
    const n = Math.min(per, rows - r);
    const bytes = partBytes(n, cols, format, fused);
    const buffer = await ctx.guardAllocation(`tensor ${name}`, bytes, () =>
      track(ctx.createBuffer(`${name}[${r}:${r + n}]`, bytes, STORAGE())),
    );
    parts.push({ buffer, rowStart: r, rows: n });
  }

  const readers = infos.map((info) => new RowReader(ckpt, info, tick));
  const rowBytes = readers[0]?.rowBytes as number;
  const tb = tileBytes(cols, format);
  const queue = ctx.device.queue;
  // Tiles are written in batches of about CHUNK_BYTES; a batch never spans two parts.
  const batchTiles = Math.max(1, Math.floor(CHUNK_BYTES / tb));
  let batch: Uint8Array[] = [];
  let batchPart = -1;
  let batchAt = 0;
  const flush = () => {
    if (batch.length === 0) return;
    const joined = new Uint8Array(batch.length * tb);
    batch.forEach((t, i) => joined.set(t, i * tb));
    queue.writeBuffer((parts[batchPart] as WeightPart).buffer, batchAt, joined);
    batch = [];
  };
  let storedTile = 0;
  const emit = (tile: Uint8Array, logicalRow: number) => {
    const part = Math.floor(logicalRow / per);
    const tilesPerPart = (per / TILE_ROWS) * (fused ? 2 : 1);
    if (part !== batchPart || batch.length >= batchTiles) {
      flush();
      batchPart = part;
      batchAt = (storedTile - part * tilesPerPart) * tb;
    }
    batch.push(tile);
    storedTile++;
  };
  const split = (bytes: Uint8Array) =>
    Array.from({ length: bytes.length / rowBytes }, (_, i) =>
      bytes.subarray(i * rowBytes, (i + 1) * rowBytes),
    );
  if (fused) {
    const [gate, up] = readers as [RowReader, RowReader];
    for (let r = 0; r < rows; r += TILE_ROWS) {
      const n = Math.min(TILE_ROWS, rows - r);
      emit(packTile(split(await gate.take(n)), cols, format), r);
      emit(packTile(split(await up.take(n)), cols, format), r);
    }
  } else {
    // Rows in stacking order; a tile may take its rows from two tensors.
    let reader = 0;
    let left = readers[0]?.rows ?? 0;
    for (let r = 0; r < rows; r += TILE_ROWS) {
      const n = Math.min(TILE_ROWS, rows - r);
      const tileRows: Uint8Array[] = [];
      while (tileRows.length < n) {
        while (left === 0) left = (readers[++reader] as RowReader).rows;
        const take = Math.min(left, n - tileRows.length);
        tileRows.push(...split(await (readers[reader] as RowReader).take(take)));
        left -= take;
      }
      emit(packTile(tileRows, cols, format), r);
    }
  }
  flush();
  ctx.assertAlive();
  const weight: GpuWeight = { name, format, rows, cols, parts };
  if (fused) weight.fused = fused;
  return weight;
}

/**
 * Norm weights and biases: small, so decoded to f32 on the CPU (one kernel format for them);
 * several tensors are concatenated (the biases of a fused projection).
 */
async function uploadVector(
  ctx: GpuContext,
  ckpt: Checkpoint,
  infos: TensorInfo[],
  tick: (info: TensorInfo, bytes: number) => void,
  track: (b: GPUBuffer) => GPUBuffer,
): Promise<GPUBuffer> {
  const decoded: Float32Array[] = [];
  for (const info of infos) {
    const raw = await ckpt.readTensor(info);
    decoded.push(decodeToFloat32(info.dtype, raw));
    tick(info, raw.length);
  }
  const values = new Float32Array(decoded.reduce((a, d) => a + d.length, 0));
  let at = 0;
  for (const d of decoded) {
    values.set(d, at);
    at += d.length;
  }
  const label = infos.map((i) => i.name).join('+');
  const buffer = await ctx.guardAllocation(`tensor ${label}`, values.byteLength, () =>
    track(ctx.createBuffer(label, values.byteLength, STORAGE())),
  );
  ctx.device.queue.writeBuffer(buffer, 0, values);
  return buffer;
}
