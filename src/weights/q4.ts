/**
 * int4 projection weights on the GPU (the Q4GpuWeight that shaders/matmul_q4.wgsl reads), from
 * three sources: a Kiln int4 folder (already in the kernel layout: bytes streamed straight into
 * the part buffers), a matrix quantized or converted on the CPU (packed per part, then uploaded),
 * and a float matrix already on the GPU (quantized there, see src/quant/quantize-gpu.ts).
 * Matrices are split by whole 8-row tiles so that every part fits maxStorageBufferBindingSize.
 */
import { DeviceMemoryError, UnsupportedModelError } from '../errors.js';
import { formatBytes, storageUsage, type GpuContext } from '../gpu/device.js';
import type { TensorInfo } from '../io/safetensors.js';
import type { Checkpoint } from '../io/safetensors-checkpoint.js';
import type { Q4GpuWeight, Q4WeightPart } from '../kernels/matmul-q4.js';
import { q4TensorSpecs } from '../quant/kiln-format.js';
import { Q4_TILE_ROWS, type Q4Format, type Q4Matrix } from '../quant/q4.js';
import { packQ4Parts, writeQ4Bytes } from './upload-q4.js';

/** Upload chunk size, as for float weights. */
const CHUNK_BYTES = 8 << 20;

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

type Track = (b: GPUBuffer) => GPUBuffer;

async function allocate(ctx: GpuContext, label: string, bytes: number, track: Track): Promise<GPUBuffer> {
  return ctx.guardAllocation(`tensor ${label}`, bytes, () =>
    track(ctx.createBuffer(label, bytes, storageUsage())),
  );
}

/**
 * Streams the projection `prefix` of a Kiln int4 folder (src/quant/kiln-format.ts) into part
 * buffers: each stored tensor's leading dimension is the tile, so a part is a byte range.
 */
export async function uploadKilnQ4(
  ctx: GpuContext,
  ckpt: Checkpoint,
  prefix: string,
  rows: number,
  cols: number,
  format: Q4Format,
  tick: (info: TensorInfo, bytes: number) => void,
  track: Track,
): Promise<Q4GpuWeight> {
  const specs = q4TensorSpecs(prefix, rows, cols, format);
  const per = q4RowsPerPart(rows, cols, format, ctx.limits.maxStorageBufferBindingSize, prefix);
  const tilesPer = per / Q4_TILE_ROWS;
  const parts: Q4WeightPart[] = [];
  // Buffers per stored tensor, one per part.
  const buffers: GPUBuffer[][] = specs.map(() => []);
  for (let r = 0; r < rows; r += per) {
    const n = Math.min(per, rows - r);
    const tiles = Math.ceil(n / Q4_TILE_ROWS);
    const bufs: GPUBuffer[] = [];
    for (const [i, s] of specs.entries()) {
      const b = await allocate(ctx, `${s.name}[${r}:${r + n}]`, tiles * s.tileBytes, track);
      (buffers[i] as GPUBuffer[]).push(b);
      bufs.push(b);
    }
    parts.push({
      words: bufs[0] as GPUBuffer,
      scales: bufs[1] as GPUBuffer,
      zeros: format.symmetric ? undefined : bufs[2],
      rowStart: r,
      rows: n,
    });
  }
  const queue = ctx.device.queue;
  for (const [i, s] of specs.entries()) {
    const info = ckpt.get(s.name);
    const partBytes = tilesPer * s.tileBytes;
    for await (const { offset, bytes } of ckpt.readTensorChunks(info, CHUNK_BYTES)) {
      // A chunk may straddle parts: write each piece into its own buffer.
      let at = 0;
      while (at < bytes.length) {
        const global = offset + at;
        const part = Math.floor(global / partBytes);
        const within = global - part * partBytes;
        const take = Math.min(bytes.length - at, partBytes - within);
        queue.writeBuffer(
          (buffers[i] as GPUBuffer[])[part] as GPUBuffer,
          within,
          bytes.subarray(at, at + take),
        );
        at += take;
      }
      tick(info, bytes.length);
    }
  }
  ctx.assertAlive();
  return { name: prefix, format, rows, cols, parts };
}

/** Packs (per part) and uploads a matrix quantized or converted on the CPU. */
export async function uploadQ4Matrix(
  ctx: GpuContext,
  name: string,
  q: Q4Matrix,
  track: Track,
): Promise<Q4GpuWeight> {
  const per = q4RowsPerPart(q.rows, q.cols, q.format, ctx.limits.maxStorageBufferBindingSize, name);
  const parts: Q4WeightPart[] = [];
  for (const { packed, rowStart } of packQ4Parts(q, per)) {
    const range = `${name}[${rowStart}:${rowStart + packed.rows}]`;
    const put = async (what: string, data: ArrayBuffer | Uint32Array): Promise<GPUBuffer> => {
      const buf = await allocate(ctx, `${range}.${what}`, data.byteLength, track);
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

/** Frees an int4 weight's buffers. */
export function freeQ4Weight(free: (b: GPUBuffer | undefined) => void, w: Q4GpuWeight): void {
  for (const p of w.parts) {
    free(p.words);
    free(p.scales);
    free(p.zeros);
  }
}

export function checkQ4Tensor(ckpt: Checkpoint, name: string, dtype: string, shape: readonly number[]): void {
  const info = ckpt.get(name);
  if (
    info.dtype !== dtype ||
    info.shape.length !== shape.length ||
    info.shape.some((d, i) => d !== shape[i])
  ) {
    throw new UnsupportedModelError(
      `tensor ${name} in ${ckpt.location} is ${info.dtype} [${info.shape.join(', ')}], but the int4 format implies ${dtype} [${shape.join(', ')}]`,
    );
  }
}
