/**
 * Device acquisition: an injected GPUDevice, a GPU object (Dawn's in Node, `navigator.gpu` in a
 * browser), and the features and limits Kiln asks for. Everything GPU-side goes through the
 * GpuContext returned here, which also turns `device.lost` into a clear error on the next use.
 */
import { DeviceMemoryError, GpuDeviceError } from '../errors.js';
import { BufferPool } from './buffer-pool.js';
import { PipelineCache } from './pipeline-cache.js';

/** What Kiln knows about the adapter, as reported to users (`--json`'s "adapter"). */
export interface AdapterSummary {
  vendor: string;
  architecture: string;
  device: string;
  description: string;
  /** Features Kiln requested and got. */
  features: string[];
  shaderF16: boolean;
  subgroups: boolean;
  timestampQuery: boolean;
  maxStorageBufferBindingSize: number;
  maxBufferSize: number;
  maxComputeWorkgroupStorageSize: number;
}

export interface AcquireOptions {
  /** Use this device as is (the caller owns it; Kiln never destroys it). */
  device?: GPUDevice;
  /** The GPU entry point: Dawn's in Node (see src/node/dawn.ts), `navigator.gpu` in a browser. */
  gpu?: GPU;
  powerPreference?: GPUPowerPreference;
  /** Kept referenced for the device's lifetime (Dawn's instance must outlive every device). */
  keepAlive?: unknown;
}

const WANTED_FEATURES: GPUFeatureName[] = ['shader-f16', 'subgroups', 'timestamp-query'];
/** Limits requested at the adapter's own maximum: big tensors and workgroup tiles depend on them. */
const WANTED_LIMITS = [
  'maxStorageBufferBindingSize',
  'maxBufferSize',
  'maxComputeWorkgroupStorageSize',
  'maxComputeInvocationsPerWorkgroup',
  'maxComputeWorkgroupSizeX',
  'maxStorageBuffersPerShaderStage',
] as const;

function findGpu(opts: AcquireOptions): GPU {
  if (opts.gpu) return opts.gpu;
  const nav = (globalThis as { navigator?: { gpu?: GPU } }).navigator;
  if (nav?.gpu) return nav.gpu;
  throw new GpuDeviceError(
    'WebGPU is not available: no navigator.gpu here. In Node, use the kiln-llm/node entry (Dawn); in a browser, use one with WebGPU enabled.',
  );
}

/**
 * Usage of a buffer that kernels read and write and the host fills and reads back (weights'
 * staging, activations, scratch, caches). A function: in Node, GPUBufferUsage is a global that
 * src/node/dawn.ts installs at run time, after modules load.
 */
export const storageUsage = (): GPUBufferUsageFlags =>
  GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC;

/** Acquires (or wraps) a device and returns the context every kernel uses. */
export async function acquireGpu(opts: AcquireOptions = {}): Promise<GpuContext> {
  if (opts.device) {
    return new GpuContext(
      opts.device,
      summarize(opts.device, opts.device.adapterInfo),
      false,
      opts.keepAlive,
    );
  }
  const gpu = findGpu(opts);
  const adapter = await gpu.requestAdapter({ powerPreference: opts.powerPreference ?? 'high-performance' });
  if (!adapter) {
    throw new GpuDeviceError(
      'no WebGPU adapter found. On Linux without a GPU, run `npm run setup` (installs the lavapipe Vulkan driver).',
    );
  }
  const requiredFeatures = WANTED_FEATURES.filter((f) => adapter.features.has(f));
  const requiredLimits: Record<string, number> = {};
  for (const name of WANTED_LIMITS) requiredLimits[name] = adapter.limits[name];
  let device: GPUDevice;
  try {
    device = await adapter.requestDevice({ requiredFeatures, requiredLimits, label: 'kiln' });
  } catch (e) {
    throw new GpuDeviceError(`could not create a WebGPU device: ${(e as Error).message}`, { cause: e });
  }
  return new GpuContext(device, summarize(device, adapter.info), true, opts.keepAlive);
}

function summarize(device: GPUDevice, info: GPUAdapterInfo): AdapterSummary {
  return {
    vendor: info.vendor,
    architecture: info.architecture,
    device: info.device,
    description: info.description,
    features: [...device.features].filter((f) => (WANTED_FEATURES as string[]).includes(f)).sort(),
    shaderF16: device.features.has('shader-f16'),
    subgroups: device.features.has('subgroups'),
    timestampQuery: device.features.has('timestamp-query'),
    maxStorageBufferBindingSize: device.limits.maxStorageBufferBindingSize,
    maxBufferSize: device.limits.maxBufferSize,
    maxComputeWorkgroupStorageSize: device.limits.maxComputeWorkgroupStorageSize,
  };
}

/**
 * The device plus Kiln's shared GPU state. One per device; models and kernels borrow it.
 */
export class GpuContext {
  readonly pipelines: PipelineCache;
  readonly buffers: BufferPool;
  /** Set once the device is lost; every later call fails with this message. */
  private lostMessage: string | null = null;
  private destroyed = false;
  /** Bytes of long-lived buffers (weights, KV cache) allocated through `createBuffer`. */
  allocatedBytes = 0;
  private live = 0;

  private readonly onUncapturedError = (ev: Event) => {
    const err = (ev as GPUUncapturedErrorEvent).error;
    this.lostMessage ??= `GPU error: ${err.message.split('\n')[0]}`;
  };

  constructor(
    readonly device: GPUDevice,
    readonly adapter: AdapterSummary,
    /** False for a device the caller passed in: Kiln never destroys it or claims its errors. */
    readonly ownsDevice: boolean,
    /** Held so Dawn's instance is not garbage-collected while the device lives. */
    private readonly keepAlive?: unknown,
  ) {
    this.countBuffers(device);
    this.pipelines = new PipelineCache(device);
    this.buffers = new BufferPool(device);
    // On its own device, Kiln's kernels should never raise errors; if one does (a driver bug, a
    // limit we misjudged), fail the next call with its text instead of returning garbage. A
    // caller's device may carry the caller's own errors, so there Kiln relies on error scopes.
    if (ownsDevice) device.addEventListener('uncapturederror', this.onUncapturedError);
    void device.lost.then((info) => {
      if (this.destroyed) return;
      this.lostMessage = `the GPU device was lost (${info.reason}${info.message ? `: ${info.message}` : ''}); reload the model to continue`;
    });
  }

  /**
   * Counts every buffer made on the device, by any room (plans, KV, weights, staging), until it is
   * destroyed or collected: a server that leaks GPU objects shows it as growth (the soak test
   * samples it through /metrics).
   */
  private countBuffers(device: GPUDevice): void {
    const create = device.createBuffer.bind(device);
    const collected = new FinalizationRegistry<{ destroyed: boolean }>((state) => {
      if (!state.destroyed) this.live--;
    });
    device.createBuffer = (descriptor: GPUBufferDescriptor): GPUBuffer => {
      const buffer = create(descriptor);
      const state = { destroyed: false };
      this.live++;
      collected.register(buffer, state);
      const destroy = buffer.destroy.bind(buffer);
      buffer.destroy = () => {
        if (!state.destroyed) {
          state.destroyed = true;
          this.live--;
        }
        destroy();
      };
      return buffer;
    };
  }

  /** GPU buffers alive on this device (made, and neither destroyed nor garbage-collected). */
  get liveBuffers(): number {
    return this.live;
  }

  get limits(): GPUSupportedLimits {
    return this.device.limits;
  }

  /** Throws the device-lost error if the device has gone away. */
  assertAlive(): void {
    if (this.lostMessage) throw new GpuDeviceError(this.lostMessage);
    if (this.destroyed) throw new GpuDeviceError('the GPU context was closed');
  }

  /**
   * Creates a long-lived buffer, checking the device's limits first so the error says what was asked
   * for and what the device allows, instead of a validation error later.
   */
  createBuffer(label: string, size: number, usage: GPUBufferUsageFlags): GPUBuffer {
    this.assertAlive();
    const padded = Math.max(4, Math.ceil(size / 4) * 4);
    const isStorage = (usage & GPUBufferUsage.STORAGE) !== 0;
    const limit = isStorage ? this.limits.maxStorageBufferBindingSize : this.limits.maxBufferSize;
    if (padded > limit) {
      throw new DeviceMemoryError(
        `${label} needs a buffer of ${formatBytes(padded)}, over this device's ${isStorage ? 'maxStorageBufferBindingSize' : 'maxBufferSize'} of ${formatBytes(limit)}`,
      );
    }
    const buffer = this.device.createBuffer({ label, size: padded, usage });
    this.allocatedBytes += padded;
    return buffer;
  }

  /**
   * Whether the device can hold `bytes` more right now: buffers of up to maxBufferSize (256 MiB at
   * most each) are made under an out-of-memory error scope and destroyed at once. WebGPU reports no
   * free memory, so this is the one way to ask before loading.
   */
  async probeAllocation(bytes: number): Promise<boolean> {
    this.assertAlive();
    const piece = Math.max(4, Math.min(this.limits.maxBufferSize, 256 * 2 ** 20));
    const made: GPUBuffer[] = [];
    this.device.pushErrorScope('out-of-memory');
    for (let left = bytes; left > 0; left -= piece) {
      const size = Math.ceil(Math.min(piece, left) / 4) * 4;
      made.push(this.device.createBuffer({ label: 'kiln.probe', size, usage: GPUBufferUsage.STORAGE }));
    }
    const error = await this.device.popErrorScope();
    for (const b of made) b.destroy();
    return error === null;
  }

  /** Frees a buffer made by `createBuffer`. */
  destroyBuffer(buffer: GPUBuffer): void {
    this.allocatedBytes -= buffer.size;
    buffer.destroy();
  }

  /**
   * Runs `fn` inside out-of-memory and validation error scopes, so that an allocation the device
   * cannot satisfy becomes a DeviceMemoryError that says how much was being allocated.
   */
  async guardAllocation<T>(what: string, bytes: number, fn: () => T): Promise<T> {
    this.device.pushErrorScope('validation');
    this.device.pushErrorScope('out-of-memory');
    let result: T | undefined;
    let thrown: unknown = null;
    try {
      result = fn();
    } catch (e) {
      thrown = e;
    }
    // Always pop what was pushed, or later errors on this device would vanish into our scopes.
    const oom = await this.device.popErrorScope();
    const invalid = await this.device.popErrorScope();
    if (thrown) throw thrown;
    if (oom) {
      throw new DeviceMemoryError(
        `out of GPU memory while allocating ${what} (${formatBytes(bytes)}; ${formatBytes(this.allocatedBytes)} already allocated by Kiln): ${oom.message}`,
      );
    }
    if (invalid)
      throw new GpuDeviceError(`GPU validation error while allocating ${what}: ${invalid.message}`);
    this.assertAlive();
    return result as T;
  }

  /**
   * Runs GPU work inside validation and internal error scopes and turns an error into a
   * GpuDeviceError naming `what` (used for the first step of a model, which compiles and runs
   * every kernel once).
   */
  async checkErrors<T>(what: string, fn: () => Promise<T>): Promise<T> {
    this.device.pushErrorScope('validation');
    this.device.pushErrorScope('internal');
    let result: T | undefined;
    let thrown: unknown = null;
    try {
      result = await fn();
    } catch (e) {
      thrown = e;
    }
    const internal = await this.device.popErrorScope();
    const invalid = await this.device.popErrorScope();
    const err = invalid ?? internal;
    if (err) throw new GpuDeviceError(`GPU error during ${what}: ${err.message.split('\n')[0]}`);
    if (thrown) throw thrown;
    return result as T;
  }

  /** Copies `size` bytes of a GPU buffer back to the CPU. */
  async read(buffer: GPUBuffer, offset: number, size: number): Promise<ArrayBuffer> {
    this.assertAlive();
    const staging = this.buffers.acquireReadback(size);
    const enc = this.device.createCommandEncoder({ label: 'kiln.readback' });
    enc.copyBufferToBuffer(buffer, offset, staging, 0, size);
    this.device.queue.submit([enc.finish()]);
    try {
      await staging.mapAsync(GPUMapMode.READ, 0, size);
    } catch (e) {
      staging.destroy();
      this.assertAlive();
      throw new GpuDeviceError(`reading back from the GPU failed: ${(e as Error).message}`, { cause: e });
    }
    const out = staging.getMappedRange(0, size).slice(0);
    staging.unmap();
    this.buffers.releaseReadback(staging);
    return out;
  }

  /** Destroys pooled buffers, and the device unless it was passed in by the caller. */
  close(): void {
    if (this.destroyed) return;
    this.buffers.clear();
    this.destroyed = true;
    this.device.removeEventListener('uncapturederror', this.onUncapturedError);
    if (this.ownsDevice) this.device.destroy();
    void this.keepAlive;
  }
}

export function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let v = n / 1024;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v.toFixed(v >= 100 ? 0 : v >= 10 ? 1 : 2)} ${units[i]}`;
}
