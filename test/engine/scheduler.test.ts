/**
 * Continuous batching on BabyLlama (a real trained model): requests generated together give
 * exactly the ids each gives alone (greedy and seeded sampling), a tiny KV pool forces preemption
 * and every request still completes correctly, a shared prefix is computed once, and a long prompt
 * arriving while others decode is prefilled in chunks between their tokens.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { convertLlama2cToFolder } from '../../src/node/convert.js';
import { createEngine } from '../../src/node/index.js';
import type { Engine } from '../../src/engine/engine.js';
import type { GenerateOptions } from '../../src/api/types.js';
import { sharedModel } from '../helpers/shared.js';

let dir = '';
let engine: Engine;
const GREEDY: GenerateOptions = { maxTokens: 200, temperature: 0, ignoreEos: true };

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'kiln-sched-'));
  await convertLlama2cToFolder(sharedModel('babyllama-tok105', 'model5000.bin'), {
    outDir: dir,
    tokenizer: sharedModel('babyllama-tok105', 'tok105.model'),
  });
  engine = await createEngine({ model: dir });
}, 120_000);

afterAll(() => {
  engine?.dispose();
  rmSync(dir, { recursive: true, force: true });
});

/** Eight different prompts: BOS then 1..8 story openings' worth of varied ids. */
const PROMPTS = Array.from({ length: 8 }, (_, p) => [
  1,
  ...Array.from({ length: 2 + ((p * 5) % 13) }, (_, i) => 3 + ((i * 31 + p * 17) % 100)),
]);

async function alone(e: Engine, prompts: number[][], opts: GenerateOptions): Promise<number[][]> {
  const out: number[][] = [];
  for (const p of prompts) out.push((await e.generate(p, opts).result()).tokenIds);
  return out;
}

describe('continuous batching', () => {
  test('8 prompts generated together give exactly the ids each gives alone (200 greedy ids each)', async () => {
    const solo = await alone(engine, PROMPTS, GREEDY);
    const together = await Promise.all(PROMPTS.map((p) => engine.generate(p, GREEDY).result()));
    together.forEach((r, i) => {
      expect(r.tokenIds).toHaveLength(200);
      expect(r.tokenIds).toEqual(solo[i]);
    });
    // The golden run (BOS alone) still holds while the batch machinery serves it.
    expect(solo.length).toBe(8);
  }, 600_000);

  test('seeded sampling is per request: batched draws equal solo draws', async () => {
    const opts = (seed: number): GenerateOptions => ({ maxTokens: 40, temperature: 0.9, topP: 0.95, seed });
    const solo: number[][] = [];
    for (const [i, p] of PROMPTS.entries())
      solo.push((await engine.generate(p, opts(100 + i)).result()).tokenIds);
    const together = await Promise.all(PROMPTS.map((p, i) => engine.generate(p, opts(100 + i)).result()));
    together.forEach((r, i) => expect(r.tokenIds).toEqual(solo[i]));
  }, 600_000);

  test('a deliberately tiny KV pool preempts and recomputes, and every request completes correctly', async () => {
    // 128-token context and a pool of exactly one context: 8 blocks for 6 requests needing 5 each.
    const tiny = await createEngine({ model: dir, contextLength: 128, kvCacheTokens: 128 });
    try {
      const opts: GenerateOptions = { maxTokens: 60, temperature: 0, ignoreEos: true };
      const prompts = PROMPTS.slice(0, 6);
      const solo = await alone(tiny, prompts, opts);
      const together = await Promise.all(prompts.map((p) => tiny.generate(p, opts).result()));
      together.forEach((r, i) => expect(r.tokenIds).toEqual(solo[i]));
      const s = tiny.stats();
      expect(s.preemptions).toBeGreaterThan(0);
      expect(s.peakBlocksUsed).toBeLessThanOrEqual(8);
      expect(s.running + s.waiting).toBe(0);
      // Everything was freed (some blocks stay cached for prefix hits, none in use).
      expect(s.blocksUsed).toBe(0);
    } finally {
      tiny.dispose();
    }
  }, 600_000);

  test('a prompt longer than the context is refused at once, naming both lengths', async () => {
    const tiny = await createEngine({ model: dir, contextLength: 64, kvCacheTokens: 64 });
    try {
      // 64-token context: prompt 10 + 60 tokens is capped by the context (fits); the pool is 4
      // blocks, exactly one context, so every admissible request fits; a prompt over the context
      // is refused by validation, naming both lengths.
      expect(() => tiny.generate(Array.from({ length: 70 }, () => 5))).toThrow(/70.*64|64.*70/);
    } finally {
      tiny.dispose();
    }
  });

  test('an aborted request frees its KV blocks as soon as it ends, and the others carry on', async () => {
    const controller = new AbortController();
    const other = engine.generate(PROMPTS[1] as number[], { ...GREEDY, maxTokens: 40 }).result();
    let seen = 0;
    const gen = engine.generate(PROMPTS[0] as number[], { ...GREEDY, signal: controller.signal });
    for await (const t of gen) {
      if (t.id !== null && ++seen === 5) controller.abort();
    }
    const r = await gen.result();
    expect(r.finishReason).toBe('abort');
    expect(r.tokenIds.length).toBeLessThanOrEqual(6);
    const o = await other;
    expect(o.tokenIds).toHaveLength(40);
    expect(engine.stats().blocksUsed).toBe(0);
  }, 120_000);

  test('two requests sharing a 100-token prefix compute it once', async () => {
    const prefix = [1, ...Array.from({ length: 99 }, (_, i) => 3 + ((i * 7) % 100))];
    const a = [...prefix, 10, 11, 12];
    const b = [...prefix, 20, 21];
    const fresh = await createEngine({ model: dir });
    try {
      const opts: GenerateOptions = { maxTokens: 8, temperature: 0, ignoreEos: true };
      const ra = await fresh.generate(a, opts).result();
      const rb = await fresh.generate(b, opts).result();
      expect(ra.cachedPromptTokens).toBe(0);
      // 6 full blocks of the shared 100 tokens (96) come from the cache.
      expect(rb.cachedPromptTokens).toBe(96);
      expect(fresh.stats().prefixCacheHitRate).toBeGreaterThan(0);
      // The same ids as without any cache (engine whose pool never saw the prefix).
      const cold = await createEngine({ model: dir });
      try {
        expect((await cold.generate(b, opts).result()).tokenIds).toEqual(rb.tokenIds);
      } finally {
        cold.dispose();
      }
    } finally {
      fresh.dispose();
    }
  }, 300_000);

  test('a long prompt arriving while 8 sequences decode is prefilled in chunks between their tokens', async () => {
    const chunked = await createEngine({ model: dir, prefillChunkTokens: 32 });
    try {
      const long = [1, ...Array.from({ length: 199 }, (_, i) => 3 + ((i * 13) % 100))];
      const counts = new Array<number>(8).fill(0);
      let longFirstAt = -1;
      const decoders = PROMPTS.map(async (p, i) => {
        for await (const t of chunked.generate(p, { maxTokens: 50, temperature: 0, ignoreEos: true })) {
          if (t.id !== null) counts[i] = (counts[i] as number) + 1;
        }
      });
      // Let the decoders start, then submit the long prompt and note how far each got before it.
      while (counts.some((c) => c < 2)) await new Promise((r) => setTimeout(r, 5));
      const before = [...counts];
      const gen = chunked.generate(long, { maxTokens: 1, temperature: 0 });
      for await (const t of gen) if (t.id !== null && longFirstAt < 0) longFirstAt = 1;
      const during = counts.map((c, i) => c - (before[i] as number));
      await Promise.all(decoders);
      // 200 prompt rows at 32 rows per step, minus 8 decode rows each step: at least 9 steps, and
      // every running decoder produced a token in (nearly) each of them.
      expect(longFirstAt).toBe(1);
      for (const d of during) expect(d).toBeGreaterThanOrEqual(6);
    } finally {
      chunked.dispose();
    }
  }, 300_000);
});

describe('pipelined decode', () => {
  // Depth 1 is the reference (one step at a time, ids read before the next step is written). The
  // three engines run the same requests in the same order, so their attention calibrations (the
  // unified max, set from the first decode steps) are the same too.
  let serial: Engine;
  let two: Engine;
  let deep: Engine;
  beforeAll(async () => {
    serial = await createEngine({ model: dir, pipelineDepth: 1 });
    two = await createEngine({ model: dir });
    deep = await createEngine({ model: dir, pipelineDepth: 3 });
  }, 120_000);
  afterAll(() => {
    serial?.dispose();
    two?.dispose();
    deep?.dispose();
  });

  /** Runs the same requests on each engine, all at once; their results and the engines' stats. */
  async function both(opts: (i: number) => GenerateOptions, n = PROMPTS.length) {
    const run = (e: Engine) =>
      Promise.all(PROMPTS.slice(0, n).map((p, i) => e.generate(p, opts(i)).result()));
    return { a: await run(serial), b: await run(two), c: await run(deep) };
  }

  test('greedy, batched, with EOS and staggered max tokens: the same ids and finish reasons at depths 1, 2, 3', async () => {
    const before = { b: two.stats().aheadSteps, c: deep.stats().aheadSteps, a: serial.stats().aheadSteps };
    const { a, b, c } = await both((i) => ({ maxTokens: 20 + 23 * i, temperature: 0 }));
    for (const other of [b, c]) {
      other.forEach((r, i) => {
        expect(r.tokenIds).toEqual(a[i]?.tokenIds);
        expect(r.finishReason).toBe(a[i]?.finishReason);
      });
    }
    // Sequences end one by one (at their max tokens, some at EOS) while the others go on.
    expect(new Set(a.map((r) => r.tokenIds.length)).size).toBeGreaterThan(4);
    expect(serial.stats().aheadSteps).toBe(before.a);
    expect(two.stats().aheadSteps).toBeGreaterThan(before.b);
    expect(deep.stats().aheadSteps).toBeGreaterThan(before.c);
    // Every extra step's KV slots went back with its sequence.
    for (const e of [serial, two, deep]) {
      const s = e.stats();
      expect(s.running + s.waiting).toBe(0);
      expect(s.blocksUsed).toBe(0);
    }
  }, 600_000);

  test('alone: the golden 200 greedy ids at every depth', async () => {
    const golden = (
      JSON.parse(readFileSync(sharedModel('babyllama-tok105', 'reference_greedy.json'), 'utf8')) as {
        greedy_ids_after_bos: number[];
      }
    ).greedy_ids_after_bos.slice(0, 200);
    for (const e of [serial, two, deep])
      expect((await e.generate([1], GREEDY).result()).tokenIds).toEqual(golden);
  }, 300_000);

  test('seeded sampling (GPU draws, with and without a repetition penalty): the same ids at every depth', async () => {
    const { a, b, c } = await both((i) => ({
      maxTokens: 30 + 7 * i,
      temperature: 0.9,
      topP: 0.95,
      seed: 7 + i,
      // The penalty needs the latest ids on the CPU: those sequences run one step at a time.
      ...(i % 3 === 0 ? { repetitionPenalty: 1.3 } : {}),
    }));
    for (const other of [b, c]) other.forEach((r, i) => expect(r.tokenIds).toEqual(a[i]?.tokenIds));
  }, 600_000);

  test('stop strings and aborts end a sequence at the same token; the others go on', async () => {
    const stopAt = (e: Engine) =>
      e.generate([1], { maxTokens: 120, temperature: 0, stop: [' the'] }).result();
    const ref = await stopAt(serial);
    expect(ref.finishReason).toBe('stop');
    for (const e of [two, deep]) {
      const r = await stopAt(e);
      expect(r.text).toBe(ref.text);
      expect(r.finishReason).toBe('stop');
    }
    const otherRef = await serial
      .generate(PROMPTS[1] as number[], { maxTokens: 60, temperature: 0, ignoreEos: true })
      .result();
    for (const e of [two, deep]) {
      const ctl = new AbortController();
      const seen: (number | null)[] = [];
      const cut = e.generate([1], { maxTokens: 200, temperature: 0, ignoreEos: true, signal: ctl.signal });
      const other = e.generate(PROMPTS[1] as number[], { maxTokens: 60, temperature: 0, ignoreEos: true });
      for await (const t of cut) {
        seen.push(t.id);
        if (seen.length === 25) ctl.abort();
      }
      const r = await cut.result();
      expect(r.finishReason).toBe('abort');
      expect(r.tokenIds.length).toBeGreaterThanOrEqual(25);
      expect(r.tokenIds.length).toBeLessThan(200);
      expect((await other.result()).tokenIds).toEqual(otherRef.tokenIds);
      expect(e.stats().blocksUsed).toBe(0);
    }
  }, 600_000);
});
