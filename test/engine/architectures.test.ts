/**
 * Batching, prefix caching and the kernel tuner with the architectures added for the 2026 small
 * models: several requests decoded together in one engine give the float64 reference's greedy ids
 * (each at its own positions, with its own NoPE / local / LongRoPE rotations, sliding windows and
 * soft-caps), a request sharing a prefix with an earlier one takes it from the cache and still
 * matches, and a tuned engine (Gemma 2: the GeGLU epilogue runs the variants tuned for its class)
 * decodes the same ids.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, test } from 'vitest';
import { UnsupportedModelError } from '../../src/errors.js';
import { openCheckpoint } from '../../src/io/safetensors-checkpoint.js';
import { ReferenceModel } from '../../src/model/reference.js';
import { openLocalModelDir } from '../../src/node/fs-model-dir.js';
import { createEngine } from '../../src/node/index.js';
import { MemoryTuneStore } from '../../src/tuner/cache.js';
import { ARCH_CASES } from '../helpers/arch-cases.js';
import { writeTestModel } from '../helpers/checkpoints.js';

/** A reference step whose top-two logits are closer than this may legitimately flip (2 × 1e-4). */
const TIE_MARGIN = 2e-4;
const STEPS = 12;
const GREEDY = { maxTokens: STEPS, temperature: 0, ignoreEos: true } as const;

const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

const prompt = (length: number, salt: number) => [
  1,
  ...Array.from({ length: length - 1 }, (_, i) => 3 + ((i * 37 + salt * 11 + 7) % 102)),
];

async function setup(opts: (typeof ARCH_CASES)[number]['opts']) {
  const dir = mkdtempSync(join(tmpdir(), 'kiln-arch-eng-'));
  dirs.push(dir);
  const spec = writeTestModel(dir, opts);
  const ckpt = await openCheckpoint(openLocalModelDir(dir));
  try {
    return { dir, ref: await ReferenceModel.load(spec, ckpt) };
  } finally {
    await ckpt.close();
  }
}

/** The reference's greedy ids up to its first near-tie (from there either id is right). */
function referenceIds(ref: ReferenceModel, p: readonly number[]): number[] {
  const ctx = [...p];
  const ids: number[] = [];
  for (let s = 0; s < STEPS; s++) {
    const last = ref.forward(ctx).at(-1) as Float64Array;
    const order = [...last.keys()].sort((a, b) => (last[b] as number) - (last[a] as number));
    const [best, second] = order as [number, number];
    if ((last[best] as number) - (last[second] as number) < TIE_MARGIN) break;
    ids.push(best);
    ctx.push(best);
  }
  return ids;
}

describe('batching and prefix caching per architecture', () => {
  test.each(ARCH_CASES)(
    '$name',
    async ({ opts }) => {
      const { dir, ref } = await setup(opts);
      const engine = await createEngine({ model: dir, kvCache: 'f32' });
      try {
        // Three requests of different lengths decoded together (one row each per step).
        const prompts = [prompt(20, 0), prompt(9, 1), prompt(27, 2)];
        const together = await Promise.all(prompts.map((p) => engine.generate(p, GREEDY).result()));
        prompts.forEach((p, i) => {
          const want = referenceIds(ref, p);
          expect(want.length).toBeGreaterThanOrEqual(8);
          expect(together[i]?.tokenIds.slice(0, want.length)).toEqual(want);
        });
        // A request sharing the first 2 full KV blocks (32 tokens) of an earlier one; its own tail is
        // the first of a few whose reference continuation has no near-tie in its first 8 steps.
        const long = prompt(40, 3);
        await engine.generate(long, GREEDY).result();
        const tails = [
          [50, 60],
          [70, 11],
          [23, 90],
          [5, 44],
          [81, 17],
        ];
        const candidates = tails.map((t) => [...long.slice(0, 34), ...t]);
        const shared = candidates.find((c) => referenceIds(ref, c).length >= 8);
        expect(shared, 'a tail without an early near-tie').toBeDefined();
        const r = await engine.generate(shared as number[], GREEDY).result();
        expect(r.cachedPromptTokens).toBe(32);
        const want = referenceIds(ref, shared as number[]);
        expect(r.tokenIds.slice(0, want.length)).toEqual(want);
      } finally {
        engine.dispose();
      }
    },
    600_000,
  );
});

describe('the kernel tuner with GeGLU (Gemma 2)', () => {
  test('a tuned engine decodes the reference ids', async () => {
    const gemma2 = ARCH_CASES.find((c) => c.opts.architecture === 'Gemma2ForCausalLM');
    if (!gemma2) throw new Error('no Gemma 2 case');
    const { dir, ref } = await setup(gemma2.opts);
    const engine = await createEngine({ model: dir, kvCache: 'f32' });
    try {
      // A budget long enough for some classes on a loaded CPU adapter.
      const { report } = await engine.tune({ budgetMs: 180_000, store: new MemoryTuneStore() });
      expect(report.classes.filter((c) => !c.cached).length).toBeGreaterThan(0);
      const p = prompt(20, 5);
      const want = referenceIds(ref, p);
      const r = await engine.generate(p, GREEDY).result();
      expect(r.tokenIds.slice(0, want.length)).toEqual(want);
    } finally {
      engine.dispose();
    }
  }, 600_000);
});

describe('models the engine cannot run are refused before any weight is read', () => {
  test.each([
    [
      // (Gemma3ForConditionalGeneration runs its text decoder: test/model/gemma3-multimodal.test.ts.)
      'a vision tower',
      {
        architectures: ['LlavaForConditionalGeneration'],
        model_type: 'llava',
        vision_config: {},
        text_config: {},
      },
      /vision_config is set/,
    ],
    [
      'MoE layers',
      { architectures: ['Qwen3MoeForCausalLM'], model_type: 'qwen3_moe', num_experts: 128 },
      /num_experts is 128: mixture-of-experts/,
    ],
    [
      'an unknown model_type',
      { architectures: ['Qwen3ForCausalLM'], model_type: 'qwen3_next' },
      /model_type "qwen3_next" is not supported/,
    ],
  ] as const)('%s', async (_what, config, message) => {
    const dir = mkdtempSync(join(tmpdir(), 'kiln-arch-refuse-'));
    dirs.push(dir);
    writeFileSync(join(dir, 'config.json'), JSON.stringify(config));
    // Not a safetensors file at all: reading any weight would fail with a different error.
    writeFileSync(join(dir, 'model.safetensors'), 'not safetensors');
    const err = await createEngine({ model: dir }).then(
      () => null,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(UnsupportedModelError);
    expect((err as Error).message).toMatch(message);
  });
});
