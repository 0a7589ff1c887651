/**
 * Moves GGUF block weights to the GPU, still quantized: re-lays the file's blocks into the planes
 * of src/quant/gguf-pack.ts (an exact re-layout) and uploads them as the GgufGpuWeight that
 * src/kernels/matmul-gguf.ts reads, split by whole 8-row tiles so that every part fits
 * maxStorageBufferBindingSize. `uploadGgufWeight` is the plain path (tests, benchmarks);
 * `uploadGgufMatrix` is the loader's (guarded, tracked allocations).
 */
import { DeviceMemoryError } from '../errors.js';
import { formatBytes, storageUsage, type GpuContext } from '../gpu/device.js';
import type { GgufGpuWeight, GgufWeightPart } from '../kernels/matmul-gguf.js';
import {
  ggufBlockLayout,
  ggufPackedBytes,
  GGUF_TILE_ROWS,
  packGguf,
  type PackedGguf,
} from '../quant/gguf-pack.js';
import type { LoadContext } from './source.js';
import { writeQ4Bytes } from './upload-q4.js';

/** Rows per part (a multiple of 8) so that each plane of a part fits `limit` bytes. */
export function ggufRowsPerPart(
  type: string,
  rows: number,
  cols: number,
  limit: number,
  name: string,
): number {
  const tile = ggufPackedBytes(type, GGUF_TILE_ROWS, cols);
  const tiles = Math.floor(limit / tile);
  if (tiles === 0) {
    throw new DeviceMemoryError(
      `tensor ${name}: one ${GGUF_TILE_ROWS}-row ${type} tile of ${formatBytes(tile)} does not fit this device's maxStorageBufferBindingSize (${formatBytes(limit)})`,
    );
  }
  return Math.min(rows, tiles * GGUF_TILE_ROWS);
}

/** The packed parts of a [rows, cols] tensor (the file's row-major bytes), `per` rows each. */
function* packParts(
  type: string,
  bytes: Uint8Array,
  rows: number,
  cols: number,
  per: number,
): Generator<{ packed: PackedGguf; rowStart: number }> {
  const rowBytes = (cols / ggufBlockLayout(type).info.blockElems) * ggufBlockLayout(type).info.blockBytes;
  for (let start = 0; start < rows; start += per) {
    const count = Math.min(per, rows - start);
    const slice = bytes.subarray(start * rowBytes, (start + count) * rowBytes);
    yield { packed: packGguf(type, slice, count, cols), rowStart: start };
  }
}

/** Packs and uploads a block tensor for the loader (guarded, tracked buffers). */
export async function uploadGgufMatrix(
  lc: LoadContext,
  name: string,
  type: string,
  bytes: Uint8Array,
  rows: number,
  cols: number,
): Promise<GgufGpuWeight> {
  const { ctx } = lc;
  const per = ggufRowsPerPart(type, rows, cols, ctx.limits.maxStorageBufferBindingSize, name);
  const parts: GgufWeightPart[] = [];
  for (const { packed, rowStart } of packParts(type, bytes, rows, cols, per)) {
    const range = `${name}[${rowStart}:${rowStart + packed.rows}]`;
    const put = async (what: string, data: Uint32Array): Promise<GPUBuffer> => {
      const buf = await ctx.guardAllocation(`tensor ${range}.${what}`, data.byteLength, () =>
        lc.track(ctx.createBuffer(`${range}.${what}`, data.byteLength, storageUsage())),
      );
      writeQ4Bytes(ctx, buf, data);
      return buf;
    };
    const words = await put('gguf_words', packed.words);
    const dplane = packed.dplane ? await put('gguf_d', packed.dplane) : undefined;
    parts.push({ words, dplane, rowStart, rows: packed.rows });
  }
  ctx.assertAlive();
  return { name, gguf: ggufBlockLayout(type).info.name as GgufGpuWeight['gguf'], rows, cols, parts };
}

/** Packs and uploads a block tensor in parts of at most `rowsPerPart` rows (tests, benchmarks). */
export function uploadGgufWeight(
  ctx: GpuContext,
  name: string,
  type: string,
  bytes: Uint8Array,
  rows: number,
  cols: number,
  rowsPerPart = rows,
): GgufGpuWeight {
  if (!Number.isInteger(rowsPerPart) || rowsPerPart < 1)
    throw new RangeError(`${name}: rows per part = ${rowsPerPart}`);
  const parts = [...packParts(type, bytes, rows, cols, rowsPerPart)].map(({ packed, rowStart }) => {
    const put = (what: string, data: Uint32Array): GPUBuffer => {
      const buf = ctx.createBuffer(
        `${name}.${what}`,
        data.byteLength,
        GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST,
      );
      writeQ4Bytes(ctx, buf, data);
      return buf;
    };
    return {
      words: put('gguf_words', packed.words),
      dplane: packed.dplane ? put('gguf_d', packed.dplane) : undefined,
      rowStart,
      rows: packed.rows,
    };
  });
  return { name, gguf: ggufBlockLayout(type).info.name as GgufGpuWeight['gguf'], rows, cols, parts };
}

/** Every buffer of an uploaded block weight. */
export function ggufBuffers(w: GgufGpuWeight): GPUBuffer[] {
  return w.parts.flatMap((p) => (p.dplane ? [p.words, p.dplane] : [p.words]));
}
