/**
 * Model weights on the GPU, streamed from a checkpoint one tensor at a time (and each tensor in
 * bounded chunks), so the JS heap never holds more than one chunk of a shard.
 */
import { DeviceMemoryError, UnsupportedModelError } from '../errors.js';
import { formatBytes, storageUsage, type GpuContext } from '../gpu/device.js';
import { decodeToFloat32, DTYPE_BYTES, type SafetensorsDtype } from '../io/dtype.js';
import type { TensorInfo } from '../io/safetensors.js';
import type { Checkpoint } from '../io/safetensors-checkpoint.js';
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
import { isQ4Weight, type Linear, type MatrixWeight } from '../kernels/linear.js';
import type { Q4GpuWeight } from '../kernels/matmul-q4.js';
export type { MatrixWeight } from '../kernels/linear.js';
import { fusedProjectionNames, LM_HEAD_PREFIX, q4TensorSpecs } from '../quant/kiln-format.js';
import { awqToQ4 } from '../quant/awq.js';
import { gptqToQ4 } from '../quant/gptq.js';
import type { ImportedQ4, ImportedQuantConfig } from '../quant/import-config.js';
import { stackQ4, type Q4Format } from '../quant/q4.js';
import { quantizeOnGpu } from '../kernels/quantize-q4.js';
import { EMBED_TOKENS, FINAL_NORM, LM_HEAD, layerTensorNames, type ModelSpec } from '../model/spec.js';
import { checkQ4Tensor, freeQ4Weight, q4MatrixBytes, uploadKilnQ4, uploadQ4Matrix } from './q4.js';

/**
 * How the projection matrices reach the GPU:
 *   - 'float': as stored (f32, f16 or bf16), the float matmul;
 *   - 'quantize': a float checkpoint quantized to int4 while loading (round-to-nearest);
 *   - 'kiln': a Kiln int4 folder (src/quant/kiln-format.ts), already packed;
 *   - 'import': a GPTQ or AWQ folder, converted to Kiln's layout on the CPU while loading.
 * Embeddings always stay in float; the LM head is int4 only when `lmHead` is set.
 */
export type WeightQuant =
  | { kind: 'float' }
  | { kind: 'quantize'; format: Q4Format; lmHead: boolean }
  | { kind: 'kiln'; format: Q4Format; lmHead: boolean }
  | { kind: 'import'; config: ImportedQuantConfig };

export const FLOAT_WEIGHTS: WeightQuant = { kind: 'float' };

/** A projection: its weight (float or int4), bias and int4 column permutation. */
export type LinearWeights = Linear;

export interface LayerWeights {
  /** [hidden] f32 */ inputNorm: GPUBuffer;
  /** q, k and v stacked: [(heads + 2·kvHeads)·headDim, hidden], one matmul per step */ qkv: LinearWeights;
  /** [hidden, heads·headDim] */ o: LinearWeights;
  /** [hidden] f32 */ postNorm: GPUBuffer;
  /** gate and up fused for the SwiGLU epilogue: [intermediate] units of [hidden] */ gateUp: LinearWeights;
  /** [hidden, intermediate] */ down: LinearWeights;
}

export interface ModelWeights {
  /** [vocab, hidden]; int4 only when it is a tied LM head quantized with the rest */ embed: MatrixWeight;
  layers: LayerWeights[];
  /** [hidden] f32 */ finalNorm: GPUBuffer;
  /** [vocab, hidden]; the same object as `embed` when embeddings are tied and float */ lmHead: MatrixWeight;
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

/** Every float tensor the model reads, with the shape it must have. */
export function expectedTensors(spec: ModelSpec, quant: WeightQuant = FLOAT_WEIGHTS): Map<string, number[]> {
  const { hiddenSize: h, intermediateSize: inter, numHeads, numKvHeads, headDim, vocabSize } = spec;
  const qDim = numHeads * headDim;
  const kvDim = numKvHeads * headDim;
  // Int4 folders store the projections' weights as int4 tensors (see `q4Projections` and
  // `importedTensors`).
  const packed = quant.kind === 'kiln' || quant.kind === 'import';
  const t = new Map<string, number[]>();
  // A Kiln folder with a quantized tied head keeps only the int4 table (lm_head.q4_*).
  if (!(quant.kind === 'kiln' && quant.lmHead && spec.tieWordEmbeddings)) t.set(EMBED_TOKENS, [vocabSize, h]);
  for (let i = 0; i < spec.numLayers; i++) {
    const n = layerTensorNames(i);
    t.set(n.inputNorm, [h]);
    if (!packed) {
      t.set(`${n.q}.weight`, [qDim, h]);
      t.set(`${n.k}.weight`, [kvDim, h]);
      t.set(`${n.v}.weight`, [kvDim, h]);
      t.set(`${n.o}.weight`, [h, qDim]);
    }
    if (spec.qkvBias) {
      t.set(`${n.q}.bias`, [qDim]);
      t.set(`${n.k}.bias`, [kvDim]);
      t.set(`${n.v}.bias`, [kvDim]);
    }
    if (spec.oBias) t.set(`${n.o}.bias`, [h]);
    t.set(n.postNorm, [h]);
    if (!packed) {
      t.set(`${n.gate}.weight`, [inter, h]);
      t.set(`${n.up}.weight`, [inter, h]);
      t.set(`${n.down}.weight`, [h, inter]);
    }
    if (spec.mlpBias) {
      t.set(`${n.gate}.bias`, [inter]);
      t.set(`${n.up}.bias`, [inter]);
      t.set(`${n.down}.bias`, [h]);
    }
  }
  t.set(FINAL_NORM, [h]);
  const headQuantized =
    (quant.kind === 'kiln' && quant.lmHead) ||
    (quant.kind === 'import' && quant.config.method === 'gptq' && quant.config.lmHead);
  if (!spec.tieWordEmbeddings && !headQuantized) t.set(LM_HEAD, [vocabSize, h]);
  return t;
}

/** The int4 projections of a model: fused name prefix and [rows, cols]. */
export function q4Projections(
  spec: ModelSpec,
  lmHead: boolean,
): { prefix: string; rows: number; cols: number }[] {
  const { hiddenSize: h, intermediateSize: inter, numHeads, numKvHeads, headDim, vocabSize } = spec;
  const qDim = numHeads * headDim;
  const out: { prefix: string; rows: number; cols: number }[] = [];
  for (let i = 0; i < spec.numLayers; i++) {
    const f = fusedProjectionNames(i);
    out.push(
      { prefix: f.qkv, rows: qDim + 2 * numKvHeads * headDim, cols: h },
      { prefix: f.o, rows: h, cols: qDim },
      { prefix: f.gateUp, rows: 2 * inter, cols: h },
      { prefix: f.down, rows: h, cols: inter },
    );
  }
  if (lmHead) out.push({ prefix: LM_HEAD_PREFIX, rows: vocabSize, cols: h });
  return out;
}

/** Bytes the weights will take on the GPU (16-bit stays 16-bit, norms and biases become f32). */
export function weightBytes(spec: ModelSpec, ckpt: Checkpoint, quant: WeightQuant = FLOAT_WEIGHTS): number {
  let total = 0;
  const q4 = quant.kind === 'float' ? null : quant;
  // Float tensors that become int4 while loading count at their int4 size.
  const quantized = new Set<string>();
  if (q4?.kind === 'quantize') {
    for (let i = 0; i < spec.numLayers; i++) {
      const n = layerTensorNames(i);
      for (const p of [n.q, n.k, n.v, n.o, n.gate, n.up, n.down]) quantized.add(`${p}.weight`);
    }
    // A tied head quantized with the rest is also the embedding table: one int4 copy in all.
    if (q4.lmHead) quantized.add(spec.tieWordEmbeddings ? EMBED_TOKENS : LM_HEAD);
  }
  for (const [name, shape] of expectedTensors(spec, quant)) {
    const info = ckpt.get(name);
    const elems = shape.reduce((a, b) => a * b, 1);
    if (shape.length === 2) {
      const [rows, cols] = shape as [number, number];
      if (q4?.kind === 'quantize' && quantized.has(name)) total += q4MatrixBytes(rows, cols, q4.format);
      // Tiled: rows padded to whole 8-row tiles, rows to whole 16-byte words.
      else total += Math.ceil(rows / 8) * 8 * Math.ceil((cols * DTYPE_BYTES[info.dtype]) / 16) * 16;
    } else total += elems * 4;
  }
  if (q4?.kind === 'kiln') {
    for (const p of q4Projections(spec, q4.lmHead)) total += q4MatrixBytes(p.rows, p.cols, q4.format);
  }
  if (q4?.kind === 'import') {
    // Estimated with group 32 and zero points (the largest the conversion can produce).
    const f: Q4Format = { groupSize: 32, symmetric: false, scaleType: 'f16' };
    for (const p of q4Projections(spec, false)) total += q4MatrixBytes(p.rows, p.cols, f);
  }
  return total;
}

/**
 * Checks every tensor exists with the right shape and dtype before anything is allocated, so a
 * bad checkpoint fails fast with the tensor's name.
 */
export function validateCheckpoint(
  spec: ModelSpec,
  ckpt: Checkpoint,
  quant: WeightQuant = FLOAT_WEIGHTS,
): void {
  for (const [name, shape] of expectedTensors(spec, quant)) {
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
  if (quant.kind === 'kiln') {
    for (const p of q4Projections(spec, quant.lmHead)) {
      for (const t of q4TensorSpecs(p.prefix, p.rows, p.cols, quant.format)) {
        checkQ4Tensor(ckpt, t.name, t.dtype, t.shape);
      }
    }
  } else if (quant.kind === 'import') {
    for (const name of importedTensorNames(spec, quant.config)) ckpt.get(name);
  } else if (quant.kind === 'quantize') {
    for (const p of q4Projections(spec, false)) {
      if (p.cols % quant.format.groupSize !== 0) {
        throw new UnsupportedModelError(
          `${p.prefix}: K = ${p.cols} is not a multiple of the int4 group size ${quant.format.groupSize}; pick a group size that divides it`,
        );
      }
    }
  }
}

/** Streams every weight to the GPU (the checkpoint must have passed validateCheckpoint). */
export async function loadWeights(
  ctx: GpuContext,
  spec: ModelSpec,
  ckpt: Checkpoint,
  onProgress?: (p: LoadProgress) => void,
  quant: WeightQuant = FLOAT_WEIGHTS,
): Promise<ModelWeights> {
  const names = [...expectedTensors(spec, quant).keys()];
  if (quant.kind === 'kiln') {
    for (const p of q4Projections(spec, quant.lmHead)) {
      for (const t of q4TensorSpecs(p.prefix, p.rows, p.cols, quant.format)) names.push(t.name);
    }
  }
  if (quant.kind === 'import') names.push(...importedTensorNames(spec, quant.config));
  const totalBytes = names.reduce((s, n) => s + ckpt.get(n).byteLength, 0);
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
  /**
   * Float tensors `parts` (stacked by rows) quantized to int4 while loading: uploaded in their
   * tiled float layout, quantized on the GPU (src/quant/quantize-gpu.ts, bit-identical to the CPU
   * round-to-nearest) and the float copy freed, so only one matrix is ever held twice.
   */
  const quantized = async (name: string, parts: string[], format: Q4Format): Promise<Q4GpuWeight> => {
    const temp: GPUBuffer[] = [];
    try {
      const float = await uploadMatrix(
        ctx,
        ckpt,
        name,
        parts.map((p) => ckpt.get(p)),
        'stack',
        tick,
        (b) => (temp.push(b), b),
      );
      return await quantizeOnGpu(ctx, float, format, { name, track });
    } finally {
      for (const b of temp) ctx.destroyBuffer(b);
    }
  };
  /** GPTQ/AWQ projections `prefixes` converted to Kiln's layout, stacked by rows. */
  const imported = async (name: string, prefixes: string[], config: ImportedQuantConfig): Promise<Linear> => {
    const list: ImportedQ4[] = [];
    for (const p of prefixes) list.push(await importProjection(ckpt, spec, p, config, tick));
    const perm = list[0]?.perm;
    for (const q of list) {
      if (!samePerm(q.perm, perm)) {
        throw new UnsupportedModelError(
          `${name}: the act-order column orders (g_idx) of ${prefixes.join(', ')} differ, so they cannot share one matmul input`,
        );
      }
    }
    const weight = await uploadQ4Matrix(ctx, name, stackQ4(list.map((q) => q.matrix)), track);
    if (!perm) return { weight };
    const buf = await ctx.guardAllocation(`tensor ${name}.perm`, perm.byteLength, () =>
      track(ctx.createBuffer(`${name}.perm`, perm.byteLength, storageUsage())),
    );
    ctx.device.queue.writeBuffer(buf, 0, perm as Uint32Array<ArrayBuffer>);
    return { weight, perm: buf };
  };
  const projection = async (name: string, prefixes: string[], mode: 'stack' | 'swiglu'): Promise<Linear> => {
    const weights = prefixes.map((p) => `${p}.weight`);
    if (quant.kind === 'float') return { weight: await matrix(name, weights, mode) };
    if (quant.kind === 'quantize') return { weight: await quantized(name, weights, quant.format) };
    if (quant.kind === 'import') return imported(name, prefixes, quant.config);
    const shape = q4Projections(spec, false).find((p) => p.prefix === name);
    if (!shape) throw new RangeError(`no int4 projection named ${name}`);
    return { weight: await uploadKilnQ4(ctx, ckpt, name, shape.rows, shape.cols, quant.format, tick, track) };
  };
  const linear = async (
    name: string,
    prefixes: string[],
    hasBias: boolean,
    mode: 'stack' | 'swiglu' = 'stack',
  ): Promise<LinearWeights> => {
    const lin = await projection(name, prefixes, mode);
    return hasBias ? { ...lin, bias: await vector(prefixes.map((p) => `${p}.bias`)) } : lin;
  };

  // A tied LM head in int4 serves as the embedding table too (embed_q4 gathers from it).
  const headQ4 =
    (quant.kind === 'kiln' || quant.kind === 'quantize') && quant.lmHead && spec.tieWordEmbeddings;
  try {
    let embed: MatrixWeight | null = headQ4 ? null : await matrix(EMBED_TOKENS, [EMBED_TOKENS]);
    const layers: LayerWeights[] = [];
    for (let i = 0; i < spec.numLayers; i++) {
      const n = layerTensorNames(i);
      const f = fusedProjectionNames(i);
      layers.push({
        inputNorm: await vector([n.inputNorm]),
        qkv: await linear(f.qkv, [n.q, n.k, n.v], spec.qkvBias),
        o: await linear(f.o, [n.o], spec.oBias),
        postNorm: await vector([n.postNorm]),
        gateUp: await linear(f.gateUp, [n.gate, n.up], spec.mlpBias, 'swiglu'),
        down: await linear(f.down, [n.down], spec.mlpBias),
      });
    }
    const finalNorm = await vector([FINAL_NORM]);
    let lmHead: MatrixWeight;
    const headSource = spec.tieWordEmbeddings ? EMBED_TOKENS : LM_HEAD;
    if (quant.kind === 'kiln' && quant.lmHead) {
      lmHead = await uploadKilnQ4(
        ctx,
        ckpt,
        LM_HEAD_PREFIX,
        spec.vocabSize,
        spec.hiddenSize,
        quant.format,
        tick,
        track,
      );
    } else if (quant.kind === 'import' && quant.config.method === 'gptq' && quant.config.lmHead) {
      const head = await imported(LM_HEAD_PREFIX, [LM_HEAD_PREFIX], quant.config);
      if (head.perm) throw new UnsupportedModelError('an act-order (g_idx) lm_head is not supported');
      lmHead = head.weight;
    } else if (quant.kind === 'quantize' && quant.lmHead) {
      lmHead = await quantized(LM_HEAD_PREFIX, [headSource], quant.format);
    } else lmHead = spec.tieWordEmbeddings ? (embed as MatrixWeight) : await matrix(LM_HEAD, [LM_HEAD]);
    embed ??= lmHead;
    return { embed, layers, finalNorm, lmHead };
  } catch (e) {
    for (const b of created) ctx.destroyBuffer(b);
    throw e;
  }
}

/** The GPTQ/AWQ tensors of every quantized projection (HF names, unfused). */
function importedTensorNames(spec: ModelSpec, config: ImportedQuantConfig): string[] {
  const names: string[] = [];
  const add = (p: string) => {
    names.push(`${p}.qweight`, `${p}.qzeros`, `${p}.scales`);
    if (config.method === 'gptq' && config.descAct) names.push(`${p}.g_idx`);
  };
  for (let i = 0; i < spec.numLayers; i++) {
    const n = layerTensorNames(i);
    [n.q, n.k, n.v, n.o, n.gate, n.up, n.down].forEach(add);
  }
  if (config.method === 'gptq' && config.lmHead) add(LM_HEAD_PREFIX);
  return names;
}

/** Reads one GPTQ/AWQ projection's tensors and converts them (exactly) to Kiln's int4 matrix. */
async function importProjection(
  ckpt: Checkpoint,
  spec: ModelSpec,
  prefix: string,
  config: ImportedQuantConfig,
  tick: (info: TensorInfo, bytes: number) => void,
): Promise<ImportedQ4> {
  const read = async (suffix: string) => {
    const name = `${prefix}.${suffix}`;
    if (!ckpt.has(name)) return undefined;
    const info = ckpt.get(name);
    const raw = await ckpt.readTensor(info);
    tick(info, raw.length);
    // A copy: the bytes may sit at any offset of a shared buffer, and typed arrays need alignment.
    return { info, bytes: raw.slice() };
  };
  const ints = (t: { info: TensorInfo; bytes: Uint8Array } | undefined) => {
    if (!t) return undefined;
    if (t.info.dtype !== 'I32' && t.info.dtype !== 'U32') {
      throw new UnsupportedModelError(
        `tensor ${t.info.name} in ${ckpt.location} is ${t.info.dtype}; expected I32 packed int4`,
      );
    }
    return new Int32Array(t.bytes.buffer, 0, t.bytes.length / 4);
  };
  const halves = (t: { info: TensorInfo; bytes: Uint8Array } | undefined) => {
    if (!t) return undefined;
    if (t.info.dtype !== 'F16') {
      throw new UnsupportedModelError(
        `tensor ${t.info.name} in ${ckpt.location} is ${t.info.dtype}; expected F16 scales`,
      );
    }
    return new Uint16Array(t.bytes.buffer, 0, t.bytes.length / 2);
  };
  const [qweight, qzeros, scales] = [await read('qweight'), await read('qzeros'), await read('scales')];
  const shape =
    prefix === LM_HEAD_PREFIX
      ? { rows: spec.vocabSize, cols: spec.hiddenSize }
      : projectionShape(spec, prefix);
  const shapes = { qweight: qweight?.info.shape, qzeros: qzeros?.info.shape, scales: scales?.info.shape };
  const definedShapes = Object.fromEntries(Object.entries(shapes).filter(([, v]) => v !== undefined));
  if (config.method === 'awq') {
    return awqToQ4(
      { qweight: ints(qweight), qzeros: ints(qzeros), scales: halves(scales), shapes: definedShapes },
      shape,
      config,
      prefix,
    );
  }
  const gIdx = await read('g_idx');
  return gptqToQ4(
    {
      qweight: ints(qweight),
      qzeros: ints(qzeros),
      scales: halves(scales),
      ...(gIdx ? { gIdx: ints(gIdx) as Int32Array } : {}),
      shapes: { ...definedShapes, ...(gIdx ? { gIdx: gIdx.info.shape } : {}) },
    },
    shape,
    config,
    prefix,
  );
}

/** [rows, cols] of an HF projection (by its name prefix). */
function projectionShape(spec: ModelSpec, prefix: string): { rows: number; cols: number } {
  const shape = expectedTensors(spec).get(`${prefix}.weight`);
  if (!shape) throw new RangeError(`no projection named ${prefix}`);
  return { rows: shape[0] as number, cols: shape[1] as number };
}

function samePerm(a: Uint32Array | undefined, b: Uint32Array | undefined): boolean {
  if (!a || !b) return a === b;
  return a.length === b.length && a.every((v, i) => v === b[i]);
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
    isQ4Weight(m) ? freeQ4Weight(free, m) : m.parts.forEach((p) => free(p.buffer));
  const freeLinear = (l: LinearWeights) => {
    freeMatrix(l.weight);
    free(l.bias);
    free(l.perm);
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
      track(ctx.createBuffer(`${name}[${r}:${r + n}]`, bytes, storageUsage())),
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
    track(ctx.createBuffer(label, values.byteLength, storageUsage())),
  );
  ctx.device.queue.writeBuffer(buffer, 0, values);
  return buffer;
}
