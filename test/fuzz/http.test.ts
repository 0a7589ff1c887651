/**
 * Fuzzing `kiln serve` over HTTP (bench/fuzz/http.ts): mutated bodies for both OpenAI routes against
 * a real server on loopback over BabyLlama, with a fixed seed. Every answer must be a complete 200
 * or an OpenAI-shaped 4xx; afterwards the server still gives the golden greedy text and every KV
 * block has returned.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { httpTarget } from '../../bench/fuzz/http.js';
import { runFuzz } from '../../bench/fuzz/run.js';
import type { Engine } from '../../src/engine/engine.js';
import { convertLlama2cToFolder } from '../../src/node/convert.js';
import { createEngine } from '../../src/node/index.js';
import { startServer, type RunningServer } from '../../src/node/serve.js';
import { sharedModel } from '../helpers/shared.js';

const KEY = 'fuzz-key';
let dir = '';
let engine: Engine;
let server: RunningServer;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'kiln-fuzz-http-'));
  await convertLlama2cToFolder(sharedModel('babyllama-tok105', 'model5000.bin'), {
    outDir: dir,
    tokenizer: sharedModel('babyllama-tok105', 'tok105.model'),
  });
  engine = await createEngine({ model: dir });
  server = await startServer({ engine, modelId: 'babyllama', port: 0, apiKey: KEY });
});

afterAll(async () => {
  await server?.close(1000);
  engine?.dispose();
  rmSync(dir, { recursive: true, force: true });
});

test('mutated request bodies end in a complete 200 or an OpenAI 4xx, and the server stays whole', async () => {
  const r = await runFuzz(httpTarget(server.url, 'babyllama', KEY), {
    seed: 0x4b1e,
    numRuns: 150,
    // A valid request may generate up to the whole context (max_tokens null) on a loaded CPU.
    caseTimeoutMs: 60_000,
  });
  expect(r.outcomes['HTTP 200'] ?? 0, JSON.stringify(r.outcomes)).toBeGreaterThan(0);
  expect(r.outcomes['HTTP 400'] ?? 0, JSON.stringify(r.outcomes)).toBeGreaterThan(0);

  const golden = readFileSync(sharedModel('babyllama-tok105', 'greedy_t0_n256.runc.txt'), 'utf8');
  const res = await fetch(`${server.url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${KEY}` },
    body: JSON.stringify({ model: 'babyllama', prompt: 'Once upon a time', max_tokens: 20, temperature: 0 }),
  });
  const text = ((await res.json()) as { choices: { text: string }[] }).choices[0]?.text ?? '';
  expect(text.length).toBeGreaterThan(0);
  expect(golden.slice('Once upon a time'.length).startsWith(text)).toBe(true);
  const s = engine.stats();
  expect(s.running + s.waiting).toBe(0);
  expect(s.blocksUsed).toBe(0);
});
