/**
 * The buffers of the GPU GPTQ solve (src/kernels/gptq.ts): the set a solve or solver frees
 * together, the status buffer that the gptq_* shaders flag failures in and what its flags mean,
 * the per-chunk buffers of the sweep, and the largest buffer the solve may bind.
 */
import { storageUsage, type GpuContext } from '../gpu/device.js';

/** Buffers made for one solve or solver: freed together when it fails or ends. */
export class BufferSet {
  private readonly made = new Set<GPUBuffer>();
  constructor(private readonly ctx: GpuContext) {}

  create(label: string, size: number): GPUBuffer {
    const buf = this.ctx.createBuffer(label, size, storageUsage());
    this.made.add(buf);
    return buf;
  }

  destroy(buf: GPUBuffer): void {
    if (this.made.delete(buf)) this.ctx.destroyBuffer(buf);
  }

  destroyAll(): void {
    for (const buf of this.made) this.ctx.destroyBuffer(buf);
    this.made.clear();
  }
}

/** Status bits (status[0]) set by the shaders. */
const FLAG_BAD_DIAGONAL = 1;
const FLAG_NOT_PD = 2;
const FLAG_F16_OVERFLOW = 4;
/** u32s of the status buffer: flags, first row whose f16 scale overflows, 2 unused. */
export const STATUS_WORDS = 4;

/** Throws the CPU solver's error for the failures flagged in the status buffer's words. */
export function throwOnStatus(words: Uint32Array): void {
  const [status = 0, overflowRow = 0] = words;
  if (status & FLAG_BAD_DIAGONAL) {
    throw new RangeError('GPTQ: the Hessian has a negative or non-finite diagonal entry');
  }
  if (status & FLAG_NOT_PD) {
    throw new RangeError(
      'GPTQ: the damped Hessian is not positive definite (or not finite); raise dampPercent',
    );
  }
  if (status & FLAG_F16_OVERFLOW) {
    throw new RangeError(
      `int4 scale of row ${overflowRow} does not fit in f16 (max 65504); use scaleType 'f32'`,
    );
  }
}

/** Per-chunk buffers of the sweep. */
export interface SweepBuffers {
  w: GPUBuffer;
  acc: GPUBuffer;
  codes: GPUBuffer;
  qp: GPUBuffer;
  s: GPUBuffer | null;
}

/** The largest buffer the solve may bind. */
export function bindLimit(ctx: GpuContext): number {
  return Math.min(ctx.limits.maxStorageBufferBindingSize, ctx.limits.maxBufferSize);
}
