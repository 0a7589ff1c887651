/**
 * Moves int4 weights to the GPU: packs a Q4Matrix (src/quant/q4.ts) into the kernel layout and
 * uploads it as the Q4GpuWeight that src/kernels/matmul-q4.ts reads.
 */
import type { GpuContext } from '../gpu/device.js';
import type { Q4GpuWeight, Q4WeightPart } from '../kernels/matmul-q4.js';
import { packQ4, sliceQ4Rows, type PackedQ4, type Q4Matrix } from '../quant/q4.js';

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
  for (const p of w.parts) {
    ctx.destroyBuffer(p.words);
    ctx.destroyBuffer(p.scales);
    if (p.zeros) ctx.destroyBuffer(p.zeros);
  }
}
