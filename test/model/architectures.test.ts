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
import { ReferenceModel, type Ablation } from '../../src/model/reference.js';
import type { ModelSpec } from '../../src/model/spec.js';
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

/** LongRoPE factor lists of `half` entries (values like Phi-3.5's: short near 1, long up to ~20). */
const factors = (half: number, from: number, step: number) =>
  Array.from({ length: half }, (_, i) => Number((from + i * step).toFixed(4)));

interface Case {
  name: string;
  opts: TestModelOptions;
  /** Features whose removal must move the reference logits (each ≥ 100 × the tolerance). */
  features: Ablation[];
  check: (spec: ModelSpec) => void;
}

/** Keys a real config of the family lacks (JSON.stringify drops undefined). */
const NO_LLAMA_KEYS = { rope_scaling: undefined } as const;

export const ARCH_CASES: Case[] = [
  {
    // Qwen3-0.6B's config.json, scaled down: explicit head_dim (32, not hidden / heads = 16), q/k
    // norms, tied head.
    name: 'Qwen3 (q/k norm, explicit head_dim 32, tied)',
    opts: {
      architecture: 'Qwen3ForCausalLM',
      hidden: 64,
      heads: 4,
      kvHeads: 2,
      headDim: 32,
      tie: true,
      ropeTheta: 1000000,
      seed: 201,
      config: {
        attention_bias: false,
        attention_dropout: 0.0,
        initializer_range: 0.02,
        max_window_layers: 2,
        rms_norm_eps: 1e-6,
        sliding_window: null,
        use_sliding_window: false,
        use_cache: true,
        torch_dtype: 'float32',
        transformers_version: '4.51.0',
      },
    },
    features: ['qk-norm'],
    check: (s) => expect([s.architecture, s.headDim, s.tieWordEmbeddings]).toEqual(['qwen3', 32, true]),
  },
  {
    // SmolLM3-3B's config.json, scaled down to 4 layers: no_rope_layers [1, 1, 1, 0] (layer 3 is
    // NoPE, as every 4th layer of the real model), layer_types all full attention, tied.
    name: 'SmolLM3 (NoPE layer 3 of 4, tied)',
    opts: {
      architecture: 'SmolLM3ForCausalLM',
      layers: 4,
      hidden: 64,
      heads: 4,
      kvHeads: 1,
      tie: true,
      ropeTheta: 5000000,
      seed: 211,
      config: {
        attention_bias: false,
        attention_dropout: 0.0,
        bos_token_id: null,
        layer_types: ['full_attention', 'full_attention', 'full_attention', 'full_attention'],
        max_window_layers: 28,
        mlp_bias: false,
        no_rope_layer_interval: 4,
        no_rope_layers: [1, 1, 1, 0],
        pretraining_tp: 2,
        rms_norm_eps: 1e-6,
        sliding_window: null,
        use_cache: false,
        use_sliding_window: false,
        torch_dtype: 'float32',
      },
    },
    features: ['nope-layers'],
    check: (s) => expect(s.layerRope).toEqual(['global', 'global', 'global', 'none']),
  },
  {
    // Phi-4-mini's config.json, scaled down: fused qkv_proj / gate_up_proj, partial_rotary_factor
    // 0.75 (12 of 16 dims rotate), LongRoPE with original_max_position_embeddings 16 and
    // max_position_embeddings 128 (attention factor √(1 + ln 8 / ln 16) ≈ 1.32), crossed by the
    // prompt (20 tokens) and by decoding; tied, as Phi-4-mini.
    name: 'Phi-4-mini shape (fused tensors, partial rotary 0.75, LongRoPE crossed, tied)',
    opts: {
      architecture: 'Phi3ForCausalLM',
      hidden: 64,
      heads: 4,
      kvHeads: 2,
      tie: true,
      maxPositions: 128,
      seed: 221,
      config: {
        ...NO_LLAMA_KEYS,
        attention_bias: false,
        attention_dropout: 0.0,
        embd_pdrop: 0.0,
        full_attn_mod: 1,
        interpolate_factor: 1,
        lm_head_bias: false,
        mlp_bias: false,
        original_max_position_embeddings: 16,
        pad_token_id: 0,
        partial_rotary_factor: 0.75,
        resid_pdrop: 0.0,
        rope_scaling: {
          long_factor: factors(6, 1.0, 3.7),
          short_factor: factors(6, 1.0, 0.05),
          type: 'longrope',
        },
        sliding_window: 262144,
        torch_dtype: 'float32',
      },
    },
    features: ['partial-rotary', 'longrope-switch', 'longrope-attention-factor'],
    check: (s) => {
      expect([s.architecture, s.rotaryDim]).toEqual(['phi3', 12]);
      expect(s.ropeScaling.type).toBe('longrope');
    },
  },
  {
    // Phi-3.5-mini's config.json, scaled down: full rotary, LongRoPE ("longrope") crossed, untied.
    name: 'Phi-3.5-mini shape (fused tensors, LongRoPE crossed, untied)',
    opts: {
      architecture: 'Phi3ForCausalLM',
      hidden: 64,
      heads: 4,
      kvHeads: 4,
      maxPositions: 128,
      seed: 231,
      config: {
        attention_bias: false,
        attention_dropout: 0.0,
        embd_pdrop: 0.0,
        original_max_position_embeddings: 16,
        pad_token_id: 32000,
        resid_pdrop: 0.0,
        rope_scaling: {
          long_factor: factors(8, 1.0, 2.5),
          short_factor: factors(8, 1.0, 0.02),
          type: 'longrope',
        },
        sliding_window: 262144,
        torch_dtype: 'float32',
      },
    },
    features: ['longrope-switch', 'longrope-attention-factor'],
    check: (s) =>
      expect([s.architecture, s.rotaryDim, s.tieWordEmbeddings]).toEqual(['phi3', undefined, false]),
  },
  {
    // gemma-2-2b-it's config.json, scaled down: head_dim 32, query_pre_attn_scalar 24 (≠ head_dim),
    // soft-capping of attention scores (5, low enough to bite at these sizes) and final logits (8),
    // sliding layers 0 (window 128, over the whole context here), tied.
    name: 'Gemma 2 ((1 + w) norms ×4, √hidden, GeGLU, query_pre_attn_scalar, both soft-caps)',
    opts: {
      architecture: 'Gemma2ForCausalLM',
      hidden: 48,
      heads: 4,
      kvHeads: 2,
      headDim: 32,
      tie: true,
      maxPositions: 128,
      seed: 241,
      config: {
        ...NO_LLAMA_KEYS,
        attention_bias: false,
        attention_dropout: 0.0,
        attn_logit_softcapping: 5.0,
        cache_implementation: 'hybrid',
        eos_token_id: [1, 107],
        final_logit_softcapping: 8.0,
        hidden_act: 'gelu_pytorch_tanh',
        hidden_activation: 'gelu_pytorch_tanh',
        pad_token_id: 0,
        query_pre_attn_scalar: 24,
        rms_norm_eps: 1e-6,
        sliding_window: 128,
        torch_dtype: 'float32',
        transformers_version: '4.42.4',
      },
    },
    features: [
      'one-plus-w',
      'embed-scale',
      'geglu',
      'sandwich-norms',
      'attention-scale',
      'attn-softcap',
      'final-softcap',
    ],
    check: (s) => {
      expect([s.architecture, s.attnLogitSoftcap, s.finalLogitSoftcap]).toEqual(['gemma2', 5, 8]);
      expect(s.attentionScale).toBeCloseTo(24 ** -0.5, 15);
    },
  },
  {
    // gemma-3-1b-it's config.json, scaled down: q/k norms, sliding_window_pattern 2 (layer 0
    // sliding with the local RoPE base 10000, layer 1 global with rope_theta 1e6 and linear
    // scaling ×8, as the 4B's global layers), head_dim 32, bf16 weights (√48 rounds to bf16 6.9375).
    name: 'Gemma 3 text (q/k norm, local/global RoPE, linear scaling, bf16)',
    opts: {
      architecture: 'Gemma3ForCausalLM',
      hidden: 48,
      heads: 4,
      kvHeads: 1,
      headDim: 32,
      tie: true,
      dtype: 'BF16',
      maxPositions: 128,
      ropeTheta: 1000000,
      ropeScaling: { factor: 8.0, rope_type: 'linear' },
      seed: 303,
      config: {
        attention_bias: false,
        attention_dropout: 0.0,
        attn_logit_softcapping: null,
        cache_implementation: 'hybrid',
        eos_token_id: [1, 106],
        final_logit_softcapping: null,
        hidden_act: undefined,
        hidden_activation: 'gelu_pytorch_tanh',
        pad_token_id: 0,
        query_pre_attn_scalar: 32,
        rms_norm_eps: 1e-6,
        rope_local_base_freq: 10000,
        sliding_window: 128,
        sliding_window_pattern: 2,
        torch_dtype: 'bfloat16',
        transformers_version: '4.50.0.dev0',
      },
    },
    features: ['qk-norm', 'one-plus-w', 'embed-scale', 'geglu', 'sandwich-norms', 'local-rope'],
    check: (s) => {
      expect([s.architecture, s.layerRope, s.localRopeTheta]).toEqual([
        'gemma3_text',
        ['local', 'global'],
        10000,
      ]);
      expect(s.ropeScaling).toEqual({ type: 'linear', factor: 8 });
    },
  },
];

describe('new architectures match the float64 reference (logits and 64 greedy steps)', () => {
  test.each(ARCH_CASES)('$name', async ({ opts, features, check }) => {
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
  });
});
