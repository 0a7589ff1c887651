/**
 * Times groups of dispatches on the GPU: each group runs in its own compute pass whose
 * beginning and end are stamped with timestamp queries, so the figure is GPU time without
 * submission or readback. Without `timestamp-query` it falls back to wall clock around
 * `onSubmittedWorkDone`, one submit per group (coarser: includes submission overhead).
 */
import type { GpuContext } from './device.js';
import { encodeDispatches, type Dispatch } from './dispatch.js';

export interface TimedGroup {
  label: string;
  dispatches: readonly Dispatch[];
}

export type TimerSource = 'timestamp' | 'wall';

export class GpuTimer {
  readonly source: TimerSource;
  private querySet: GPUQuerySet | null = null;
  private resolveBuf: GPUBuffer | null = null;
  private readBuf: GPUBuffer | null = null;
  private capacity = 0;

  constructor(private readonly ctx: GpuContext) {
    this.source = ctx.adapter.timestampQuery ? 'timestamp' : 'wall';
  }

  private ensure(groups: number): void {
    if (groups <= this.capacity) return;
    this.destroy();
    const device = this.ctx.device;
    this.capacity = groups;
    this.querySet = device.createQuerySet({ type: 'timestamp', count: 2 * groups });
    this.resolveBuf = device.createBuffer({
      size: 16 * groups,
      usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC,
    });
    this.readBuf = device.createBuffer({
      size: 16 * groups,
      usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
    });
  }

  /** GPU milliseconds of each group, in order (one submission for all of them). */
  async time(groups: readonly TimedGroup[]): Promise<number[]> {
    this.ctx.assertAlive();
    const device = this.ctx.device;
    if (this.source === 'wall') {
      const out: number[] = [];
      for (const g of groups) {
        const enc = device.createCommandEncoder();
        const pass = enc.beginComputePass();
        encodeDispatches(pass, g.dispatches);
        pass.end();
        const t0 = performance.now();
        device.queue.submit([enc.finish()]);
        await device.queue.onSubmittedWorkDone();
        out.push(performance.now() - t0);
      }
      return out;
    }
    this.ensure(groups.length);
    const qs = this.querySet as GPUQuerySet;
    const enc = device.createCommandEncoder({ label: 'kiln.timer' });
    groups.forEach((g, i) => {
      const pass = enc.beginComputePass({
        label: g.label,
        timestampWrites: { querySet: qs, beginningOfPassWriteIndex: 2 * i, endOfPassWriteIndex: 2 * i + 1 },
      });
      encodeDispatches(pass, g.dispatches);
      pass.end();
    });
    const bytes = 16 * groups.length;
    enc.resolveQuerySet(qs, 0, 2 * groups.length, this.resolveBuf as GPUBuffer, 0);
    enc.copyBufferToBuffer(this.resolveBuf as GPUBuffer, 0, this.readBuf as GPUBuffer, 0, bytes);
    device.queue.submit([enc.finish()]);
    const rb = this.readBuf as GPUBuffer;
    await rb.mapAsync(GPUMapMode.READ, 0, bytes);
    const ticks = new BigUint64Array(rb.getMappedRange(0, bytes).slice(0));
    rb.unmap();
    this.ctx.assertAlive();
    return groups.map((_, i) => Number((ticks[2 * i + 1] as bigint) - (ticks[2 * i] as bigint)) / 1e6);
  }

  destroy(): void {
    this.querySet?.destroy();
    this.resolveBuf?.destroy();
    this.readBuf?.destroy();
    this.querySet = this.resolveBuf = this.readBuf = null;
    this.capacity = 0;
  }
}
