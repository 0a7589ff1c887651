/**
 * `kiln serve` through a device loss (real loopback server, BabyLlama, Dawn): while the engine
 * rebuilds on a new device, /health says "recovering" and generation requests get 503 with
 * Retry-After; after it, /health is "ok" again and requests answer 200 with the golden text.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { convertLlama2cToFolder } from '../../src/node/convert.js';
import { dawnGpu } from '../../src/node/dawn.js';
import { createEngine } from '../../src/node/index.js';
import { startServer, type RunningServer } from '../../src/node/serve.js';
import type { Engine } from '../../src/engine/engine.js';
import { sharedModel } from '../helpers/shared.js';

const PROMPT = 'Once upon a time';
let dir = '';
let golden = '';
let engine: Engine;
let server: RunningServer;
const devices: GPUDevice[] = [];

async function newDevice(): Promise<GPUDevice> {
  const adapter = await dawnGpu().requestAdapter();
  const device = (await adapter?.requestDevice()) as GPUDevice;
  devices.push(device);
  return device;
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'kiln-serve-recover-'));
  await convertLlama2cToFolder(sharedModel('babyllama-tok105', 'model5000.bin'), {
    outDir: dir,
    tokenizer: sharedModel('babyllama-tok105', 'tok105.model'),
  });
  const text = readFileSync(sharedModel('babyllama-tok105', 'greedy_t0_n256.runc.txt'), 'utf8');
  expect(text.startsWith(PROMPT)).toBe(true);
  golden = text.slice(PROMPT.length);
  engine = await createEngine({ model: dir, device: await newDevice(), recoverDevice: newDevice });
  server = await startServer({ engine, modelId: 'babyllama', port: 0 });
}, 120_000);

afterAll(async () => {
  await server?.close(1000);
  engine?.dispose();
  for (const d of devices) d.destroy();
  rmSync(dir, { recursive: true, force: true });
});

const health = async () =>
  ((await (await fetch(`${server.url}/health`)).json()) as { status: string }).status;
const complete = (maxTokens = 24) =>
  fetch(`${server.url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'babyllama', prompt: PROMPT, max_tokens: maxTokens, temperature: 0 }),
  });

async function untilHealthy(): Promise<void> {
  const t0 = Date.now();
  while ((await health()) !== 'ok' && Date.now() - t0 < 60_000) {
    await new Promise((r) => setTimeout(r, 20));
  }
  expect(await health()).toBe('ok');
}

test('503 with Retry-After and /health "recovering" during recovery, 200 and golden text after', async () => {
  expect(await health()).toBe('ok');
  (devices[0] as GPUDevice).destroy();
  // The loss is reported asynchronously; the recovery (weights, plans, warm-up) then takes a while.
  const t0 = Date.now();
  let status = await health();
  while (status === 'ok' && Date.now() - t0 < 10_000) {
    await new Promise((r) => setTimeout(r, 5));
    status = await health();
  }
  expect(status).toBe('recovering');
  const during = await complete();
  expect(during.status).toBe(503);
  expect(Number(during.headers.get('retry-after'))).toBeGreaterThan(0);
  const body = (await during.json()) as { error: { message: string; code: string } };
  expect(body.error.code).toBe('device_recovering');
  expect(body.error.message).toMatch(/device was lost/);

  while ((await health()) === 'recovering' && Date.now() - t0 < 60_000) {
    await new Promise((r) => setTimeout(r, 20));
  }
  expect(await health()).toBe('ok');
  const after = await complete();
  expect(after.status).toBe(200);
  const text = ((await after.json()) as { choices: { text: string }[] }).choices[0]?.text ?? '';
  expect(text.length).toBeGreaterThan(0);
  expect(golden.startsWith(text)).toBe(true);
  expect(devices).toHaveLength(2);
}, 120_000);

test('a stream cut off by a device loss ends with a device_recovering error event, the next request 200', async () => {
  await untilHealthy();
  const device = devices.at(-1) as GPUDevice;
  const res = await fetch(`${server.url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({
      model: 'babyllama',
      prompt: PROMPT,
      max_tokens: 230,
      temperature: 0,
      stream: true,
    }),
  });
  expect(res.status).toBe(200);
  const reader = (res.body as ReadableStream<Uint8Array>).getReader();
  const decoder = new TextDecoder();
  let text = '';
  let destroyed = false;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    text += decoder.decode(value, { stream: true });
    // Destroyed once the first tokens have reached the client: the answer is cut off mid-way.
    if (!destroyed && text.includes('"text"')) {
      destroyed = true;
      device.destroy();
    }
  }
  expect(destroyed).toBe(true);
  const events = text
    .split('\n\n')
    .filter((e) => e.startsWith('data: {'))
    .map((e) => JSON.parse(e.slice(6)) as { error?: { code: string; message: string } });
  const last = events.at(-1);
  expect(last?.error?.code).toBe('device_recovering');
  expect(last?.error?.message).toMatch(/device was lost .*request can be retried/);
  expect(text).not.toContain('[DONE]');
  await untilHealthy();
  const after = await complete();
  expect(after.status).toBe(200);
  const answer = ((await after.json()) as { choices: { text: string }[] }).choices[0]?.text ?? '';
  expect(golden.startsWith(answer) && answer.length > 0).toBe(true);
}, 120_000);
