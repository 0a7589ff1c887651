/**
 * Float tensors to the GPU, streamed: matrices in the tiled layout (shaders/common/tiled.wgsl),
 * read 8 rows at a time and written a batch of tiles at a time, so the JS heap never holds more
 * than one chunk of a shard; vectors (norms, biases) decoded to f32.
 */
import { DeviceMemoryError, UnsupportedModelError } from '../errors.js';
import { formatBytes, storageUsage } from '../gpu/device.js';
import { decodeToFloat32, DTYPE_BYTES, type SafetensorsDtype } from '../io/dtype.js';
import type { Checkpoint } from '../io/safetensors-checkpoint.js';
import type { TensorInfo } from '../io/safetensors.js';
import {
  packTile,
  partBytes,
  rowsPerPart,
  tileBytes,
  TILE_ROWS,
  type GpuWeight,
  type WeightFormat,
  type WeightPart,
} from '../kernels/tiled.js';
import type { LoadContext } from './source.js';

/** Upload chunk size: big enough to amortize writeBuffer, small enough to keep the heap flat. */
export const CHUNK_BYTES = 8 << 20;

const GPU_FORMAT: Partial<Record<SafetensorsDtype, WeightFormat>> = { F32: 'f32', F16: 'f16', BF16: 'bf16' };

/** The GPU weight format of a checkpoint dtype, undefined when matrices of it cannot be stored. */
export function floatFormat(dtype: SafetensorsDtype): WeightFormat | undefined {
  return GPU_FORMAT[dtype];
}

/**
 * GPU bytes of a checkpoint tensor read in float: matrices tiled (rows padded to whole 8-row
 * tiles, rows to whole 16-byte words, 16-bit formats kept), vectors as f32.
 */
export function floatTensorBytes(shape: readonly number[], dtype: SafetensorsDtype): number {
  if (shape.length === 2) {
    const [rows, cols] = shape as [number, number];
    return Math.ceil(rows / 8) * 8 * Math.ceil((cols * DTYPE_BYTES[dtype]) / 16) * 16;
  }
  return shape.reduce((a, b) => a * b, 1) * 4;
}

/** Hands out a tensor's bytes a whole number of rows at a time, reading it in bounded chunks. */
class RowReader implements RowSource {
  private readonly chunks: AsyncIterator<{ bytes: Uint8Array }>;
  private buf: Uint8Array = new Uint8Array(0);
  readonly rowBytes: number;
  readonly rows: number;

  constructor(
    ckpt: Checkpoint,
    readonly info: TensorInfo,
    private readonly tick: (info: TensorInfo, bytes: number) => void,
    /** The first row read (a row range of a fused tensor); rows counts from there. */
    firstRow = 0,
  ) {
    const all = info.shape[0] as number;
    this.rowBytes = info.byteLength / all;
    this.rows = all - firstRow;
    this.chunks = ckpt.readTensorChunks(info, CHUNK_BYTES, firstRow * this.rowBytes)[Symbol.asyncIterator]();
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

/** What the tile packer takes rows from. */
interface RowSource {
  readonly rowBytes: number;
  readonly rows: number;
  take(n: number): Promise<Uint8Array>;
}

/** The first `rows` rows of a reader (the gate half of a stored [gate; up]). */
class ReadLimit implements RowSource {
  constructor(
    private readonly reader: RowReader,
    readonly rows: number,
  ) {}
  get rowBytes(): number {
    return this.reader.rowBytes;
  }
  take(n: number): Promise<Uint8Array> {
    return this.reader.take(n);
  }
}

/**
 * Uploads the checkpoint matrices `tensors` as one GPU weight `name` in the tiled layout, split
 * by whole tiles across buffers that each fit maxStorageBufferBindingSize.
 *   - `stack`: stacked by rows (q, k, v fused into one projection);
 *   - `swiglu`: gate and up, their tiles interleaved for the fused epilogue: two tensors, or one
 *     stored [gate; up] (Phi-3's gate_up_proj), read as its two row halves.
 * All tensors must share one dtype and column count. `track` receives each buffer made.
 */
export async function uploadMatrix(
  lc: LoadContext,
  name: string,
  tensors: readonly string[],
  mode: 'stack' | 'swiglu' = 'stack',
  track: (b: GPUBuffer) => GPUBuffer = (b) => lc.track(b),
): Promise<GpuWeight> {
  const { ctx, ckpt } = lc;
  const infos = tensors.map((t) => ckpt.get(t));
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
  const stacked = fused !== undefined && infos.length === 1;
  if (stacked && (first.shape[0] as number) % 2 !== 0) {
    throw new UnsupportedModelError(`${name}: ${first.name} has ${first.shape[0]} rows, not [gate; up]`);
  }
  if (fused && !stacked && (infos.length !== 2 || infos[0]?.shape[0] !== infos[1]?.shape[0])) {
    throw new UnsupportedModelError(`${name}: gate and up projections must have the same shape`);
  }
  const rows = stacked
    ? (first.shape[0] as number) / 2
    : fused
      ? (first.shape[0] as number)
      : infos.reduce((a, t) => a + (t.shape[0] as number), 0);
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

  const tick = (i: TensorInfo, b: number) => lc.tick(i, b);
  // A stored [gate; up] is read as two row ranges (the gate's reader stops within a chunk of the
  // middle).
  const readers: RowSource[] = stacked
    ? [new ReadLimit(new RowReader(ckpt, first, tick), rows), new RowReader(ckpt, first, tick, rows)]
    : infos.map((info) => new RowReader(ckpt, info, tick));
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
    const [gate, up] = readers as [RowSource, RowSource];
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
        while (left === 0) left = (readers[++reader] as RowSource).rows;
        const take = Math.min(left, n - tileRows.length);
        tileRows.push(...split(await (readers[reader] as RowSource).take(take)));
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
export async function uploadVector(
  lc: LoadContext,
  tensors: readonly string[],
  /** Applied to each decoded tensor (a norm's (1 + w)). */
  transform: (v: Float32Array) => Float32Array = (v) => v,
): Promise<GPUBuffer> {
  const { ctx, ckpt } = lc;
  const decoded: Float32Array[] = [];
  for (const name of tensors) {
    const info = ckpt.get(name);
    const raw = await ckpt.readTensor(info);
    decoded.push(transform(decodeToFloat32(info.dtype, raw)));
    lc.tick(info, raw.length);
  }
  const values = new Float32Array(decoded.reduce((a, d) => a + d.length, 0));
  let at = 0;
  for (const d of decoded) {
    values.set(d, at);
    at += d.length;
  }
  const label = tensors.join('+');
  const buffer = await ctx.guardAllocation(`tensor ${label}`, values.byteLength, () =>
    lc.track(ctx.createBuffer(label, values.byteLength, storageUsage())),
  );
  ctx.device.queue.writeBuffer(buffer, 0, values);
  return buffer;
}
