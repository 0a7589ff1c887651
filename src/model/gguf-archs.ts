/**
 * The GGUF architectures Kiln runs and, for each, what llama.cpp's converter (convert_hf_to_gguf.py)
 * changed on the way from the Hugging Face checkpoint: the transformers class it came from, its
 * own `<arch>.*` keys turned back into config.json fields (with llama.cpp's loader defaults and
 * implied rules where the converter writes no key), the tensor names that differ from Llama's, the
 * q/k row permutation (Llama family only) and Gemma's norm weights stored with the 1 of (1 + w)
 * already added. gguf-config.ts applies these on top of the keys every architecture shares.
 */
import { InvalidModelFileError, UnsupportedModelError } from '../errors.js';
import type { GgufHeader } from '../io/gguf.js';

/** What an architecture's rules read: the file and the sizes gguf-config.ts has already read. */
export interface GgufArchKeys {
  readonly h: GgufHeader;
  /** The GGUF architecture name (`general.architecture`). */
  readonly arch: string;
  /** `<arch>.<k>`. */
  key(k: string): string;
  /** A number under `<arch>.<k>` (f32 values as the decimal they were written from), or undefined. */
  num(k: string): number | undefined;
  /** A non-negative integer under `<arch>.<k>`, or undefined. */
  uint(k: string): number | undefined;
  readonly numLayers: number;
  readonly hidden: number;
  readonly heads: number;
  readonly headDim: number;
  /** LongRoPE's per-frequency factors, read from the tensors rope_factors_long/short, if present. */
  readonly longrope: { long: number[]; short: number[] } | null;
}

export interface GgufArchitecture {
  /** The transformers class the converter reads (config.json's `architectures[0]`). */
  readonly hfClass: string;
  /**
   * llama.cpp's converter interleaves the rotary halves of q and k rows for Llama-family models
   * (its Llama kernels rotate adjacent pairs); every other family keeps transformers' order.
   */
  readonly permutedQk: boolean;
  /**
   * Gemma: transformers' RMSNorm multiplies by (1 + w) and the converter stores every `*norm.weight`
   * as w + 1 (in the checkpoint's dtype), so llama.cpp multiplies by the stored value.
   */
  readonly normsPlusOne: boolean;
  /** GGUF names of the layer parts (transformers' module path) that differ from Llama's. */
  readonly parts?: Readonly<Record<string, string>>;
  /** config.json fields from the architecture's own keys (overriding the shared ones). */
  config?(c: GgufArchKeys): Record<string, unknown>;
}

/**
 * Which layers slide, as llama.cpp decides for files without a per-layer list: the key
 * `<arch>.attention.sliding_window_pattern` as a period n (layer l slides unless l % n == n - 1) or
 * a bool per layer, else the architecture's fixed period (Gemma 2: 2, Gemma 3: 6), the rule
 * transformers also applies (`sliding_window_pattern`).
 */
function slidingLayers(c: GgufArchKeys, defaultPeriod: number): boolean[] {
  const key = c.key('attention.sliding_window_pattern');
  const v = c.h.metadata.get(key);
  if (v?.type === 'array' && v.itemType === 'bool') {
    if (v.value.length !== c.numLayers) {
      throw new InvalidModelFileError(
        `${c.h.file}: metadata ${key} has ${v.value.length} entries, expected one per layer (${c.numLayers})`,
      );
    }
    return [...(v.value as boolean[])];
  }
  const period = c.h.metadata.optionalUint(key) ?? defaultPeriod;
  if (period < 1) {
    throw new InvalidModelFileError(`${c.h.file}: metadata ${key} is 0, expected a period of at least 1`);
  }
  return Array.from({ length: c.numLayers }, (_, l) => l % period < period - 1);
}

/**
 * What both Gemmas share. GGUF stores no `query_pre_attn_scalar`: llama.cpp scales queries by
 * head_dim^-½, except for the 27B models (recognized by their layer count) whose scalar is
 * hidden / heads, as their configs say (gemma_pytorch's rule); the same rule is applied here.
 * `window`: the sliding window, or undefined for none.
 */
function gemmaConfig(
  c: GgufArchKeys,
  window: number | undefined,
  period: number,
  layers27b: number,
): Record<string, unknown> {
  const sliding = slidingLayers(c, period);
  return {
    hidden_act: undefined,
    hidden_activation: 'gelu_pytorch_tanh',
    query_pre_attn_scalar: c.numLayers === layers27b ? c.hidden / c.heads : c.headDim,
    sliding_window: window ?? null,
    layer_types: sliding.map((s) => (s ? 'sliding_attention' : 'full_attention')),
  };
}

const GEMMA_PARTS = {
  // Gemma's sandwich: transformers' post_attention_layernorm normalizes the attention output.
  post_attention_layernorm: 'post_attention_norm',
  pre_feedforward_layernorm: 'ffn_norm',
  post_feedforward_layernorm: 'post_ffw_norm',
};

export const GGUF_ARCHITECTURES: Readonly<Record<string, GgufArchitecture>> = {
  llama: {
    hfClass: 'LlamaForCausalLM',
    permutedQk: true,
    normsPlusOne: false,
    config: (c) => ({
      attention_bias: c.h.tensors.has('blk.0.attn_q.bias'),
      mlp_bias: c.h.tensors.has('blk.0.ffn_up.bias'),
    }),
  },
  mistral: {
    hfClass: 'MistralForCausalLM',
    permutedQk: true,
    normsPlusOne: false,
    config: (c) => ({ sliding_window: c.uint('attention.sliding_window') ?? null }),
  },
  qwen2: {
    hfClass: 'Qwen2ForCausalLM',
    permutedQk: false,
    normsPlusOne: false,
    config: (c) => qwenWindow(c),
  },
  qwen3: {
    hfClass: 'Qwen3ForCausalLM',
    permutedQk: false,
    normsPlusOne: false,
    config: (c) => ({ ...qwenWindow(c), attention_bias: c.h.tensors.has('blk.0.attn_q.bias') }),
  },
  gemma2: {
    hfClass: 'Gemma2ForCausalLM',
    permutedQk: false,
    normsPlusOne: true,
    parts: GEMMA_PARTS,
    config: (c) => {
      // llama.cpp's defaults where the keys are absent (also Gemma2Config's).
      const window = c.uint('attention.sliding_window') ?? 4096;
      return {
        ...gemmaConfig(c, window > 0 ? window : undefined, 2, 46),
        attn_logit_softcapping: c.num('attn_logit_softcapping') ?? 50,
        final_logit_softcapping: c.num('final_logit_softcapping') ?? 30,
      };
    },
  },
  gemma3: {
    hfClass: 'Gemma3ForCausalLM',
    permutedQk: false,
    normsPlusOne: true,
    parts: GEMMA_PARTS,
    config: (c) => {
      // The converter omits the window when every layer is global (sliding_window_pattern 1).
      const window = c.uint('attention.sliding_window');
      return {
        ...gemmaConfig(c, window !== undefined && window > 0 ? window : undefined, 6, 62),
        // Older converters write no local base: llama.cpp's (and Gemma3Config's) 10000.
        rope_local_base_freq: c.num('rope.freq_base_swa') ?? 10000,
        attn_logit_softcapping: c.num('attn_logit_softcapping') ?? null,
        final_logit_softcapping: c.num('final_logit_softcapping') ?? null,
      };
    },
  },
  phi3: {
    hfClass: 'Phi3ForCausalLM',
    permutedQk: false,
    normsPlusOne: false,
    parts: { 'self_attn.qkv_proj': 'attn_qkv', 'mlp.gate_up_proj': 'ffn_up' },
    config: phi3Config,
  },
};

/** Qwen2/3: a window key means transformers' use_sliding_window (its layer rule applies). */
function qwenWindow(c: GgufArchKeys): Record<string, unknown> {
  const window = c.uint('attention.sliding_window');
  return window === undefined ? {} : { use_sliding_window: true, sliding_window: window };
}

/**
 * Phi-3: the rotated dims as `partial_rotary_factor` (Phi-4-mini), LongRoPE from the factor
 * tensors with `rope.scaling.original_context_length` and `rope.scaling.attn_factor`, and the
 * window (the converter writes 0 for none). transformers switches LongRoPE's factors per position
 * (long from the original context on), llama.cpp per context size; Kiln follows transformers.
 */
function phi3Config(c: GgufArchKeys): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  const ropeDims = c.uint('rope.dimension_count') ?? c.headDim;
  if (ropeDims > c.headDim || ropeDims % 2 !== 0 || ropeDims === 0) {
    throw new InvalidModelFileError(
      `${c.h.file}: metadata ${c.key('rope.dimension_count')} is ${ropeDims}, expected an even count up to the head size ${c.headDim}`,
    );
  }
  if (ropeDims !== c.headDim) {
    const factor = ropeDims / c.headDim;
    if (Math.floor(c.headDim * factor) !== ropeDims) {
      throw new UnsupportedModelError(
        `${c.h.file}: ${c.key('rope.dimension_count')} ${ropeDims} of head size ${c.headDim} is not a rotary fraction Kiln can represent`,
      );
    }
    out['partial_rotary_factor'] = factor;
  }
  const window = c.uint('attention.sliding_window');
  out['sliding_window'] = window !== undefined && window > 0 ? window : null;
  const orig = c.uint('rope.scaling.original_context_length');
  if (orig !== undefined) out['original_max_position_embeddings'] = orig;
  if (c.longrope) {
    if (orig === undefined) {
      throw new InvalidModelFileError(
        `${c.h.file}: LongRoPE factors (rope_factors_long.weight) without metadata ${c.key('rope.scaling.original_context_length')}`,
      );
    }
    const scaling: Record<string, unknown> = {
      type: 'longrope',
      long_factor: c.longrope.long,
      short_factor: c.longrope.short,
    };
    // The converter stores the attention factor as f32; where it is the f32 of transformers'
    // default (√(1 + ln s / ln orig)), the parser recomputes that in float64, as transformers does.
    const stored = c.h.metadata.optionalNumber(c.key('rope.scaling.attn_factor'));
    const ctx = c.h.metadata.uint(c.key('context_length'));
    const s = ctx / orig;
    const formula = s > 1 ? Math.sqrt(1 + Math.log(s) / Math.log(orig)) : 1;
    if (stored !== undefined && Math.fround(stored) !== Math.fround(formula)) {
      scaling['attention_factor'] = stored;
    }
    out['rope_scaling'] = scaling;
  }
  return out;
}
