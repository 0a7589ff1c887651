/**
 * GPU time of whole steps, for `kiln bench decode`: while enabled, every step's forward pass
 * (embedding to the drawn id) writes a timestamp at its beginning and end into the next pair of a
 * query set; nothing is read per step, so the steps run as they would unmeasured. `read` resolves
 * the pairs written since `reset` and sums them. Steps past the set's capacity, and calibration
 * steps (split into several passes to copy scores out), go unstamped; `steps` counts the stamped.
 */
import type { GpuContext } from '../../gpu/device.js';

/** Pairs of timestamps the set holds (WebGPU allows 4096 queries per set; a timed run is shorter). */
const CAPACITY = 2048;

export class StepGpuClock {
  private readonly querySet: GPUQuerySet;
  private next = 0;

  constructor(private readonly ctx: GpuContext) {
    if (!ctx.adapter.timestampQuery) throw new RangeError('GPU step times need the timestamp-query feature');
    this.querySet = ctx.device.createQuerySet({ type: 'timestamp', count: 2 * CAPACITY });
  }

  /** The timestamp writes of the next step's pass, or nothing once the set is full. */
  passWrites(): GPUComputePassTimestampWrites | undefined {
    if (this.next >= CAPACITY) return undefined;
    const i = this.next++;
    return { querySet: this.querySet, beginningOfPassWriteIndex: 2 * i, endOfPassWriteIndex: 2 * i + 1 };
  }

  reset(): void {
    this.next = 0;
  }

  /** GPU milliseconds summed over the stamped steps since `reset`, once they have run. */
  async read(): Promise<{ steps: number; gpuMs: number }> {
    const n = this.next;
    if (n === 0) return { steps: 0, gpuMs: 0 };
    const device = this.ctx.device;
    const bytes = 16 * n;
    const resolve = device.createBuffer({
      size: bytes,
      usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC,
    });
    const read = device.createBuffer({
      size: bytes,
      usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
    });
    try {
      const enc = device.createCommandEncoder({ label: 'kiln.step_clock' });
      enc.resolveQuerySet(this.querySet, 0, 2 * n, resolve, 0);
      enc.copyBufferToBuffer(resolve, 0, read, 0, bytes);
      device.queue.submit([enc.finish()]);
      await read.mapAsync(GPUMapMode.READ, 0, bytes);
      const t = new BigUint64Array(read.getMappedRange(0, bytes).slice(0));
      read.unmap();
      let ns = 0;
      for (let i = 0; i < n; i++) ns += Number((t[2 * i + 1] as bigint) - (t[2 * i] as bigint));
      return { steps: n, gpuMs: ns / 1e6 };
    } finally {
      resolve.destroy();
      read.destroy();
    }
  }

  destroy(): void {
    this.querySet.destroy();
  }
}
