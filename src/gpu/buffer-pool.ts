/**
 * Reuses short-lived buffers whose sizes repeat: the staging buffers of one-off readbacks
 * (GpuContext.read). Sizes are rounded up to powers of two (from 256 B) so a handful of size
 * classes serve every call. Forward plans own their buffers instead (made once per step shape).
 */
export class BufferPool {
  private readonly free = new Map<string, GPUBuffer[]>();

  constructor(private readonly device: GPUDevice) {}

  private static sizeClass(size: number): number {
    let s = 256;
    while (s < size) s *= 2;
    return s;
  }

  private take(usage: GPUBufferUsageFlags, size: number, label: string): GPUBuffer {
    const cls = BufferPool.sizeClass(size);
    const key = `${usage}:${cls}`;
    const list = this.free.get(key);
    const hit = list?.pop();
    if (hit) return hit;
    return this.device.createBuffer({ label, size: cls, usage });
  }

  private give(buffer: GPUBuffer): void {
    const key = `${buffer.usage}:${buffer.size}`;
    let list = this.free.get(key);
    if (!list) this.free.set(key, (list = []));
    list.push(buffer);
  }

  acquireReadback(size: number): GPUBuffer {
    return this.take(GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST, size, 'kiln.staging');
  }

  releaseReadback(buffer: GPUBuffer): void {
    this.give(buffer);
  }

  clear(): void {
    for (const list of this.free.values()) for (const b of list) b.destroy();
    this.free.clear();
  }
}
