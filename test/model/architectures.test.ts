/**
 * The 2026 small-model architectures (Qwen3, SmolLM3, Phi-3/3.5/4-mini, Gemma 2, Gemma 3 text):
 * seeded synthetic checkpoints whose config.json has the layout transformers saves for each (the
 * real models' files, scaled down: same keys, tiny sizes), run through the engine and held to the
 * float64 reference (src/model/reference.ts): teacher-forced logits and 64 greedy steps. Each
 * architecture feature is also shown to matter: the reference with the feature switched off
 * (ReferenceOptions.ablate) moves the logits far beyond the tolerance, so agreement with the
 * full reference is evidence the engine implements it.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, test } from 'vitest';
import { openCheckpoint } from '../../src/io/safetensors-checkpoint.js';
import { openLocalModelDir } from '../../src/node/fs-model-dir.js';
import { createEngine } from '../../src/node/index.js';
import type { Engine } from '../../src/engine/engine.js';
import { ReferenceModel } from '../../src/model/reference.js';
import type { ModelSpec } from '../../src/model/spec.js';
import { ARCH_CASES } from '../helpers/arch-cases.js';
import { writeTestModel, type TestModelOptions } from '../helpers/checkpoints.js';
import { expectClose } from '../helpers/gpu.js';

/**
 * Tolerance of GPU logits against the float64 reference: as in models.test.ts (f32 arithmetic over
 * two to four layers, logits of magnitude ≤ ~10: ~1e-6 typical, ~2e-5 worst case), with the same
 * 1e-4 bound. The new operations add only f32 roundings of the same order: the per-head norms and
 * the extra sandwich norms renormalize (relative error a few u), tanh-GELU and the soft-caps are
 * built from exp (a few ULP) and are 1-Lipschitz-or-less in their inputs (the caps shrink errors:
 * d/dx c·tanh(x/c) ≤ 1), √hidden scales the embeddings exactly as the reference does (the same
 * rounded constant), and LongRoPE's cos/sin table is float64 rounded to f32 times the attention
 * factor (≤ 1.33 here). A modelling mistake moves logits by ≥ 1e-2 (the ablations below measure
 * each feature's effect and require ≥ 100 × this bound).
 */
const LOGIT_ATOL = 1e-4;
const F32_KV = { kvCache: 'f32' } as const;
const TIE_MARGIN = 2 * LOGIT_ATOL;
const GREEDY_STEPS = 64;
/** Fewer unambiguous greedy steps than this means the test model is tie-prone: change its seed. */
const MIN_CHECKED_STEPS = 48;
const MIN_DISTINCT_IDS = 6;

const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

function makePrompt(length: number, salt = 0): number[] {
  return [1, ...Array.from({ length: length - 1 }, (_, i) => 3 + ((i * 37 + salt * 11 + 7) % 102))];
}

async function writeModel(
  opts: TestModelOptions,
): Promise<{ dir: string; spec: ModelSpec; ref: ReferenceModel }> {
  const dir = mkdtempSync(join(tmpdir(), 'kiln-arch-'));
  dirs.push(dir);
  const spec = writeTestModel(dir, opts);
  const ckpt = await openCheckpoint(openLocalModelDir(dir));
  try {
    return { dir, spec, ref: await ReferenceModel.load(spec, ckpt) };
  } finally {
    await ckpt.close();
  }
}

function argmax(row: ArrayLike<number>): number {
  let best = 0;
  for (let j = 1; j < row.length; j++) if ((row[j] as number) > (row[best] as number)) best = j;
  return best;
}

/** The reference's greedy ids and top-two margins, one full forward per step. */
function referenceGreedy(ref: ReferenceModel, prompt: readonly number[], steps: number) {
  const ctx = [...prompt];
  const ids: number[] = [];
  const margins: number[] = [];
  for (let s = 0; s < steps; s++) {
    const last = ref.forward(ctx).at(-1) as Float64Array;
    const best = argmax(last);
    let second = -Infinity;
    for (let j = 0; j < last.length; j++) if (j !== best) second = Math.max(second, last[j] as number);
    margins.push((last[best] as number) - second);
    ids.push(best);
    ctx.push(best);
  }
  return { ids, margins };
}

async function expectGreedyMatches(engine: Engine, ref: ReferenceModel, prompt: readonly number[]) {
  const want = referenceGreedy(ref, prompt, GREEDY_STEPS);
  const r = await engine.generate(prompt, { maxTokens: GREEDY_STEPS, ignoreEos: true }).result();
  expect(r.tokenIds).toHaveLength(GREEDY_STEPS);
  const tie = want.margins.findIndex((m) => m < TIE_MARGIN);
  const checked = tie < 0 ? GREEDY_STEPS : tie;
  const margins = want.margins.map((m) => m.toFixed(4)).join(' ');
  expect(checked, `reference top-two margins: ${margins}`).toBeGreaterThanOrEqual(MIN_CHECKED_STEPS);
  expect(r.tokenIds.slice(0, checked)).toEqual(want.ids.slice(0, checked));
  expect(new Set(want.ids).size).toBeGreaterThanOrEqual(MIN_DISTINCT_IDS);
}

function maxDiff(a: readonly Float64Array[], b: readonly Float64Array[]): number {
  let d = 0;
  a.forEach((row, p) => row.forEach((v, j) => (d = Math.max(d, Math.abs(v - (b[p] as Float64Array)[j]!)))));
  return d;
}

describe('new architectures match the float64 reference (logits and 64 greedy steps)', () => {
  test.each(ARCH_CASES)(
    '$name',
    async ({ opts, features, check }) => {
      const m = await writeModel(opts);
      check(m.spec);
      const prompt = makePrompt(20);
      const want = m.ref.forward(prompt);
      for (const f of features) {
        const off = m.ref.with({ ablate: [f] }).forward(prompt);
        expect(maxDiff(want, off), `switching off ${f}`).toBeGreaterThan(100 * LOGIT_ATOL);
      }
      const engine = await createEngine({ model: m.dir, ...F32_KV });
      try {
        const got = await engine.logits(prompt);
        got.forEach((row, p) => expectClose(row, want[p] as Float64Array, { atol: LOGIT_ATOL }));
        await expectGreedyMatches(engine, m.ref, prompt);
      } finally {
        engine.dispose();
      }
    },
    600_000,
  );
});
