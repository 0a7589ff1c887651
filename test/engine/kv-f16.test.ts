/**
 * The f16 KV cache end to end. Seeded models run with kvCache 'f16' against the float64 reference
 * whose K (after RoPE) and V are rounded to f16 just as the cache stores them; BabyLlama (a real
 * trained model) still produces its 200 golden greedy ids; and the option resolves and validates:
 * 'auto' is f16 with shader-f16 and f32 without, 'f16' without the feature is refused.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, test } from 'vitest';
import { InvalidRequestError } from '../../src/errors.js';
import { openCheckpoint } from '../../src/io/safetensors-checkpoint.js';
import { convertLlama2cToFolder } from '../../src/node/convert.js';
import { dawnGpu } from '../../src/node/dawn.js';
import { openLocalModelDir } from '../../src/node/fs-model-dir.js';
import { createEngine } from '../../src/node/index.js';
import { ReferenceModel } from '../../src/model/reference.js';
import { writeTestModel, type TestModelOptions } from '../helpers/checkpoints.js';
import { expectClose, testGpu } from '../helpers/gpu.js';
import { sharedModel } from '../helpers/shared.js';

/**
 * Tolerance of an f16-KV engine's logits against the reference with f16-rounded K/V. The reference
 * rounds its float64 K and V; the GPU rounds its f32 ones, which differ from them by the f32
 * arithmetic error (~1e-6 relative). Where that straddles an f16 rounding boundary (probability
 * ~1e-6 / 2⁻¹¹ ≈ 1e-3 per element: tens of the 41k K/V elements of the head_dim-256 case) the two
 * caches hold neighbouring f16 values, one f16 ulp (2⁻¹⁰ relative) apart. Those few elements move
 * the logits by a fraction of what rounding every element does (that, the f16 reference vs the f32
 * one, is ~8e-3 here: rms ~√(12p) ≈ 0.1 of it), on top of the 1e-4 f32 bound of models.test.ts.
 * Measured: 4e-5 (GQA: 2.6k K/V elements) and 6e-4 (head_dim 256: 41k).
 * 1.5e-3 covers that with margin while staying 5× below the f16 rounding itself (asserted: the
 * references differ by ~8e-3), so an engine that kept f32 K/V, or rounded elsewhere, fails.
 */
const F16_KV_ATOL = 1.5e-3;
const GREEDY_STEPS = 16;

const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

function tempDir(): string {
  const d = mkdtempSync(join(tmpdir(), 'kiln-kvf16-'));
  dirs.push(d);
  return d;
}

/** A deterministic prompt: BOS, then ids spread over the tokenizer's range (3..104). */
function makePrompt(length: number): number[] {
  return [1, ...Array.from({ length: length - 1 }, (_, i) => 3 + ((i * 37 + 7) % 102))];
}

async function writeModel(opts: TestModelOptions) {
  const dir = tempDir();
  const spec = writeTestModel(dir, opts);
  const ckpt = await openCheckpoint(openLocalModelDir(dir));
  try {
    return { dir, spec, ref: await ReferenceModel.load(spec, ckpt) };
  } finally {
    await ckpt.close();
  }
}

function maxDiff(a: readonly ArrayLike<number>[], b: readonly ArrayLike<number>[]): number {
  let m = 0;
  a.forEach((row, p) => {
    const other = b[p] as ArrayLike<number>;
    for (let j = 0; j < row.length; j++) m = Math.max(m, Math.abs((row[j] as number) - (other[j] as number)));
  });
  return m;
}

/** The reference's greedy ids and, per step, the gap between its two largest logits. */
function referenceGreedy(ref: ReferenceModel, prompt: readonly number[], steps: number) {
  const ctx = [...prompt];
  const ids: number[] = [];
  const margins: number[] = [];
  for (let s = 0; s < steps; s++) {
    const last = [...(ref.forward(ctx).at(-1) as Float64Array)];
    const order = [...last.keys()].sort((a, b) => (last[b] as number) - (last[a] as number));
    margins.push((last[order[0] as number] as number) - (last[order[1] as number] as number));
    ids.push(order[0] as number);
    ctx.push(order[0] as number);
  }
  return { ids, margins };
}

describe('seeded models with an f16 KV cache vs the float64 reference with f16-rounded K/V', () => {
  const cases: { name: string; opts: TestModelOptions }[] = [
    { name: 'Llama GQA (8 heads, 2 KV heads)', opts: { hidden: 64, heads: 8, kvHeads: 2, seed: 204 } },
    {
      name: 'Qwen2 (q/k/v biases), head_dim 256',
      opts: { architecture: 'Qwen2ForCausalLM', hidden: 64, heads: 2, kvHeads: 1, headDim: 256, seed: 211 },
    },
  ];
  test.each(cases)('$name', async ({ opts }) => {
    const c = await testGpu();
    if (!c.adapter.shaderF16) return;
    const m = await writeModel(opts);
    const ref16 = m.ref.with({ kvDtype: 'f16' });
    const engine = await createEngine({ model: m.dir, kvCache: 'f16' });
    try {
      expect(engine.kvCacheDtype).toBe('f16');
      // 40 tokens: a prefill over three KV blocks (the general attention kernel), then the decode
      // steps below (split-K attention).
      const prompt = makePrompt(40);
      const got = await engine.logits(prompt);
      const want = ref16.forward(prompt);
      got.forEach((row, p) => expectClose(row, want[p] as Float64Array, { atol: F16_KV_ATOL }));
      // The rounding the tolerance must resolve: the f16 reference is far from the f32 one.
      expect(maxDiff(want, m.ref.forward(prompt))).toBeGreaterThan(5 * F16_KV_ATOL);
      // Greedy ids up to the first near-tie of the f16 reference.
      const greedy = referenceGreedy(ref16, prompt, GREEDY_STEPS);
      const r = await engine.generate(prompt, { maxTokens: GREEDY_STEPS, ignoreEos: true }).result();
      const tie = greedy.margins.findIndex((x) => x < 2 * F16_KV_ATOL);
      const checked = tie < 0 ? GREEDY_STEPS : tie;
      expect(checked, `margins ${greedy.margins.map((x) => x.toFixed(4)).join(' ')}`).toBeGreaterThanOrEqual(
        12,
      );
      expect(r.tokenIds.slice(0, checked)).toEqual(greedy.ids.slice(0, checked));
    } finally {
      engine.dispose();
    }
  });
});

describe('BabyLlama with an f16 KV cache', () => {
  test('still produces its 200 golden greedy ids (both decode attention variants)', async () => {
    const c = await testGpu();
    if (!c.adapter.shaderF16) return;
    const dir = tempDir();
    await convertLlama2cToFolder(sharedModel('babyllama-tok105', 'model5000.bin'), {
      outDir: dir,
      tokenizer: sharedModel('babyllama-tok105', 'tok105.model'),
    });
    const golden = (
      JSON.parse(readFileSync(sharedModel('babyllama-tok105', 'reference_greedy.json'), 'utf8')) as {
        greedy_ids_after_bos: number[];
      }
    ).greedy_ids_after_bos.slice(0, 200);
    expect(golden).toHaveLength(200);
    for (const attentionSoftmax of ['async', 'two_pass'] as const) {
      const engine = await createEngine({ model: dir, kvCache: 'f16', attentionSoftmax });
      try {
        expect(engine.kvCacheDtype).toBe('f16');
        const r = await engine.generate([1], { maxTokens: 200, temperature: 0, ignoreEos: true }).result();
        expect(r.tokenIds, attentionSoftmax).toEqual(golden);
      } finally {
        engine.dispose();
      }
    }
  }, 300_000);
});

describe('the kvCache option', () => {
  test("'auto' (the default) is f16 where the adapter has shader-f16; bad values are refused", async () => {
    const c = await testGpu();
    const dir = tempDir();
    writeTestModel(dir, { layers: 1, hidden: 32, seed: 221 });
    const engine = await createEngine({ model: dir, contextLength: 64 });
    try {
      expect(engine.kvCacheDtype).toBe(c.adapter.shaderF16 ? 'f16' : 'f32');
    } finally {
      engine.dispose();
    }
    const err = await createEngine({ model: dir, kvCache: 'bf16' as 'f16' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(InvalidRequestError);
    expect((err as Error).message).toBe(
      "kvCache must be 'auto' or 'f32' or 'f16' or 'int8' or 'int4' or 'int2' or 'gear4' or 'gear2' or 'int4lr' or 'int2lr' or 'gear4lr' or 'gear2lr', got bf16",
    );
  });

  test("without shader-f16: 'f16' is an InvalidRequestError, 'auto' runs an f32 cache", async () => {
    const m = await writeModel({ layers: 1, hidden: 32, seed: 231 });
    // A device created without shader-f16 (Dawn's adapter, no features requested).
    const adapter = await dawnGpu().requestAdapter();
    const device = await adapter!.requestDevice();
    try {
      const err = await createEngine({ model: m.dir, device, kvCache: 'f16' }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(InvalidRequestError);
      expect((err as Error).message).toMatch(
        /kvCache 'f16' needs the shader-f16 feature.*use 'auto' or 'f32'/,
      );
      const engine = await createEngine({ model: m.dir, device, contextLength: 64 });
      try {
        expect(engine.kvCacheDtype).toBe('f32');
        const prompt = makePrompt(20);
        // f32 K/V: the f32-arithmetic bound of models.test.ts against the unrounded reference.
        const want = m.ref.forward(prompt);
        (await engine.logits(prompt)).forEach((row, p) =>
          expectClose(row, want[p] as Float64Array, { atol: 1e-4 }),
        );
      } finally {
        engine.dispose();
      }
    } finally {
      device.destroy();
    }
  });
});
