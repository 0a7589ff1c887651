/**
 * The model shapes Kiln benchmarks at: real configurations (the config.json fields that fix the
 * layer shapes), used by `kiln bench kernels` for layer shapes and by the synthetic-weight
 * benchmark models of bench/.
 */
import { parseModelConfig } from '../src/model/config.js';

/** config.json fields per benchmark shape (weights are generated, seeded, at these shapes). */
export const SHAPES: Record<string, Record<string, unknown>> = {
  'smollm2-135m': {
    architectures: ['LlamaForCausalLM'],
    hidden_size: 576,
    intermediate_size: 1536,
    num_hidden_layers: 30,
    num_attention_heads: 9,
    num_key_value_heads: 3,
    vocab_size: 49152,
    max_position_embeddings: 8192,
    rms_norm_eps: 1e-5,
    rope_theta: 100000,
    tie_word_embeddings: true,
  },
  'qwen2.5-0.5b': {
    architectures: ['Qwen2ForCausalLM'],
    hidden_size: 896,
    intermediate_size: 4864,
    num_hidden_layers: 24,
    num_attention_heads: 14,
    num_key_value_heads: 2,
    vocab_size: 151936,
    max_position_embeddings: 32768,
    rms_norm_eps: 1e-6,
    rope_theta: 1000000,
    tie_word_embeddings: true,
  },
  'llama-3.2-1b': {
    architectures: ['LlamaForCausalLM'],
    hidden_size: 2048,
    intermediate_size: 8192,
    num_hidden_layers: 16,
    num_attention_heads: 32,
    num_key_value_heads: 8,
    head_dim: 64,
    vocab_size: 128256,
    max_position_embeddings: 131072,
    rms_norm_eps: 1e-5,
    rope_theta: 500000,
    rope_scaling: {
      rope_type: 'llama3',
      factor: 32,
      low_freq_factor: 1,
      high_freq_factor: 4,
      original_max_position_embeddings: 8192,
    },
    tie_word_embeddings: true,
  },
  // The 2026 small models' layer shapes (their config.json fields), with the vocabulary cut to
  // 32768 so a few-layer synthetic copy stays small on a CPU adapter: decode rows compare layers,
  // and the LM head's share at the real vocabulary is stated beside the figures.
  'qwen3-0.6b': {
    architectures: ['Qwen3ForCausalLM'],
    model_type: 'qwen3',
    hidden_size: 1024,
    intermediate_size: 3072,
    num_hidden_layers: 28,
    num_attention_heads: 16,
    num_key_value_heads: 8,
    head_dim: 128,
    vocab_size: 32768,
    max_position_embeddings: 40960,
    rms_norm_eps: 1e-6,
    rope_theta: 1000000,
    tie_word_embeddings: true,
  },
  'gemma-3-1b': {
    architectures: ['Gemma3ForCausalLM'],
    model_type: 'gemma3_text',
    hidden_size: 1152,
    intermediate_size: 6912,
    num_hidden_layers: 26,
    num_attention_heads: 4,
    num_key_value_heads: 1,
    head_dim: 256,
    hidden_activation: 'gelu_pytorch_tanh',
    query_pre_attn_scalar: 256,
    sliding_window: 512,
    sliding_window_pattern: 6,
    rope_local_base_freq: 10000,
    vocab_size: 32768,
    max_position_embeddings: 32768,
    rms_norm_eps: 1e-6,
    rope_theta: 1000000,
    tie_word_embeddings: true,
  },
  'phi-4-mini': {
    architectures: ['Phi3ForCausalLM'],
    model_type: 'phi3',
    hidden_size: 3072,
    intermediate_size: 8192,
    num_hidden_layers: 32,
    num_attention_heads: 24,
    num_key_value_heads: 8,
    partial_rotary_factor: 0.75,
    original_max_position_embeddings: 4096,
    rope_scaling: {
      type: 'longrope',
      short_factor: Array.from({ length: 48 }, () => 1),
      long_factor: Array.from({ length: 48 }, (_, i) => 1 + i / 2),
    },
    sliding_window: 262144,
    vocab_size: 32768,
    max_position_embeddings: 131072,
    rms_norm_eps: 1e-5,
    rope_theta: 10000,
    tie_word_embeddings: true,
  },
};

export interface BenchLinear {
  name: string;
  /** Output features (for gate_up: gate + up rows). */
  n: number;
  k: number;
}

export interface BenchModel {
  name: string;
  layers: number;
  hidden: number;
  vocab: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  /** The decode step's matrices per layer, as Kiln fuses them. */
  linears: BenchLinear[];
}

function benchModel(name: string): BenchModel {
  const s = parseModelConfig({ ...SHAPES[name], hidden_act: 'silu' });
  const qDim = s.numHeads * s.headDim;
  const kvDim = s.numKvHeads * s.headDim;
  return {
    name,
    layers: s.numLayers,
    hidden: s.hiddenSize,
    vocab: s.vocabSize,
    heads: s.numHeads,
    kvHeads: s.numKvHeads,
    headDim: s.headDim,
    linears: [
      { name: 'qkv_proj', n: qDim + 2 * kvDim, k: s.hiddenSize },
      { name: 'o_proj', n: s.hiddenSize, k: qDim },
      { name: 'gate_up_proj', n: 2 * s.intermediateSize, k: s.hiddenSize },
      { name: 'down_proj', n: s.hiddenSize, k: s.intermediateSize },
    ],
  };
}

/** The kernel benchmark's models: Llama-3.2-1B and Qwen2.5-0.5B layer shapes. */
export const BENCH_MODELS: BenchModel[] = ['llama-3.2-1b', 'qwen2.5-0.5b'].map(benchModel);
