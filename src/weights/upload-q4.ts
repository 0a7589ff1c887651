/**
 * Moves int4 weights to the GPU: packs a Q4Matrix (src/quant/q4.ts) into the kernel layout and
 * uploads it as the Q4GpuWeight that src/kernels/matmul-q4.ts reads, split by whole 8-row tiles
 * so that every part fits maxStorageBufferBindingSize. `uploadQ4Weight` is the plain path (tests,
 * benchmarks); the loader's `uploadQ4Matrix` guards and tracks every allocation.
 */
import { DeviceMemoryError } from '../errors.js';
import { formatBytes, storageUsage, type GpuContext } from '../gpu/device.js';
import type { Q4GpuWeight, Q4WeightPart } from '../kernels/matmul-q4.js';
import { q4TensorSpecs } from '../quant/kiln-format.js';
import {
  packQ4,
  Q4_TILE_ROWS,
  sliceQ4Rows,
  type PackedQ4,
  type Q4Format,
  type Q4Matrix,
} from '../quant/q4.js';
import type { LoadContext } from './source.js';

/** Rows per part (a multiple of 8) so that each of a part's buffers fits `limit`. */
export function q4RowsPerPart(
  rows: number,
  cols: number,
  format: Q4Format,
  limit: number,
  name: string,
): number {
  const widest = Math.max(...q4TensorSpecs(name, rows, cols, format).map((s) => s.tileBytes));
  const tiles = Math.floor(limit / widest);
  if (tiles === 0) {
    throw new DeviceMemoryError(
      `tensor ${name}: one ${Q4_TILE_ROWS}-row int4 tile of ${formatBytes(widest)} does not fit this device's maxStorageBufferBindingSize (${formatBytes(limit)})`,
    );
  }
  return Math.min(rows, tiles * Q4_TILE_ROWS);
}

/** Bytes an int4 [rows, cols] matrix takes on the GPU (codes, scales and zeros, tile-padded). */
export function q4MatrixBytes(rows: number, cols: number, format: Q4Format): number {
  const tiles = Math.ceil(rows / Q4_TILE_ROWS);
  return q4TensorSpecs('', rows, cols, format).reduce((a, s) => a + s.tileBytes * tiles, 0);
}

/** A guarded, tracked storage buffer for the loader. */
export async function allocateQ4(lc: LoadContext, label: string, bytes: number): Promise<GPUBuffer> {
  const { ctx } = lc;
  return ctx.guardAllocation(`tensor ${label}`, bytes, () =>
    lc.track(ctx.createBuffer(label, bytes, storageUsage())),
  );
}

/** Packs (per part) and uploads a matrix quantized or converted on the CPU, for the loader. */
export async function uploadQ4Matrix(lc: LoadContext, name: string, q: Q4Matrix): Promise<Q4GpuWeight> {
  const { ctx } = lc;
  const per = q4RowsPerPart(q.rows, q.cols, q.format, ctx.limits.maxStorageBufferBindingSize, name);
  const parts: Q4WeightPart[] = [];
  for (const { packed, rowStart } of packQ4Parts(q, per)) {
    const range = `${name}[${rowStart}:${rowStart + packed.rows}]`;
    const put = async (what: string, data: ArrayBuffer | Uint32Array): Promise<GPUBuffer> => {
      const buf = await allocateQ4(lc, `${range}.${what}`, data.byteLength);
      writeQ4Bytes(ctx, buf, data);
      return buf;
    };
    const words = await put('q4_words', packed.words);
    const scales = await put('q4_scales', packed.scales);
    const zeros = packed.zeros ? await put('q4_zeros', packed.zeros) : undefined;
    parts.push({ words, scales, zeros, rowStart, rows: packed.rows });
  }
  ctx.assertAlive();
  return { name, format: q.format, rows: q.rows, cols: q.cols, parts };
}

/** Every buffer of an int4 weight. */
export function q4Buffers(w: Q4GpuWeight): GPUBuffer[] {
  return w.parts.flatMap((p) => (p.zeros ? [p.words, p.scales, p.zeros] : [p.words, p.scales]));
}

/** Writes packed bytes into `buf` (zero-padded to the 4-byte multiple writeBuffer wants). */
export function writeQ4Bytes(ctx: GpuContext, buf: GPUBuffer, data: ArrayBuffer | Uint32Array): void {
  const bytes =
    data instanceof ArrayBuffer
      ? new Uint8Array(data)
      : new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  const padded =
    bytes.byteLength % 4 === 0
      ? bytes
      : (() => {
          const p = new Uint8Array(Math.ceil(bytes.byteLength / 4) * 4);
          p.set(bytes);
          return p;
        })();
  ctx.device.queue.writeBuffer(buf, 0, padded as Uint8Array<ArrayBuffer>);
}

function uploadBytes(ctx: GpuContext, label: string, data: ArrayBuffer | Uint32Array): GPUBuffer {
  // createBuffer pads to 4 bytes, as writeQ4Bytes does.
  const buf = ctx.createBuffer(label, data.byteLength, GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST);
  writeQ4Bytes(ctx, buf, data);
  return buf;
}

/**
 * A matrix's parts: slices of at most `rowsPerPart` rows (each packed on its own, with its own
 * tile padding), e.g. to stay under maxStorageBufferBindingSize.
 */
export function* packQ4Parts(
  q: Q4Matrix,
  rowsPerPart: number,
): Generator<{ packed: PackedQ4; rowStart: number }> {
  for (let start = 0; start < q.rows; start += rowsPerPart) {
    const count = Math.min(rowsPerPart, q.rows - start);
    yield { packed: packQ4(count === q.rows ? q : sliceQ4Rows(q, start, count)), rowStart: start };
  }
}

/** Uploads one packed part (rows `rowStart`.. of the whole matrix). */
export function uploadQ4Part(ctx: GpuContext, name: string, packed: PackedQ4, rowStart = 0): Q4WeightPart {
  return {
    words: uploadBytes(ctx, `${name}.q4`, packed.words),
    scales: uploadBytes(ctx, `${name}.scales`, packed.scales),
    zeros: packed.zeros ? uploadBytes(ctx, `${name}.zeros`, packed.zeros) : undefined,
    rowStart,
    rows: packed.rows,
  };
}

/** Packs and uploads a quantized matrix in parts of at most `rowsPerPart` rows (packQ4Parts). */
export function uploadQ4Weight(
  ctx: GpuContext,
  name: string,
  q: Q4Matrix,
  rowsPerPart = q.rows,
): Q4GpuWeight {
  if (!Number.isInteger(rowsPerPart) || rowsPerPart < 1) {
    throw new RangeError(`${name}: rows per part = ${rowsPerPart}`);
  }
  const parts = [...packQ4Parts(q, rowsPerPart)].map(({ packed, rowStart }) =>
    uploadQ4Part(ctx, name, packed, rowStart),
  );
  return { name, format: q.format, rows: q.rows, cols: q.cols, parts };
}

/** Frees the buffers of an uploaded int4 weight. */
export function destroyQ4Weight(ctx: GpuContext, w: Q4GpuWeight): void {
  for (const b of q4Buffers(w)) ctx.destroyBuffer(b);
}
