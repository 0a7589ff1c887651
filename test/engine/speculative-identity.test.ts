/**
 * Greedy speculative decoding is lossless beyond BabyLlama (speculative.test.ts): on stories260K
 * (a real trained model) the ids with speculation equal plain decoding's, alone and batched; on
 * the seeded synthetic models of every architecture (Llama, Qwen2, and the cases of
 * arch-cases.ts: Qwen3, SmolLM3, Phi-4-mini / Phi-3.5, Gemma 2, Gemma 3) a speculative engine's
 * ids, alone and batched, equal the float64 reference's greedy ids up to its first near-tie (a
 * verifying step runs a request's rows through the multi-row kernels, whose rounding differs from
 * the one-row decode kernels', so past a near-tie either id is right), with guesses verified.
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, test } from 'vitest';
import type { Engine } from '../../src/engine/engine.js';
import { openCheckpoint } from '../../src/io/safetensors-checkpoint.js';
import { ReferenceModel } from '../../src/model/reference.js';
import { convertSentencePiece } from '../../src/io/sentencepiece.js';
import { convertLlama2cToFolder } from '../../src/node/convert.js';
import { openLocalModelDir } from '../../src/node/fs-model-dir.js';
import { createEngine } from '../../src/node/index.js';
import { ARCH_CASES } from '../helpers/arch-cases.js';
import { writeTestModel, type TestModelOptions } from '../helpers/checkpoints.js';
import { sharedModel } from '../helpers/shared.js';

/** A reference step whose top-two logits are closer than this may legitimately flip (2 × 1e-4). */
const TIE_MARGIN = 2e-4;
const STEPS = 16;
const GREEDY = { maxTokens: STEPS, temperature: 0, ignoreEos: true } as const;
const SPECULATIVE = { method: 'both', maxDraft: 4, timed: false } as const;

const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

const prompt = (length: number, salt: number) => [
  1,
  ...Array.from({ length: length - 1 }, (_, i) => 3 + ((i * 37 + salt * 11 + 7) % 102)),
];

/** The reference's greedy ids up to its first near-tie. */
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

describe('stories260K', () => {
  test('the same greedy ids with and without speculation, alone and batched', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'kiln-spec-260k-'));
    dirs.push(dir);
    await convertLlama2cToFolder(sharedModel('stories260K', 'stories260K.bin'), { outDir: dir });
    // Its tokenizer is llama2.c's own format, not SentencePiece: the folder gets tok105's, which
    // loads beside the 512-id vocabulary (the test speaks ids only).
    const tok = convertSentencePiece(
      new Uint8Array(readFileSync(sharedModel('babyllama-tok105', 'tok105.model'))),
    );
    writeFileSync(join(dir, 'tokenizer.json'), JSON.stringify(tok.tokenizerJson));
    writeFileSync(join(dir, 'tokenizer_config.json'), JSON.stringify(tok.tokenizerConfig));
    const plain = await createEngine({ model: dir });
    const spec = await createEngine({ model: dir, speculative: SPECULATIVE });
    try {
      const opts = { maxTokens: 200, temperature: 0, ignoreEos: true } as const;
      const want = (await plain.generate([1], opts).result()).tokenIds;
      expect((await spec.generate([1], opts).result()).tokenIds).toEqual(want);
      const prompts = [[1], [1, 403, 407, 261, 378], [1, 65, 301]];
      const ref = await Promise.all(prompts.map((p) => plain.generate(p, opts).result()));
      const got = await Promise.all(prompts.map((p) => spec.generate(p, opts).result()));
      got.forEach((r, i) => expect(r.tokenIds).toEqual(ref[i]?.tokenIds));
      expect(spec.stats().speculativeSteps).toBeGreaterThan(0);
      expect(spec.stats().blocksUsed).toBe(0);
    } finally {
      plain.dispose();
      spec.dispose();
    }
  }, 600_000);
});

const CASES: { name: string; opts: TestModelOptions }[] = [
  { name: 'Llama', opts: { seed: 11 } },
  { name: 'Qwen2', opts: { architecture: 'Qwen2ForCausalLM', seed: 12 } },
  ...ARCH_CASES,
];

describe('every architecture: the reference greedy ids with speculation', () => {
  test.each(CASES)(
    '$name',
    async ({ opts }) => {
      const dir = mkdtempSync(join(tmpdir(), 'kiln-spec-arch-'));
      dirs.push(dir);
      const spec = writeTestModel(dir, opts);
      const ckpt = await openCheckpoint(openLocalModelDir(dir));
      let ref: ReferenceModel;
      try {
        ref = await ReferenceModel.load(spec, ckpt);
      } finally {
        await ckpt.close();
      }
      const engine: Engine = await createEngine({ model: dir, kvCache: 'f32', speculative: SPECULATIVE });
      try {
        const prompts = [prompt(20, 0), prompt(9, 1), prompt(27, 2)];
        const alone = await engine.generate(prompts[0] as number[], GREEDY).result();
        const together = await Promise.all(prompts.map((p) => engine.generate(p, GREEDY).result()));
        prompts.forEach((p, i) => {
          const want = referenceIds(ref, p);
          expect(want.length).toBeGreaterThanOrEqual(6);
          if (i === 0) expect(alone.tokenIds.slice(0, want.length)).toEqual(want);
          expect(together[i]?.tokenIds.slice(0, want.length)).toEqual(want);
        });
        expect(engine.stats().speculativeSteps).toBeGreaterThan(0);
        expect(engine.stats().blocksUsed).toBe(0);
      } finally {
        engine.dispose();
      }
    },
    600_000,
  );
});
