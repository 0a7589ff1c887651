/**
 * Releasing sliding layers' KV (src/engine/kv/sliding-pool.ts) end to end: Gemma 2, Gemma 3,
 * Mistral (every layer sliding: no full pool at all) and Qwen2 (max_window_layers) checkpoints
 * whose windows are far shorter than prompt + generation, served at a 128-token context in
 * 16-row prefill chunks so that each sequence's sliding layers hold a few blocks while its full
 * layers hold all of them. Greedy ids equal the float64 reference's for 64 steps alone, batched
 * with staggered lengths, with preemption, beside prefix caching (off with a sliding pool, on
 * with `slidingKv: 'keep'`), and with speculative decoding; the sliding pool's blocks per
 * sequence stay within the window's bound while the full pool's grow with the sequence. With
 * f16, int4 and GEAR low-rank KV, seeded sampling and three steps in flight, released and kept
 * blocks give the same ids bit for bit.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, test } from 'vitest';
import { openCheckpoint } from '../../src/io/safetensors-checkpoint.js';
import { ReferenceModel } from '../../src/model/reference.js';
import { openLocalModelDir } from '../../src/node/fs-model-dir.js';
import { createEngine } from '../../src/node/index.js';
import type { MemoryPlan } from '../../src/api/types.js';
import { kvBlockBytes } from '../../src/engine/kv/cache.js';
import type { TestModelOptions } from '../helpers/checkpoints.js';
import { writeTestModel } from '../helpers/checkpoints.js';
import { ARCH_CASES } from '../helpers/arch-cases.js';

/** A reference step whose top-two logits are closer than this may legitimately flip (2 × 1e-4, as sliding-window.test.ts). */
const TIE_MARGIN = 2e-4;
const STEPS = 64;
const CONTEXT = 128;
const CHUNK = 16;
const GREEDY = { maxTokens: STEPS, temperature: 0, ignoreEos: true } as const;

const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

const arch = (a: string) => {
  const c = ARCH_CASES.find((x) => x.opts.architecture === a);
  if (!c) throw new Error(`no ${a} case`);
  return c.opts;
};

const cases: { name: string; opts: TestModelOptions; sliding: boolean[] }[] = [
  { name: 'Gemma 2 (window 12 on layer 0)', opts: arch('Gemma2ForCausalLM'), sliding: [true, false] },
  { name: 'Gemma 3 (window 10 on layer 0)', opts: arch('Gemma3ForCausalLM'), sliding: [true, false] },
  {
    name: 'Mistral (window 20 on every layer)',
    opts: { architecture: 'MistralForCausalLM', layers: 2, seed: 211, config: { sliding_window: 20 } },
    sliding: [true, true],
  },
  {
    name: 'Qwen2 (window 13 on layers 1-2)',
    opts: {
      architecture: 'Qwen2ForCausalLM',
      layers: 3,
      tie: true,
      seed: 201,
      config: { use_sliding_window: true, sliding_window: 13, max_window_layers: 1 },
    },
    sliding: [false, true, true],
  },
];

const prompt = (length: number, salt: number) => [
  1,
  ...Array.from({ length: length - 1 }, (_, i) => 3 + ((i * 37 + salt * 11 + 7) % 102)),
];

/** The reference's greedy ids, or null when a step's top two logits are a near-tie. */
function referenceIds(ref: ReferenceModel, p: readonly number[], steps = STEPS): number[] | null {
  const ctx = [...p];
  const ids: number[] = [];
  for (let s = 0; s < steps; s++) {
    const last = ref.forward(ctx).at(-1) as Float64Array;
    let best = 0;
    for (let j = 1; j < last.length; j++) if ((last[j] as number) > (last[best] as number)) best = j;
    let second = -Infinity;
    for (let j = 0; j < last.length; j++) if (j !== best) second = Math.max(second, last[j] as number);
    if ((last[best] as number) - second < TIE_MARGIN) return null;
    ids.push(best);
    ctx.push(best);
  }
  return ids;
}

/** The first prompts of these lengths (salts tried in order) whose 64 reference steps have no near-tie. */
function prompts(ref: ReferenceModel, lengths: readonly number[]) {
  return lengths.map((length, i) => {
    for (let salt = i * 10; salt < i * 10 + 10; salt++) {
      const p = prompt(length, salt);
      const ids = referenceIds(ref, p);
      if (ids) return { p, ids };
    }
    throw new Error(`no prompt of ${length} tokens without a near-tie`);
  });
}

describe('sliding layers release their KV blocks: greedy ids equal the reference', () => {
  test.each(cases)(
    '$name',
    async ({ opts, sliding }) => {
      const dir = mkdtempSync(join(tmpdir(), 'kiln-slide-kv-'));
      dirs.push(dir);
      const spec = writeTestModel(dir, { ...opts, maxPositions: CONTEXT });
      const ckpt = await openCheckpoint(openLocalModelDir(dir));
      const ref = await ReferenceModel.load(spec, ckpt).finally(() => ckpt.close());
      // Staggered: 30, 17 and 45 prompt tokens, each then 64 generated (up to 109 tokens, windows 10-20).
      const [alone, b, c] = prompts(ref, [30, 17, 45]) as [
        { p: number[]; ids: number[] },
        { p: number[]; ids: number[] },
        { p: number[]; ids: number[] },
      ];
      // Each sequence's sliding layers hold at most floor((W + 16 - 2) / 16) + 2 blocks (3 or 4).
      const bound = Math.floor((Math.max(...spec.layerWindows) + CHUNK - 2) / 16) + 2;
      const base = { model: dir, kvCache: 'f32', contextLength: CONTEXT, prefillChunkTokens: CHUNK } as const;

      const engine = await createEngine(base);
      try {
        const plan = engine.memoryPlan as MemoryPlan;
        // The sliding layers' pool holds the windows of as many whole-context sequences as the
        // full pool holds, and the plan's KV bytes are those layers' buffers at its size.
        expect(plan.slidingKvBlocks).toBe(Math.ceil(plan.kvBlocks / (CONTEXT / 16)) * bound);
        const block = 2 * kvBlockBytes(spec, 'f32');
        expect(plan.kvCache).toBe(
          sliding.reduce((sum, sl) => sum + (sl ? plan.slidingKvBlocks : plan.kvBlocks) * block, 0),
        );
        // ... which is what the engine allocated.
        expect(engine.kvCacheBytes).toBe(plan.kvCache);
        const r = await engine.generate(alone.p, GREEDY).result();
        expect(r.tokenIds).toEqual(alone.ids);
        const st = engine.stats();
        // 94 tokens: the full pool held 6 blocks for it; its sliding layers never more than the bound.
        expect(st.peakBlocksUsed).toBe(6);
        expect(st.peakSlidingBlocksPerSequence).toBeLessThanOrEqual(bound);
        expect(st.peakSlidingBlocksPerSequence).toBeLessThan(6);
        expect(st.slidingBlocksUsed).toBe(0);

        // Batched, staggered lengths, submitted one after another while the others decode.
        const runs = [alone, b, c].map((x, i) =>
          new Promise((res) => setTimeout(res, i * 50)).then(() => engine.generate(x.p, GREEDY).result()),
        );
        const got = await Promise.all(runs);
        [alone, b, c].forEach((x, i) => expect(got[i]?.tokenIds).toEqual(x.ids));
        expect(engine.stats().peakSlidingBlocksPerSequence).toBeLessThanOrEqual(bound);

        // Prefix caching is off beside a sliding pool: a prompt repeating an earlier one (two full
        // blocks and more) is computed whole, and still right.
        const again = await engine.generate(c.p, GREEDY).result();
        expect(again.cachedPromptTokens).toBe(0);
        expect(again.tokenIds).toEqual(c.ids);
      } finally {
        engine.dispose();
      }

      // A full pool of 10 blocks: three sequences of up to 7 blocks each preempt one another.
      const small = await createEngine({ ...base, kvCacheTokens: 160 });
      try {
        const got = await Promise.all([alone, b, c].map((x) => small.generate(x.p, GREEDY).result()));
        [alone, b, c].forEach((x, i) => expect(got[i]?.tokenIds).toEqual(x.ids));
        expect(small.stats().preemptions).toBeGreaterThan(0);
      } finally {
        small.dispose();
      }

      // 'keep': every layer keeps every block, and prefix caching serves the shared prefix.
      const keep = await createEngine({ ...base, slidingKv: 'keep' });
      try {
        expect(keep.memoryPlan?.slidingKvBlocks).toBe(0);
        expect(keep.kvCacheBytes).toBe(keep.memoryPlan?.kvCache);
        await keep.generate(c.p, GREEDY).result();
        const r = await keep.generate(c.p, GREEDY).result();
        expect(r.cachedPromptTokens).toBe(32);
        expect(r.tokenIds).toEqual(c.ids);
        expect(keep.stats().slidingBlocks).toBe(0);
      } finally {
        keep.dispose();
      }

      // Speculative decoding (guesses verified as extra rows, rejected slots truncated).
      const spec8 = await createEngine({
        ...base,
        speculative: { method: 'both', maxDraft: 4, timed: false },
      });
      try {
        for (const x of [alone, c]) {
          const r = await spec8.generate(x.p, GREEDY).result();
          expect(r.tokenIds).toEqual(x.ids);
        }
        const st = spec8.stats();
        expect(st.draftedTokens).toBeGreaterThan(0);
        expect(st.peakSlidingBlocksPerSequence).toBeLessThanOrEqual(bound);
      } finally {
        spec8.dispose();
      }
    },
    600_000,
  );
});

describe('released or kept, the same tokens: compressed KV formats, seeded sampling, depth 3', () => {
  // Released blocks change where a sliding layer's rows live, never their values: with the same
  // format every kernel computes the same numbers, so the ids are equal bit for bit, sampled ones
  // included (the same uniforms). The compressed formats write whole rows (kv_quantize) and, for
  // GEAR's low-rank ones, the factors of blocks a step wrote whole, all through the sliding slots.
  test.each(['f16', 'int4', 'gear4lr'] as const)(
    'Gemma 3, %s KV',
    async (kvCache) => {
      const dir = mkdtempSync(join(tmpdir(), 'kiln-slide-eq-'));
      dirs.push(dir);
      writeTestModel(dir, { ...arch('Gemma3ForCausalLM'), maxPositions: CONTEXT });
      const base = {
        model: dir,
        kvCache,
        contextLength: CONTEXT,
        prefillChunkTokens: CHUNK,
        pipelineDepth: 3,
      };
      const requests = [
        { p: prompt(30, 1), o: GREEDY },
        { p: prompt(21, 2), o: { maxTokens: STEPS, temperature: 0.8, topK: 20, seed: 7, ignoreEos: true } },
      ];
      const ids: number[][][] = [];
      for (const slidingKv of ['release', 'keep'] as const) {
        const engine = await createEngine({ ...base, slidingKv });
        try {
          const got = await Promise.all(requests.map((r) => engine.generate(r.p, r.o).result()));
          ids.push(got.map((g) => g.tokenIds));
          const peak = engine.stats().peakSlidingBlocksPerSequence;
          // Released: a sliding pool in use, each sequence within its bound; kept: none.
          if (slidingKv === 'release') expect([peak > 0, peak <= 3]).toEqual([true, true]);
          else expect(peak).toBe(0);
        } finally {
          engine.dispose();
        }
      }
      expect(ids[0]?.[0]?.length).toBe(STEPS);
      expect(ids[0]).toEqual(ids[1]);
    },
    600_000,
  );
});

test('an all-sliding model under a binding too small for a full-context layer keeps its context (only its sliding pool is allocated)', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'kiln-slide-bind-'));
  dirs.push(dir);
  const mistral = cases.find((c) => c.name.startsWith('Mistral'));
  if (!mistral) throw new Error('no Mistral case');
  const spec = writeTestModel(dir, { ...mistral.opts, maxPositions: CONTEXT });
  const ckpt = await openCheckpoint(openLocalModelDir(dir));
  const ref = await ReferenceModel.load(spec, ckpt).finally(() => ckpt.close());
  const [x] = prompts(ref, [30]) as [{ p: number[]; ids: number[] }];
  // Window 20, 16-row chunks: 4 sliding blocks a sequence; a binding of 4 blocks holds those but
  // not the 8 blocks of a 128-token context that a full-attention layer would need.
  const block = kvBlockBytes(spec, 'f32');
  const engine = await createEngine({
    model: dir,
    kvCache: 'f32',
    contextLength: CONTEXT,
    prefillChunkTokens: CHUNK,
    limits: { maxStorageBufferBindingSize: 4 * block },
  });
  try {
    const plan = engine.memoryPlan as MemoryPlan;
    expect([plan.contextLength, plan.note, plan.slidingKvBlocks]).toEqual([CONTEXT, null, 4]);
    // One whole context's block ids (a second sequence's window would need 8 sliding blocks).
    expect(plan.kvBlocks).toBe(CONTEXT / 16);
    expect(engine.kvCacheBytes).toBe(2 * 2 * 4 * block);
    const r = await engine.generate(x.p, GREEDY).result();
    expect(r.tokenIds).toEqual(x.ids);
    expect(engine.stats().peakSlidingBlocksPerSequence).toBeLessThanOrEqual(4);
  } finally {
    engine.dispose();
  }
}, 600_000);
