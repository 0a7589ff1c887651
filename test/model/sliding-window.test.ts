/**
 * Sliding-window attention end to end: small Qwen2 and Mistral checkpoints whose windows are much
 * shorter than prompt + generation run through the engine (prefill kernel over the prompt, split-K
 * decode, then the async softmax once calibrated) and match the float64 reference, which applies
 * the same windows (transformers' mask: i - W < j <= i). The same reference with every window
 * removed diverges, so the windows are what is being tested.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, test } from 'vitest';
import { openCheckpoint } from '../../src/io/safetensors-checkpoint.js';
import { openLocalModelDir } from '../../src/node/fs-model-dir.js';
import { createEngine } from '../../src/node/index.js';
import { ReferenceModel } from '../../src/model/reference.js';
import type { ModelSpec } from '../../src/model/spec.js';
import { writeTestModel, type TestModelOptions } from '../helpers/checkpoints.js';
import { expectClose } from '../helpers/gpu.js';

/** As models.test.ts: f32 arithmetic over two or three small layers (its derivation holds here). */
const LOGIT_ATOL = 1e-4;
/** A reference step whose top-two logits are closer than this may legitimately flip on the GPU. */
const TIE_MARGIN = 2 * LOGIT_ATOL;
const STEPS = 64;

const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

async function reference(dir: string, spec: ModelSpec): Promise<ReferenceModel> {
  const ckpt = await openCheckpoint(openLocalModelDir(dir));
  try {
    return await ReferenceModel.load(spec, ckpt);
  } finally {
    await ckpt.close();
  }
}

function argmax(row: ArrayLike<number>): number {
  let best = 0;
  for (let j = 1; j < row.length; j++) if ((row[j] as number) > (row[best] as number)) best = j;
  return best;
}

/** Greedy ids with the smallest top-two logit gap seen on the way. */
function greedy(ref: ReferenceModel, prompt: readonly number[], steps: number) {
  const ctx = [...prompt];
  const ids: number[] = [];
  let margin = Infinity;
  for (let s = 0; s < steps; s++) {
    const last = ref.forward(ctx).at(-1) as Float64Array;
    const best = argmax(last);
    let second = -Infinity;
    for (let j = 0; j < last.length; j++) if (j !== best) second = Math.max(second, last[j] as number);
    margin = Math.min(margin, (last[best] as number) - second);
    ids.push(best);
    ctx.push(best);
  }
  return { ids, margin };
}

const prompt = [1, ...Array.from({ length: 29 }, (_, i) => 3 + ((i * 37 + 7) % 102))];

const cases: { name: string; opts: TestModelOptions; windows: number[] }[] = [
  {
    // Qwen2Config: use_sliding_window with max_window_layers 1 -> layers 1 and 2 slide, 0 is full.
    // Window 13: not a multiple of the 16-token block, so windows start mid-block.
    name: 'Qwen2, window 13 on layers 1-2 (max_window_layers 1), tied head',
    opts: {
      architecture: 'Qwen2ForCausalLM',
      layers: 3,
      tie: true,
      seed: 201,
      config: { use_sliding_window: true, sliding_window: 13, max_window_layers: 1 },
    },
    windows: [0, 13, 13],
  },
  {
    name: 'Mistral, window 20 on every layer',
    opts: { architecture: 'MistralForCausalLM', layers: 2, seed: 211, config: { sliding_window: 20 } },
    windows: [20, 20],
  },
];

describe('sliding-window attention: engine vs float64 reference past the window', () => {
  test.each(cases)('$name', async ({ opts, windows }) => {
    const dir = mkdtempSync(join(tmpdir(), 'kiln-swa-'));
    dirs.push(dir);
    const spec = writeTestModel(dir, opts);
    expect(spec.layerWindows).toEqual(windows);
    const ref = await reference(dir, spec);
    const want = greedy(ref, prompt, STEPS);
    // No near-tie in 64 steps: every id is unambiguous (else change the seed).
    expect(want.margin).toBeGreaterThan(TIE_MARGIN);
    expect(new Set(want.ids).size).toBeGreaterThanOrEqual(8);
    // The windows matter: the same weights with full attention everywhere continue differently.
    const full = await reference(dir, { ...spec, layerWindows: windows.map(() => 0) });
    expect(greedy(full, prompt, STEPS).ids).not.toEqual(want.ids);

    const engine = await createEngine({ model: dir, kvCache: 'f32', prefillChunkTokens: 16 });
    try {
      // Teacher-forced logits of prompt + generation (94 tokens, in prefill chunks of 16).
      const all = [...prompt, ...want.ids];
      const got = await engine.logits(all);
      const ref94 = ref.forward(all);
      got.forEach((row, p) => expectClose(row, ref94[p] as Float64Array, { atol: LOGIT_ATOL }));
      // Greedy: prefill then 64 decode steps (decode attention: split-K with the async softmax
      // after calibration, or the single pass where the context fits one split).
      const r = await engine.generate(prompt, { maxTokens: STEPS, ignoreEos: true }).result();
      expect(r.tokenIds).toEqual(want.ids);
    } finally {
      engine.dispose();
    }
  });
});
