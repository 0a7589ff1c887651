/**
 * WebGPU in Node through Dawn (the `webgpu` package). Dawn's instance object must stay referenced
 * while any device created from it lives: if it is garbage-collected, Dawn crashes the process.
 * We keep it in a module-level variable for the life of the process and also hand it to the
 * GpuContext as `keepAlive`.
 */
import { create, globals } from 'webgpu';
import { acquireGpu, type GpuContext } from '../gpu/device.js';

let instance: GPU | null = null;

/** Dawn's GPU object (created once per process), with WebGPU's globals installed. */
export function dawnGpu(): GPU {
  if (!instance) {
    // GPUBufferUsage, GPUMapMode, ... are globals in a browser; Dawn provides them as an object.
    Object.assign(globalThis, globals);
    process.env.XDG_RUNTIME_DIR ??= '/tmp';
    // Timestamp quantization (on by default) rounds GPU timestamps to 100 us; the tuner and
    // benchmarks need fine timings.
    instance = create(['disable-dawn-features=timestamp_quantization']);
  }
  return instance;
}

/** Acquires a device through Dawn. */
export async function acquireNodeGpu(powerPreference?: GPUPowerPreference): Promise<GpuContext> {
  const gpu = dawnGpu();
  return acquireGpu({ gpu, keepAlive: gpu, ...(powerPreference ? { powerPreference } : {}) });
}
