/**
 * Pipelined decode of constrained and edited rows (schedule/adjusted-burst.ts) on BabyLlama, a real
 * trained model: the forward pass of step t+1 runs while the CPU reads id t back and computes the
 * grammar's mask (or the logit edits) of step t+1 from it. Depth 1 (one step at a time, every mask
 * computed before its step is submitted) is the reference; depth 2 must give the same tokens,
 * finish reasons and logprobs, and its stats must show the steps ran ahead:
 * - greedy with a JSON Schema, alone: a long reply, and one the grammar ends early (the forward
 *   pass in flight is discarded and its KV slot freed);
 * - a batch mixing two grammars (one seeded-sampled with logprobs), a free greedy row and a
 *   seeded row with logit bias and presence / frequency penalties;
 * - a repetition penalty (drawn on the GPU over the tokens so far);
 * - a prompt served from the prefix cache.
 * Both engines run the same requests in the same order, so their attention calibrations (set by
 * the first decode steps, before any burst) are the same too.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import type { GenerateOptions, GrammarSpec } from '../../src/api/types.js';
import type { Engine } from '../../src/engine/engine.js';
import { convertLlama2cToFolder } from '../../src/node/convert.js';
import { createEngine } from '../../src/node/index.js';
import { sharedModel } from '../helpers/shared.js';

let dir = '';
let serial: Engine;
let two: Engine;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'kiln-cpipe-'));
  await convertLlama2cToFolder(sharedModel('babyllama-tok105', 'model5000.bin'), {
    outDir: dir,
    tokenizer: sharedModel('babyllama-tok105', 'tok105.model'),
  });
  serial = await createEngine({ model: dir, pipelineDepth: 1 });
  two = await createEngine({ model: dir, pipelineDepth: 2 });
}, 120_000);

afterAll(() => {
  serial?.dispose();
  two?.dispose();
  rmSync(dir, { recursive: true, force: true });
});

/** Strings long enough that the reply runs to its max tokens, the mask changing every token. */
const STRINGS: GrammarSpec = {
  type: 'json_schema',
  schema: { type: 'array', items: { type: 'string', minLength: 16, maxLength: 24 }, minItems: 16 },
};
/** A short reply the grammar completes well before its max tokens. */
const PETS: GrammarSpec = {
  type: 'json_schema',
  schema: { type: 'array', items: { enum: ['cat', 'dog', 'bird'] }, minItems: 1, maxItems: 2 },
};
const PROMPT = [1, 45, 50, 63];

interface Run {
  ids: number[];
  finish: string;
  logprobs: { logprob: number; top: { id: number; logprob: number }[] }[];
}

async function run(e: Engine, prompt: readonly number[], opts: GenerateOptions): Promise<Run> {
  const g = e.generate(prompt, opts);
  const ids: number[] = [];
  const logprobs: Run['logprobs'] = [];
  for await (const t of g) {
    if (t.id === null) continue;
    ids.push(t.id);
    if (t.logprob)
      logprobs.push({
        logprob: t.logprob.logprob,
        top: t.logprob.top.map(({ id, logprob }) => ({ id, logprob })),
      });
  }
  return { ids, finish: (await g.result()).finishReason, logprobs };
}

/**
 * Runs the same requests, all at once, on the depth-1 and the depth-2 engine; checks they agree
 * exactly (the same plans compute the same logits, so logprobs are equal to the bit) and returns
 * the depth-2 runs and how many of its steps were adjusted steps run ahead.
 */
async function same(
  reqs: { prompt: readonly number[]; opts: GenerateOptions }[],
): Promise<{ runs: Run[]; ahead: number }> {
  const a = await Promise.all(reqs.map((r) => run(serial, r.prompt, r.opts)));
  const before = two.stats().adjustedAheadSteps;
  const b = await Promise.all(reqs.map((r) => run(two, r.prompt, r.opts)));
  expect(b).toEqual(a);
  expect(serial.stats().adjustedAheadSteps).toBe(0);
  for (const e of [serial, two]) {
    const s = e.stats();
    expect(s.running + s.waiting).toBe(0);
    // Every step run ahead gave its KV slot back with its sequence.
    expect(s.blocksUsed).toBe(0);
  }
  return { runs: b, ahead: two.stats().adjustedAheadSteps - before };
}

describe('pipelined constrained decode equals one step at a time', () => {
  test('greedy with a JSON Schema, alone: a long reply, and one its grammar ends early', async () => {
    // Calibration's first steps (unpipelined on both engines) before the runs compared.
    await same([{ prompt: PROMPT, opts: { maxTokens: 8, temperature: 0 } }]);
    const long = await same([{ prompt: PROMPT, opts: { maxTokens: 48, temperature: 0, grammar: STRINGS } }]);
    const [r] = long.runs as [Run];
    expect(r.ids).toHaveLength(48);
    expect(r.finish).toBe('length');
    // All but the burst's first step and the last (max tokens is known ahead) ran ahead.
    expect(long.ahead).toBeGreaterThanOrEqual(40);
    const short = await same([{ prompt: PROMPT, opts: { maxTokens: 40, temperature: 0, grammar: PETS } }]);
    const [p] = short.runs as [Run];
    expect(p.finish).toBe('stop');
    expect(p.ids.length).toBeLessThan(40);
    expect(short.ahead).toBeGreaterThan(0);
    const text = await two.generate(PROMPT, { maxTokens: 40, temperature: 0, grammar: PETS }).result();
    const pets = JSON.parse(text.text) as string[];
    expect(pets.length).toBeGreaterThanOrEqual(1);
  }, 300_000);

  test('a batch of two grammars (one sampled, with logprobs), a free row and logit edits', async () => {
    const { runs, ahead } = await same([
      { prompt: PROMPT, opts: { maxTokens: 32, temperature: 0, grammar: STRINGS } },
      { prompt: [1, 60, 61], opts: { maxTokens: 32, temperature: 0.9, seed: 7, grammar: PETS, logprobs: 3 } },
      { prompt: [1, 70], opts: { maxTokens: 32, temperature: 0, ignoreEos: true } },
      {
        prompt: [1, 33, 34, 35],
        opts: {
          maxTokens: 32,
          temperature: 0.8,
          seed: 3,
          ignoreEos: true,
          logitBias: { 30: 2.5, 40: -3 },
          presencePenalty: 0.6,
          frequencyPenalty: 0.3,
          logprobs: 2,
        },
      },
    ]);
    expect(runs[1]?.logprobs.length).toBe(runs[1]?.ids.length);
    expect(runs[3]?.ids).toHaveLength(32);
    expect(ahead).toBeGreaterThan(10);
  }, 300_000);

  test('a repetition penalty drawn on the GPU over the tokens so far', async () => {
    const { runs, ahead } = await same([
      { prompt: PROMPT, opts: { maxTokens: 32, temperature: 0, repetitionPenalty: 1.3, ignoreEos: true } },
      {
        prompt: [1, 50],
        opts: { maxTokens: 32, temperature: 1, seed: 9, repetitionPenalty: 1.2, ignoreEos: true },
      },
    ]);
    expect(runs[0]?.ids).toHaveLength(32);
    expect(ahead).toBeGreaterThan(20);
  }, 300_000);

  test('a prompt served from the prefix cache', async () => {
    // 40 prompt tokens: two full 16-token blocks cached by the first run, reused by the second.
    const prompt = [1, ...Array.from({ length: 39 }, (_, i) => 3 + ((i * 37) % 100))];
    const opts: GenerateOptions = {
      maxTokens: 24,
      temperature: 0.7,
      seed: 11,
      grammar: STRINGS,
      logprobs: 1,
    };
    await same([{ prompt, opts }]);
    const hits = [serial.stats().prefixHitTokens, two.stats().prefixHitTokens];
    // The same prompt again: its prefill (on both engines) starts after the cached blocks. (Its
    // logits need not equal the first run's to the bit: the cached rows were a longer prefill.)
    const again = await same([{ prompt, opts }]);
    expect(serial.stats().prefixHitTokens - (hits[0] as number)).toBeGreaterThanOrEqual(32);
    expect(two.stats().prefixHitTokens - (hits[1] as number)).toBeGreaterThanOrEqual(32);
    expect(again.runs[0]?.ids).toHaveLength(24);
    expect(again.ahead).toBeGreaterThan(10);
  }, 300_000);
});
