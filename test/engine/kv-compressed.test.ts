/**
 * Compressed KV caches end to end on BabyLlama (a real trained model, head_dim 16):
 * the scheduler's machinery is format-blind, so with an int4 / GEAR cache (gear4lr: with its
 * recent window, whose lanes follow preemption and copy-on-write) requests generated
 * together give exactly the ids each gives alone, a tiny pool preempts and recomputes correctly,
 * and a shared prefix (copy-on-write blocks of compressed rows) gives the same ids as a cold
 * engine. Quality against f16 is `kiln eval`'s (README); kernels are tested in
 * test/kernels/kv-quant.test.ts.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import type { GenerateOptions } from '../../src/api/types.js';
import type { Engine } from '../../src/engine/engine.js';
import { kvBlockBytes } from '../../src/engine/kv/cache.js';
import { convertLlama2cToFolder } from '../../src/node/convert.js';
import { createEngine } from '../../src/node/index.js';
import { InvalidRequestError } from '../../src/errors.js';
import { sharedModel } from '../helpers/shared.js';

let dir = '';

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'kiln-kvq-'));
  await convertLlama2cToFolder(sharedModel('babyllama-tok105', 'model5000.bin'), {
    outDir: dir,
    tokenizer: sharedModel('babyllama-tok105', 'tok105.model'),
  });
}, 120_000);

afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

const PROMPTS = Array.from({ length: 6 }, (_, p) => [
  1,
  ...Array.from({ length: 2 + ((p * 5) % 13) }, (_, i) => 3 + ((i * 31 + p * 17) % 100)),
]);

async function alone(e: Engine, prompts: number[][], opts: GenerateOptions): Promise<number[][]> {
  const out: number[][] = [];
  for (const p of prompts) out.push((await e.generate(p, opts).result()).tokenIds);
  return out;
}

describe.each(['int4', 'gear2', 'gear4lr'] as const)('%s KV cache', (kvCache) => {
  test('the engine reports the format and blocks are smaller than f16 ones', async () => {
    const e = await createEngine({ model: dir, kvCache, contextLength: 64, kvCacheTokens: 64 });
    try {
      expect(e.kvCacheDtype).toBe(kvCache);
      expect(kvBlockBytes(e.spec, kvCache)).toBeLessThan(kvBlockBytes(e.spec, 'f16'));
    } finally {
      e.dispose();
    }
  });

  test('batched = solo, and a tiny pool preempts and recomputes correctly', async () => {
    const tiny = await createEngine({ model: dir, kvCache, contextLength: 128, kvCacheTokens: 128 });
    try {
      const opts: GenerateOptions = { maxTokens: 60, temperature: 0, ignoreEos: true };
      const solo = await alone(tiny, PROMPTS, opts);
      const together = await Promise.all(PROMPTS.map((p) => tiny.generate(p, opts).result()));
      together.forEach((r, i) => expect(r.tokenIds).toEqual(solo[i]));
      const s = tiny.stats();
      expect(s.preemptions).toBeGreaterThan(0);
      expect(s.blocksUsed).toBe(0);
    } finally {
      tiny.dispose();
    }
  }, 600_000);

  test('a shared 100-token prefix comes from the cache and gives the cold ids', async () => {
    const prefix = [1, ...Array.from({ length: 99 }, (_, i) => 3 + ((i * 7) % 100))];
    const opts: GenerateOptions = { maxTokens: 8, temperature: 0, ignoreEos: true };
    const warm = await createEngine({ model: dir, kvCache });
    const cold = await createEngine({ model: dir, kvCache });
    try {
      await warm.generate([...prefix, 10, 11, 12], opts).result();
      const rb = await warm.generate([...prefix, 20, 21], opts).result();
      expect(rb.cachedPromptTokens).toBe(96);
      expect((await cold.generate([...prefix, 20, 21], opts).result()).tokenIds).toEqual(rb.tokenIds);
    } finally {
      warm.dispose();
      cold.dispose();
    }
  }, 300_000);
});

test('an unknown kvCache names the field and the choices', async () => {
  await expect(createEngine({ model: dir, kvCache: 'int3' as 'int4' })).rejects.toThrow(InvalidRequestError);
  await expect(createEngine({ model: dir, kvCache: 'int3' as 'int4' })).rejects.toThrow(/kvCache.*gear2/);
});
