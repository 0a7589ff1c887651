/**
 * Device-loss recovery on BabyLlama (Dawn on this machine's adapter): the device is destroyed
 * mid-generation, that request ends with a retriable GpuDeviceError, the engine gets a new device
 * from its factory, reloads the weights from the folder, and the next request gives the golden ids.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { GpuDeviceError } from '../../src/errors.js';
import { convertLlama2cToFolder } from '../../src/node/convert.js';
import { dawnGpu } from '../../src/node/dawn.js';
import { createEngine } from '../../src/node/index.js';
import { sharedModel } from '../helpers/shared.js';

let dir = '';
let golden: number[] = [];

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'kiln-recover-'));
  await convertLlama2cToFolder(sharedModel('babyllama-tok105', 'model5000.bin'), {
    outDir: dir,
    tokenizer: sharedModel('babyllama-tok105', 'tok105.model'),
  });
  golden = (
    JSON.parse(readFileSync(sharedModel('babyllama-tok105', 'reference_greedy.json'), 'utf8')) as {
      greedy_ids_after_bos: number[];
    }
  ).greedy_ids_after_bos.slice(0, 40);
  expect(golden).toHaveLength(40);
}, 120_000);
afterAll(() => rmSync(dir, { recursive: true, force: true }));

test('a device destroyed mid-generation: retriable error, recovery on a new device, golden ids after', async () => {
  const devices: GPUDevice[] = [];
  const newDevice = async (): Promise<GPUDevice> => {
    const adapter = await dawnGpu().requestAdapter();
    const device = (await adapter?.requestDevice()) as GPUDevice;
    devices.push(device);
    return device;
  };
  const first = await newDevice();
  const engine = await createEngine({ model: dir, device: first, recoverDevice: newDevice });
  const greedy = { maxTokens: 40, temperature: 0, ignoreEos: true };
  try {
    expect((await engine.generate([1], greedy).result()).tokenIds).toEqual(golden);

    const seen: number[] = [];
    const err = await (async () => {
      for await (const t of engine.generate([1], { ...greedy, maxTokens: 200 })) {
        if (t.id === null) continue;
        seen.push(t.id);
        if (seen.length === 3) first.destroy();
      }
    })().then(
      () => null,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(GpuDeviceError);
    expect((err as GpuDeviceError).retriable).toBe(true);
    expect((err as Error).message).toMatch(/GPU device was lost .*request can be retried/);
    // The tokens shown before the loss were the right ones, and not passed off as an answer.
    expect(seen.length).toBeLessThan(200);
    expect(seen).toEqual(golden.slice(0, seen.length));

    // Asked at once (the recovery may still run): it waits for the new device and runs there.
    const after = await engine.generate([1], greedy).result();
    expect(after.tokenIds).toEqual(golden);
    expect(engine.recovering).toBe(false);
    expect(devices).toHaveLength(2);
    // Greedy again, now also through the prefix cache of the rebuilt KV pool.
    expect((await engine.generate([1], greedy).result()).tokenIds).toEqual(golden);
  } finally {
    engine.dispose();
    for (const d of devices) d.destroy();
  }
}, 180_000);

test('an injected device lost without a factory still ends the engine with a non-retriable error', async () => {
  const adapter = await dawnGpu().requestAdapter();
  const device = (await adapter?.requestDevice()) as GPUDevice;
  const engine = await createEngine({ model: dir, device });
  try {
    const err = await (async () => {
      let n = 0;
      for await (const _ of engine.generate([1], { maxTokens: 200, temperature: 0, ignoreEos: true })) {
        if (++n === 2) device.destroy();
      }
    })().then(
      () => null,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(GpuDeviceError);
    expect((err as GpuDeviceError).retriable).toBe(false);
    expect(engine.recovering).toBe(false);
  } finally {
    engine.dispose();
  }
}, 120_000);

test('an engine that acquired its own device gets a new one from its GPU entry point', async () => {
  // Dawn's own adapter, seen through an object that records the devices it hands out, so the test
  // can destroy the one the engine acquired for itself.
  const dawn = dawnGpu();
  const made: GPUDevice[] = [];
  const gpu = {
    requestAdapter: async (o?: GPURequestAdapterOptions) => {
      const a = (await dawn.requestAdapter(o)) as GPUAdapter;
      return {
        features: a.features,
        limits: a.limits,
        info: a.info,
        requestDevice: async (d?: GPUDeviceDescriptor) => {
          const device = await a.requestDevice(d);
          made.push(device);
          return device;
        },
      };
    },
  } as unknown as GPU;
  const engine = await createEngine({ model: dir, gpu });
  const greedy = { maxTokens: 40, temperature: 0, ignoreEos: true };
  try {
    expect(made).toHaveLength(1);
    (made[0] as GPUDevice).destroy();
    await expect.poll(() => engine.recovering).toBe(true);
    // Sent right after the loss: it waits for the recovery and runs on the new device.
    const next = engine.generate([1], greedy).result();
    await engine.whenRecovered();
    expect(engine.recovering).toBe(false);
    expect((await next).tokenIds).toEqual(golden);
    expect(made).toHaveLength(2);
  } finally {
    engine.dispose();
  }
}, 120_000);

test('a recovery that cannot get a new device: whenRecovered and later requests fail with why', async () => {
  // The first adapter is Dawn's; after the loss the entry point finds none, as a browser does
  // once it has given up on its GPU process.
  const dawn = dawnGpu();
  const made: GPUDevice[] = [];
  let adapters = 0;
  const gpu = {
    requestAdapter: async (o?: GPURequestAdapterOptions) => {
      if (adapters++ > 0) return null;
      const a = (await dawn.requestAdapter(o)) as GPUAdapter;
      return {
        features: a.features,
        limits: a.limits,
        info: a.info,
        requestDevice: async (d?: GPUDeviceDescriptor) => {
          const device = await a.requestDevice(d);
          made.push(device);
          return device;
        },
      };
    },
  } as unknown as GPU;
  const engine = await createEngine({ model: dir, gpu });
  try {
    await engine.whenRecovered();
    (made[0] as GPUDevice).destroy();
    await expect.poll(() => engine.recovering).toBe(true);
    const failed = /GPU device was lost and could not be recovered: no WebGPU adapter found/;
    await expect(engine.whenRecovered()).rejects.toThrow(failed);
    expect(engine.recovering).toBe(false);
    await expect(engine.generate([1], { maxTokens: 4 }).result()).rejects.toThrow(failed);
    expect(adapters).toBe(2);
  } finally {
    engine.dispose();
  }
}, 120_000);
