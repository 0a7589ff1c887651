/**
 * The memory planner (src/engine/memory.ts) on BabyLlama, a real trained model: under a small
 * `--memory-limit` and under a reduced storage-binding limit it chooses a smaller context, says
 * so (in `kiln run --json` and the server's /health), and generation then gives the golden ids.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, test } from 'vitest';
import type { MemoryPlan } from '../../src/api/types.js';
import { kvBlockBytes } from '../../src/engine/kv/cache.js';
import { convertLlama2cToFolder } from '../../src/node/convert.js';
import { createEngine } from '../../src/node/index.js';
import { startServer } from '../../src/node/serve.js';
import { repoRoot, sharedModel } from '../helpers/shared.js';

const dir = mkdtempSync(join(tmpdir(), 'kiln-plan-'));
let golden: number[] = [];

beforeAll(async () => {
  await convertLlama2cToFolder(sharedModel('babyllama-tok105', 'model5000.bin'), {
    outDir: dir,
    tokenizer: sharedModel('babyllama-tok105', 'tok105.model'),
  });
  golden = (
    JSON.parse(readFileSync(sharedModel('babyllama-tok105', 'reference_greedy.json'), 'utf8')) as {
      greedy_ids_after_bos: number[];
    }
  ).greedy_ids_after_bos;
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function kiln(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [join(repoRoot, 'bin', 'kiln.js'), ...args], { stdio: 'pipe' });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('close', (code) => resolve({ code: code ?? -1, stdout, stderr }));
  });
}

test('kiln run --memory-limit 5 (MiB): the context is cut to fit, said in --json, and the ids are golden', async () => {
  const r = await kiln([
    'run',
    '--model',
    dir,
    '--prompt',
    '',
    '--max-tokens',
    '100',
    '--json',
    '--memory-limit',
    '5',
  ]);
  expect(r.code, r.stderr).toBe(0);
  const out = JSON.parse(r.stdout) as { token_ids: number[]; memory_plan: MemoryPlan };
  const plan = out.memory_plan;
  // Weights 3.6 MiB and a 256-token chunk's activations leave less than the default 256 tokens.
  expect(plan.requestedContext).toBe(256);
  expect(plan.contextLength).toBeLessThan(256);
  expect(plan.contextLength).toBeGreaterThanOrEqual(101);
  expect(plan.contextLength % 16).toBe(0);
  expect(plan.total).toBeLessThanOrEqual(5 * 2 ** 20);
  expect(plan.weights + plan.kvCache + plan.activations + plan.scratch).toBe(plan.total);
  expect(plan.note).toContain(`context was cut from 256 to ${plan.contextLength} tokens`);
  expect(out.token_ids).toEqual(golden.slice(0, 100));

  const none = await kiln([
    'run',
    '--model',
    dir,
    '--prompt',
    '',
    '--max-tokens',
    '1',
    '--memory-limit',
    '3',
  ]);
  expect(none.code).toBe(1);
  expect(none.stderr).toMatch(
    /needs 3\.\d+ MiB of GPU memory even with a 16-token context .* memory limit of 3\.00 MiB/,
  );
});

test('a reduced storage-binding limit: one layer of KV in 8 blocks gives a 128-token context, golden ids, and /health says so', async () => {
  // An f32 cache so the block size (and so the cap) does not depend on the adapter's f16 support.
  const probe = await createEngine({ model: dir, kvCache: 'f32', contextLength: 16 });
  const binding = 8 * kvBlockBytes(probe.spec, 'f32');
  probe.dispose();
  const engine = await createEngine({
    model: dir,
    kvCache: 'f32',
    limits: { maxStorageBufferBindingSize: binding },
  });
  try {
    expect(engine.contextLength).toBe(128);
    expect(engine.memoryPlan?.kvBlocks).toBe(8);
    expect(engine.memoryPlan?.note).toMatch(/one buffer binding \(.*\), which holds 128 tokens/);
    const ids = (await engine.generate([1], { maxTokens: 120, temperature: 0 }).result()).tokenIds;
    expect(ids).toEqual(golden.slice(0, 120));
    const server = await startServer({ engine, modelId: 'baby', port: 0 });
    try {
      const health = (await (await fetch(`${server.url}/health`)).json()) as { memory_plan: MemoryPlan };
      expect(health.memory_plan.contextLength).toBe(128);
      expect(health.memory_plan.bindingBytes).toBe(binding);
    } finally {
      await server.close(1000);
    }
  } finally {
    engine.dispose();
  }
});
