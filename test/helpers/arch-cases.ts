/**
 * Seeded synthetic checkpoints of the architectures added for the 2026 small models, each with a
 * config.json in the layout transformers saves for the real model it is scaled down from (same
 * keys, tiny sizes), and the features whose removal must change the model. Shared by the model,
 * int4 and engine tests.
 */
import { expect } from 'vitest';
import type { Ablation } from '../../src/model/reference.js';
import type { ModelSpec } from '../../src/model/spec.js';
import type { TestModelOptions } from './checkpoints.js';

/** LongRoPE factor lists of `half` entries (values like Phi-3.5's: short near 1, long up to ~20). */
const factors = (half: number, from: number, step: number) =>
  Array.from({ length: half }, (_, i) => Number((from + i * step).toFixed(4)));

export interface ArchCase {
  name: string;
  opts: TestModelOptions;
  /** Features whose removal must move the reference logits (each ≥ 100 × the tolerance). */
  features: Ablation[];
  check: (spec: ModelSpec) => void;
}

/** Keys a real config of the family lacks (JSON.stringify drops undefined). */
const NO_LLAMA_KEYS = { rope_scaling: undefined } as const;

export const ARCH_CASES: ArchCase[] = [
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
    // a sliding window of 12 on layer 0 (shorter than the 20-token prompt + 64 generated), tied.
    name: 'Gemma 2 ((1 + w) norms ×4, √hidden, GeGLU, query_pre_attn_scalar, soft-caps, window 12)',
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
        sliding_window: 12,
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
      'sliding-window',
    ],
    check: (s) => {
      expect([s.architecture, s.attnLogitSoftcap, s.finalLogitSoftcap]).toEqual(['gemma2', 5, 8]);
      expect(s.layerWindows).toEqual([12, 0]);
      expect(s.attentionScale).toBeCloseTo(24 ** -0.5, 15);
    },
  },
  {
    // gemma-3-1b-it's config.json, scaled down: q/k norms, sliding_window_pattern 2 (layer 0 slides,
    // window 10, with the local RoPE base 10000; layer 1 is global with rope_theta 1e6 and linear
    // scaling ×8, as the 4B's global layers), head_dim 32, bf16 weights (√48 rounds to bf16 6.9375).
    name: 'Gemma 3 text (q/k norm, local/global RoPE, window 10, linear scaling, bf16)',
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
        sliding_window: 10,
        sliding_window_pattern: 2,
        torch_dtype: 'bfloat16',
        transformers_version: '4.50.0.dev0',
      },
    },
    features: [
      'qk-norm',
      'one-plus-w',
      'embed-scale',
      'geglu',
      'sandwich-norms',
      'local-rope',
      'sliding-window',
    ],
    check: (s) => {
      expect([s.architecture, s.layerRope, s.localRopeTheta]).toEqual([
        'gemma3_text',
        ['local', 'global'],
        10000,
      ]);
      expect(s.ropeScaling).toEqual({ type: 'linear', factor: 8 });
      expect(s.layerWindows).toEqual([10, 0]);
    },
  },
];
