/**
 * The acceptance matrix: small Hugging Face checkpoints of every supported kind (seeded random
 * weights: MHA, GQA, Mistral, Qwen2 biases with a tied head, Llama attention/MLP biases, llama3 and
 * linear rope scaling, explicit head_dim up to the kernel's 256, f32/f16/bf16, two and three
 * shards) run through the engine and are compared, logits and greedy ids, with the float64 CPU
 * reference (src/model/reference.ts).
 *
 * A real LM head too big for one buffer (vocab × hidden over maxStorageBufferBindingSize, 128 MiB
 * on lavapipe) would need a >128 MiB checkpoint and a float64 reference twice that: too big here.
 * Instead the last test shrinks the device's reported limit to 16 KiB so the same split path runs.
 */
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, test } from 'vitest';
import { openCheckpoint } from '../../src/io/safetensors-checkpoint.js';
import { ropeInvFreq } from '../../src/kernels/rope.ref.js';
import { openLocalModelDir } from '../../src/node/fs-model-dir.js';
import { createEngine } from '../../src/node/index.js';
import type { Engine } from '../../src/engine/engine.js';
import type { ModelSpec } from '../../src/model/spec.js';
import { ReferenceModel } from '../../src/model/reference.js';
import type { ModelWeights } from '../../src/weights/loader.js';
import { writeTestModel, type TestModelOptions } from '../helpers/checkpoints.js';
import { expectClose, testGpu } from '../helpers/gpu.js';

/**
 * Tolerance of GPU logits against the float64 reference. Both read the very same stored weights
 * (f16/bf16 values widen exactly to f32 and f64), so the difference is only f32 arithmetic:
 * activations rounded to f32 (unit roundoff u = 2^-24 ≈ 6e-8), dot products of at most 512 terms
 * accumulated in f32 (error ~√K·u relative to the sum of |terms|, K·u ≈ 3e-5 in the worst case),
 * WGSL's exp / inverseSqrt (a few ULP), over two layers whose RMSNorms renormalise the stream.
 * For logits of magnitude ≤ ~7 that is ~1e-6 typically (lavapipe measures ≤ 6e-7) and ~2e-5 at
 * worst. 1e-4 leaves room above that, and is 100× below what a modelling mistake produces at these
 * scales (a dropped 0.1-scale bias, a wrong RoPE frequency, or activations rounded to bf16 all move
 * logits by ≥ 1e-2).
 */
const LOGIT_ATOL = 1e-4;
/**
 * The engines here keep an f32 KV cache: the bound above is for f32 arithmetic only, and an f16
 * cache (the default where the adapter has shader-f16) rounds K and V to 11 bits. The f16 cache is
 * compared with a reference rounded the same way in kv-f16.test.ts.
 */
const F32_KV = { kvCache: 'f32' } as const;
/** A reference step whose top-two logits are closer than this may legitimately flip on the GPU. */
const TIE_MARGIN = 2 * LOGIT_ATOL;
const GREEDY_STEPS = 16;
/** Fewer unambiguous greedy steps than this means the test model is tie-prone: fix its seed. */
const MIN_CHECKED_STEPS = 12;
/** A model that keeps emitting one or two ids would hide position and cache bugs. */
const MIN_DISTINCT_IDS = 6;

const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

function tempDir(): string {
  const d = mkdtempSync(join(tmpdir(), 'kiln-models-'));
  dirs.push(d);
  return d;
}

/** A deterministic prompt: BOS, then ids spread over the tokenizer's range (3..104). */
function makePrompt(length: number, salt = 0): number[] {
  return [1, ...Array.from({ length: length - 1 }, (_, i) => 3 + ((i * 37 + salt * 11 + 7) % 102))];
}

interface Loaded {
  dir: string;
  spec: ModelSpec;
  ref: ReferenceModel;
}

async function loadReference(dir: string, spec: ModelSpec): Promise<ReferenceModel> {
  const ckpt = await openCheckpoint(openLocalModelDir(dir));
  try {
    return await ReferenceModel.load(spec, ckpt);
  } finally {
    await ckpt.close();
  }
}

async function writeModel(opts: TestModelOptions): Promise<Loaded> {
  const dir = tempDir();
  const spec = writeTestModel(dir, opts);
  return { dir, spec, ref: await loadReference(dir, spec) };
}

function argmax(row: ArrayLike<number>): number {
  let best = 0;
  for (let j = 1; j < row.length; j++) if ((row[j] as number) > (row[best] as number)) best = j;
  return best;
}

/** The reference's greedy ids and, per step, the gap between its two largest logits. */
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

function expectLogitsMatch(got: readonly Float32Array[], want: readonly Float64Array[]): void {
  expect(got.length).toBe(want.length);
  got.forEach((row, p) => expectClose(row, want[p] as Float64Array, { atol: LOGIT_ATOL }));
}

/**
 * Greedy ids of the engine equal the reference's up to the first near-tie (none with these seeds,
 * but a tie would make the GPU's choice legitimately either id), and the ids are varied.
 */
async function expectGreedyMatches(engine: Engine, ref: ReferenceModel, prompt: readonly number[]) {
  const want = referenceGreedy(ref, prompt, GREEDY_STEPS);
  const r = await engine.generate(prompt, { maxTokens: GREEDY_STEPS, ignoreEos: true }).result();
  expect(r.tokenIds).toHaveLength(GREEDY_STEPS);
  expect(r.finishReason).toBe('length');
  // Steps before the first near-tie are unambiguous; from the tie on, either id is right.
  const tie = want.margins.findIndex((m) => m < TIE_MARGIN);
  const checked = tie < 0 ? GREEDY_STEPS : tie;
  const margins = want.margins.map((m) => m.toFixed(4)).join(' ');
  expect(checked, `reference top-two margins: ${margins}`).toBeGreaterThanOrEqual(MIN_CHECKED_STEPS);
  expect(r.tokenIds.slice(0, checked)).toEqual(want.ids.slice(0, checked));
  expect(new Set(want.ids).size).toBeGreaterThanOrEqual(MIN_DISTINCT_IDS);
}

const LLAMA3 = {
  rope_type: 'llama3',
  factor: 8,
  low_freq_factor: 1,
  high_freq_factor: 4,
  // Small so that at head_dim 16 the frequencies fall in all three regimes (see the test below).
  original_max_position_embeddings: 64,
};

interface Case {
  name: string;
  opts: TestModelOptions;
  /** Extra checks that the variant is what it claims to be. */
  check?: (m: Loaded) => void;
}

const shardFiles = (dir: string) =>
  readdirSync(dir).filter((f) => /^model-\d{5}-of-\d{5}\.safetensors$/.test(f));

const cases: Case[] = [
  {
    name: 'Llama, multi-head attention',
    opts: { heads: 4, kvHeads: 4 },
    check: ({ spec }) => expect(spec.numKvHeads).toBe(spec.numHeads),
  },
  {
    name: 'Llama, GQA (8 heads, 2 KV heads)',
    opts: { hidden: 64, heads: 8, kvHeads: 2 },
    check: ({ spec }) => expect([spec.numHeads, spec.numKvHeads, spec.headDim]).toEqual([8, 2, 8]),
  },
  {
    name: 'Mistral',
    opts: { architecture: 'MistralForCausalLM', seed: 11 },
    check: ({ spec }) => expect(spec.architecture).toBe('mistral'),
  },
  {
    name: 'Qwen2 (q/k/v biases), tied embeddings',
    opts: { architecture: 'Qwen2ForCausalLM', tie: true, seed: 23 },
    check: ({ spec }) => {
      expect([spec.qkvBias, spec.oBias, spec.tieWordEmbeddings]).toEqual([true, false, true]);
    },
  },
  {
    name: 'Llama attention_bias (q, k, v, o biases)',
    opts: { attentionBias: true, seed: 31 },
    check: ({ spec }) => expect([spec.qkvBias, spec.oBias]).toEqual([true, true]),
  },
  {
    name: 'Llama mlp_bias (gate, up, down biases)',
    opts: { config: { mlp_bias: true }, seed: 41 },
    check: ({ spec }) => expect(spec.mlpBias).toBe(true),
  },
  {
    name: 'llama3 rope scaling',
    opts: { ropeScaling: LLAMA3, seed: 51 },
    check: ({ spec }) => expect(spec.ropeScaling.type).toBe('llama3'),
  },
  {
    name: 'linear rope scaling',
    opts: { ropeScaling: { rope_type: 'linear', factor: 4 }, seed: 61 },
    check: ({ spec }) => expect(spec.ropeScaling).toEqual({ type: 'linear', factor: 4 }),
  },
  {
    name: 'explicit head_dim 32 (hidden 64, 4 heads)',
    opts: { hidden: 64, heads: 4, kvHeads: 2, headDim: 32, seed: 71 },
    check: ({ spec }) => expect(spec.numHeads * spec.headDim).not.toBe(spec.hiddenSize),
  },
  {
    name: 'head_dim 256 (the attention kernel maximum)',
    opts: { hidden: 64, heads: 2, kvHeads: 1, headDim: 256, layers: 1, seed: 81 },
    check: ({ spec }) => expect(spec.headDim).toBe(256),
  },
  { name: 'f16 weights', opts: { dtype: 'F16', seed: 91 } },
  { name: 'bf16 weights', opts: { dtype: 'BF16', seed: 101 } },
  {
    name: 'two shards',
    opts: { shards: 2, seed: 111 },
    check: ({ dir }) => {
      expect(shardFiles(dir)).toHaveLength(2);
      expect(existsSync(join(dir, 'model.safetensors.index.json'))).toBe(true);
    },
  },
  {
    name: 'three shards',
    opts: { shards: 3, seed: 121 },
    check: ({ dir }) => expect(shardFiles(dir)).toHaveLength(3),
  },
  {
    name: 'Qwen2 + tied + bf16 + two shards',
    opts: {
      architecture: 'Qwen2ForCausalLM',
      tie: true,
      dtype: 'BF16',
      shards: 2,
      hidden: 32,
      heads: 4,
      kvHeads: 1,
    },
  },
  {
    name: 'Llama GQA + llama3 (θ 500000) + explicit head_dim 24 + f16 + three shards',
    opts: {
      hidden: 48,
      heads: 6,
      kvHeads: 2,
      headDim: 24,
      ropeTheta: 500000,
      ropeScaling: { ...LLAMA3, original_max_position_embeddings: 32 },
      dtype: 'F16',
      shards: 3,
      attentionBias: true,
      seed: 131,
    },
  },
];

describe('small checkpoints of each supported kind match the float64 reference', () => {
  test.each(cases)('$name', async ({ opts, check }) => {
    const m = await writeModel(opts);
    check?.(m);
    const engine = await createEngine({ model: m.dir, ...F32_KV });
    try {
      const prompt = makePrompt(20);
      expectLogitsMatch(await engine.logits(prompt), m.ref.forward(prompt));
      await expectGreedyMatches(engine, m.ref, prompt);
    } finally {
      engine.dispose();
    }
  });
});

describe('rope scaling changes the model (so the cases above test it)', () => {
  test('llama3 at head_dim 16: high frequencies kept, middle ones smoothed, low ones divided by 8', () => {
    const inv = ropeInvFreq(16, 10000, {
      type: 'llama3',
      factor: 8,
      lowFreqFactor: 1,
      highFreqFactor: 4,
      originalMaxPositionEmbeddings: 64,
    });
    const plain = ropeInvFreq(16, 10000, { type: 'none' });
    // HF _compute_llama3_parameters, transcribed: wavelength 2π/f against 64/4 = 16 and 64/1 = 64.
    for (let i = 0; i < 8; i++) {
      const f = plain[i] as number;
      const wavelen = (2 * Math.PI) / f;
      let want = f;
      if (wavelen > 64) want = f / 8;
      else if (wavelen >= 16) {
        const smooth = (64 / wavelen - 1) / (4 - 1);
        want = ((1 - smooth) * f) / 8 + smooth * f;
      }
      expect(inv[i]).toBeCloseTo(want, 15);
    }
    // Wavelengths 6.3, 19.9, 62.8, 199, ...: one kept, two smoothed, five divided.
    expect(inv[0]).toBe(plain[0]);
    for (const i of [1, 2]) {
      expect(inv[i]).toBeLessThan(plain[i] as number);
      expect(inv[i]).toBeGreaterThan((plain[i] as number) / 8);
    }
    for (let i = 3; i < 8; i++) expect(inv[i]).toBeCloseTo((plain[i] as number) / 8, 15);
  });

  test.each([
    ['llama3', LLAMA3],
    ['linear', { rope_type: 'linear', factor: 4 }],
  ])('%s scaling moves the reference logits far beyond the tolerance', async (_name, ropeScaling) => {
    const m = await writeModel({ ropeScaling, seed: 7 });
    const unscaled = await loadReference(m.dir, { ...m.spec, ropeScaling: { type: 'none' } });
    const prompt = makePrompt(20);
    const a = m.ref.forward(prompt);
    const b = unscaled.forward(prompt);
    let maxDiff = 0;
    for (let p = 0; p < prompt.length; p++) {
      for (let j = 0; j < m.spec.vocabSize; j++) {
        maxDiff = Math.max(maxDiff, Math.abs((a[p] as Float64Array)[j]! - (b[p] as Float64Array)[j]!));
      }
    }
    expect(maxDiff).toBeGreaterThan(100 * LOGIT_ATOL);
  });
});

describe('chunked prefill', () => {
  test('a 30-token prompt in chunks of 8 gives the logits and greedy ids of one pass', async () => {
    const m = await writeModel({ heads: 8, kvHeads: 2, seed: 141 });
    const prompt = makePrompt(30, 3);
    const whole = await createEngine({ model: m.dir, ...F32_KV });
    const chunked = await createEngine({ model: m.dir, prefillChunkTokens: 8, ...F32_KV });
    try {
      const want = m.ref.forward(prompt);
      const a = await whole.logits(prompt);
      const b = await chunked.logits(prompt);
      expectLogitsMatch(a, want);
      expectLogitsMatch(b, want);
      // Same kernels and weights, different row counts per dispatch: equal to within f32 noise.
      b.forEach((row, p) => expectClose(row, a[p] as Float32Array, { atol: 1e-5 }));
      // 30 prompt tokens in 4 chunks (8, 8, 8, 6) across a KV block boundary, then decode past 32.
      await expectGreedyMatches(chunked, m.ref, prompt);
    } finally {
      whole.dispose();
      chunked.dispose();
    }
  });

  test('ReferenceModel.greedy is the argmax loop used above', async () => {
    const m = await writeModel({ layers: 1, hidden: 32, seed: 151 });
    const prompt = makePrompt(10);
    expect(m.ref.greedy(prompt, 6)).toEqual(referenceGreedy(m.ref, prompt, 6).ids);
  });
});

describe('weights split across buffers', () => {
  test('a device with a 16 KiB maxStorageBufferBindingSize splits the LM head, embeddings and MLP', async () => {
    const m = await writeModel({ seed: 161 });
    const real = (await testGpu()).device;
    const limit = 16 << 10;
    const limits = new Proxy(real.limits, {
      get: (t, p) => (p === 'maxStorageBufferBindingSize' ? limit : (Reflect.get(t, p, t) as unknown)),
    });
    // Everything but `limits` is the real device (methods bound to it, as Dawn requires).
    const device = new Proxy(real, {
      get(t, p) {
        if (p === 'limits') return limits;
        const v = Reflect.get(t, p, t) as unknown;
        return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(t) : v;
      },
    });
    // Parts hold whole 8-row tiles: lm_head and embed_tokens (128 × 64 f32 = 32 KiB) in two parts
    // of 64 rows; gate/up fused (96 units, 2 KiB tile pairs of 4 KiB) in three parts of 32 units;
    // down (64 × 96, 3 KiB tiles) in parts of 40 rows; q/k/v stacked by rows, split likewise.
    expect(m.spec.vocabSize * m.spec.hiddenSize * 4).toBe(2 * limit);
    const engine = await createEngine({ model: m.dir, device, contextLength: 64, ...F32_KV });
    try {
      const w = (engine as unknown as { forward: { weights: ModelWeights } }).forward.weights;
      const layer = w.layers[0] as ModelWeights['layers'][number];
      const parts = [w.lmHead, w.embed, layer.gateUp.weight, layer.down.weight, layer.qkv.weight].map(
        (x) => x.parts.length,
      );
      expect(parts).toEqual([2, 2, 3, 2, 2]);
      const prompt = makePrompt(20);
      expectLogitsMatch(await engine.logits(prompt), m.ref.forward(prompt));
      await expectGreedyMatches(engine, m.ref, prompt);
    } finally {
      engine.dispose();
    }
  });
});
