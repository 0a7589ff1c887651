import { describe, expect, test } from 'vitest';
import { acquireGpu } from '../../src/gpu/device.js';
import { DeviceMemoryError, GpuDeviceError } from '../../src/errors.js';
import { matmul } from '../../src/kernels/matmul.js';
import { dawnGpu } from '../../src/node/dawn.js';
import { randomF32, readF32, run, upload, uploadWeight } from '../helpers/gpu.js';

describe('GPU layer', () => {
  test('requests the optional features and the adapter limits', async () => {
    const adapter = await dawnGpu().requestAdapter();
    const ctx = await acquireGpu({ gpu: dawnGpu() });
    for (const f of ['shader-f16', 'subgroups', 'timestamp-query'] as const) {
      expect(ctx.device.features.has(f)).toBe(adapter?.features.has(f));
    }
    expect(ctx.limits.maxStorageBufferBindingSize).toBe(adapter?.limits.maxStorageBufferBindingSize);
    expect(ctx.limits.maxComputeWorkgroupStorageSize).toBe(adapter?.limits.maxComputeWorkgroupStorageSize);
    expect(ctx.adapter.description.length).toBeGreaterThan(0);
    ctx.close();
  });

  test('an injected device is used as is and not destroyed on close', async () => {
    const adapter = await dawnGpu().requestAdapter();
    const device = (await adapter?.requestDevice()) as GPUDevice;
    const ctx = await acquireGpu({ device });
    expect(ctx.device).toBe(device);
    ctx.close();
    // Still usable by its owner.
    const b = device.createBuffer({ size: 4, usage: GPUBufferUsage.STORAGE });
    b.destroy();
    device.destroy();
  });

  test('pipelines are cached by variant (a shape class), never by exact shape', async () => {
    const ctx = await acquireGpu({ gpu: dawnGpu() });
    const ph = upload(ctx, new Float32Array(1));
    // All three fall in one class: 9..16 rows of X (one 16-row GEMM tile, or MT = 8 on the flat
    // kernel where the adapter has no 8-lane subgroups), few output rows (the narrowest tile), and
    // a row of X within the smallest staged chunk (k <= 32).
    for (const [m, n, k] of [
      [9, 3, 5],
      [12, 17, 9],
      [16, 2, 31],
    ] as const) {
      const { weight } = uploadWeight(ctx, randomF32(n * k, 1), n, k, 'f32');
      const y = upload(ctx, new Float32Array(m * n));
      run(ctx, (b) => matmul(b, { x: upload(ctx, randomF32(m * k, 2)), weight, y, m, placeholder: ph }));
      await readF32(ctx, y, 1);
    }
    expect(ctx.pipelines.size).toBe(1);
    ctx.close();
  });

  test('a buffer over the binding limit is refused with the sizes', async () => {
    const ctx = await acquireGpu({ gpu: dawnGpu() });
    const limit = ctx.limits.maxStorageBufferBindingSize;
    expect(() => ctx.createBuffer('big tensor', limit + 4, GPUBufferUsage.STORAGE)).toThrow(
      DeviceMemoryError,
    );
    expect(() => ctx.createBuffer('big tensor', limit + 4, GPUBufferUsage.STORAGE)).toThrow(
      /big tensor.*maxStorageBufferBindingSize/,
    );
    ctx.close();
  });

  test('guardAllocation pops its error scopes even when its function throws', async () => {
    const adapter = await dawnGpu().requestAdapter();
    const device = (await adapter?.requestDevice()) as GPUDevice;
    const ctx = await acquireGpu({ device });
    const limit = ctx.limits.maxStorageBufferBindingSize;
    await expect(
      ctx.guardAllocation('big tensor', limit + 4, () =>
        ctx.createBuffer('big tensor', limit + 4, GPUBufferUsage.STORAGE),
      ),
    ).rejects.toThrow(DeviceMemoryError);
    // An invalid operation outside any scope of ours reaches the device's owner as an event (a
    // leaked scope would swallow it).
    const raised = new Promise<GPUError>((resolve) =>
      device.addEventListener('uncapturederror', (ev) => resolve((ev as GPUUncapturedErrorEvent).error), {
        once: true,
      }),
    );
    device.createBuffer({ size: 4, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.STORAGE });
    await device.queue.onSubmittedWorkDone();
    const timeout = new Promise<null>((resolve) => setTimeout(() => resolve(null), 2000));
    expect(await Promise.race([raised, timeout])).toBeInstanceOf(GPUValidationError);
    // And no scope is left to pop.
    await expect(device.popErrorScope()).rejects.toThrow();
    ctx.close();
    device.destroy();
  });

  test('device loss becomes a clear error on the next call', async () => {
    const adapter = await dawnGpu().requestAdapter();
    const device = (await adapter?.requestDevice()) as GPUDevice;
    const ctx = await acquireGpu({ device });
    const buf = upload(ctx, new Float32Array(1));
    device.destroy();
    await device.lost;
    expect(() => ctx.assertAlive()).toThrow(GpuDeviceError);
    expect(() => ctx.assertAlive()).toThrow(/device was lost/);
    await expect(ctx.read(buf, 0, 4)).rejects.toThrow(GpuDeviceError);
    expect(() => upload(ctx, new Float32Array(1))).toThrow(/device was lost/);
  });
});
