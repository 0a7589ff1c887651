/**
 * Moves GGUF block weights to the GPU, still quantized: re-lays the file's blocks into the planes
 * of src/quant/gguf-pack.ts (an exact re-layout) and uploads them as the GgufGpuWeight that
 * src/kernels/matmul-gguf.ts reads. A weight is a stack of pieces (a fused projection: q, k, v or
 * gate, up, each in its own format as the file stores it), and each piece is split by whole
 * 8-row tiles so that every part fits maxStorageBufferBindingSize. `uploadGgufMatrix` is the
 * loader's path (guarded, tracked allocations; Q4_0 becomes Kiln int4, exactly); `uploadGgufWeight`
 * the plain one (tests, benchmarks), always blocks.
 */
import { DeviceMemoryError } from '../errors.js';
import { formatBytes, storageUsage, type GpuContext } from '../gpu/device.js';
import type { GgufGpuWeight, GgufWeightPart } from '../kernels/matmul-gguf.js';
import type { Q4GpuWeight } from '../kernels/matmul-q4.js';
import {
  ggufBlockLayout,
  ggufPackedBytes,
  GGUF_TILE_ROWS,
  packGguf,
  type PackedGguf,
} from '../quant/gguf-pack.js';
import type { LoadContext } from './source.js';
import { uploadQ4Matrix, writeQ4Bytes } from './upload-q4.js';
import { q4_0ToQ4Matrix } from '../quant/gguf-q4.js';
import { stackQ4 } from '../quant/q4.js';

/** One tensor of a stack: `rows` rows of the weight's columns, as the file stores them. */
export interface GgufPiece {
  /** ggml's type name ('Q4_K'); must have a block kernel (GGUF_KERNEL_TYPES). */
  type: string;
  /** The tensor's bytes, row-major, rows · cols/BK blocks. */
  bytes: Uint8Array;
  rows: number;
}

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

/** GPU bytes of a stack (both planes of every piece, tile-padded per part). */
export function ggufStackBytes(pieces: readonly Omit<GgufPiece, 'bytes'>[], cols: number): number {
  return pieces.reduce((s, p) => s + ggufPackedBytes(p.type, p.rows, cols), 0);
}

/** The packed parts of a stack: each piece in slices of at most `per(piece)` rows. */
function* packStack(
  pieces: readonly GgufPiece[],
  cols: number,
  per: (p: GgufPiece) => number,
): Generator<{ packed: PackedGguf; rowStart: number }> {
  let rowStart = 0;
  for (const p of pieces) {
    const { info } = ggufBlockLayout(p.type);
    const rowBytes = Math.floor(cols / info.blockElems) * info.blockBytes;
    const n = per(p);
    for (let start = 0; start < p.rows; start += n) {
      const count = Math.min(n, p.rows - start);
      const slice = p.bytes.subarray(start * rowBytes, (start + count) * rowBytes);
      yield { packed: packGguf(p.type, slice, count, cols), rowStart: rowStart + start };
    }
    rowStart += p.rows;
  }
}

function weightOf(
  name: string,
  pieces: readonly GgufPiece[],
  cols: number,
  parts: GgufWeightPart[],
): GgufGpuWeight {
  return { kind: 'gguf', name, rows: pieces.reduce((s, p) => s + p.rows, 0), cols, parts };
}

/**
 * Uploads a stack of block tensors for the loader (guarded, tracked buffers). A stack of Q4_0
 * pieces only is converted exactly to Kiln's int4 (src/quant/gguf-q4.ts) and runs on matmul_q4;
 * anything else stays in its GGUF formats for matmul_gguf.
 */
export async function uploadGgufMatrix(
  lc: LoadContext,
  name: string,
  pieces: readonly GgufPiece[],
  cols: number,
): Promise<GgufGpuWeight | Q4GpuWeight> {
  if (pieces.length > 0 && pieces.every((p) => p.type === 'Q4_0')) {
    return uploadQ4Matrix(lc, name, stackQ4(pieces.map((p) => q4_0ToQ4Matrix(p.bytes, p.rows, cols))));
  }
  return uploadBlocks(lc, name, pieces, cols);
}

async function uploadBlocks(
  lc: LoadContext,
  name: string,
  pieces: readonly GgufPiece[],
  cols: number,
): Promise<GgufGpuWeight> {
  const { ctx } = lc;
  const limit = ctx.limits.maxStorageBufferBindingSize;
  const parts: GgufWeightPart[] = [];
  for (const { packed, rowStart } of packStack(pieces, cols, (p) =>
    ggufRowsPerPart(p.type, p.rows, cols, limit, name),
  )) {
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
    const hplane = packed.hplane ? await put('gguf_h', packed.hplane) : undefined;
    parts.push({ type: packed.type, words, dplane, hplane, rowStart, rows: packed.rows });
  }
  ctx.assertAlive();
  return weightOf(name, pieces, cols, parts);
}

/** Packs and uploads a stack in parts of at most `rowsPerPart` rows (tests, benchmarks). */
export function uploadGgufWeight(
  ctx: GpuContext,
  name: string,
  pieces: readonly GgufPiece[],
  cols: number,
  rowsPerPart?: number,
): GgufGpuWeight {
  if (rowsPerPart !== undefined && (!Number.isInteger(rowsPerPart) || rowsPerPart < 1)) {
    throw new RangeError(`${name}: rows per part = ${rowsPerPart}`);
  }
  const put = (what: string, data: Uint32Array): GPUBuffer => {
    const buf = ctx.createBuffer(`${name}.${what}`, data.byteLength, storageUsage());
    writeQ4Bytes(ctx, buf, data);
    return buf;
  };
  const parts = [...packStack(pieces, cols, (p) => rowsPerPart ?? p.rows)].map(
    ({ packed, rowStart }): GgufWeightPart => ({
      type: packed.type,
      words: put('gguf_words', packed.words),
      dplane: packed.dplane ? put('gguf_d', packed.dplane) : undefined,
      hplane: packed.hplane ? put('gguf_h', packed.hplane) : undefined,
      rowStart,
      rows: packed.rows,
    }),
  );
  return weightOf(name, pieces, cols, parts);
}

/** Every buffer of an uploaded block weight. */
export function ggufBuffers(w: GgufGpuWeight): GPUBuffer[] {
  return w.parts.flatMap((p) => [p.words, ...(p.dplane ? [p.dplane] : []), ...(p.hplane ? [p.hplane] : [])]);
}
