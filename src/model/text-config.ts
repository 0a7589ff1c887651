/**
 * Multimodal checkpoints whose text decoder Kiln runs on its own: the config.json keeps the
 * decoder's settings under `text_config` and its weights under a prefix, beside a vision tower
 * Kiln does not run. The tower's config and weights are ignored (never read, never uploaded), so
 * such a model answers text prompts exactly as its decoder does; image inputs are not supported.
 *
 * Gemma3ForConditionalGeneration (model_type "gemma3", the Gemma 3 4B, 12B and 27B repositories):
 * transformers saves `text_config` as the difference from Gemma3TextConfig's defaults (the 4B
 * config lists only hidden_size, intermediate_size, num_hidden_layers, rope_scaling and
 * sliding_window there), so the defaults below fill in the rest, as Gemma3TextConfig's constructor
 * does. The decoder's tensors are `language_model.model.*` (and `language_model.lm_head.weight`
 * when untied): the layout of the Hub repositories, which transformers' save_pretrained keeps by
 * reversing its `^language_model.model -> model.language_model` loading map. The tower's tensors
 * (`vision_tower.*`, `multi_modal_projector.*`) are left unread.
 */
import { isJsonObject, type JsonObject } from '../io/json.js';
import { Fields } from './fields.js';

interface TextDecoder {
  /** The text-only class whose architecture file reads the decoder. */
  readonly textClass: string;
  readonly textModelType: string;
  /** What transformers' text config constructor fills in for a field the file leaves out. */
  readonly defaults: JsonObject;
  /** Prefix of the decoder's tensor names in the checkpoint. */
  readonly tensorPrefix: string;
}

/** Gemma3TextConfig's constructor defaults (configuration_gemma3.py). */
const GEMMA3_TEXT_DEFAULTS: JsonObject = {
  vocab_size: 262208,
  hidden_size: 2304,
  intermediate_size: 9216,
  num_hidden_layers: 26,
  num_attention_heads: 8,
  num_key_value_heads: 4,
  head_dim: 256,
  hidden_activation: 'gelu_pytorch_tanh',
  max_position_embeddings: 131072,
  rms_norm_eps: 1e-6,
  pad_token_id: 0,
  eos_token_id: 1,
  bos_token_id: 2,
  tie_word_embeddings: true,
  rope_theta: 1_000_000,
  attention_bias: false,
  query_pre_attn_scalar: 256,
  sliding_window: 4096,
  final_logit_softcapping: null,
  attn_logit_softcapping: null,
  rope_scaling: null,
  rope_local_base_freq: 10_000,
};

const TEXT_DECODERS: Readonly<Record<string, TextDecoder>> = {
  Gemma3ForConditionalGeneration: {
    textClass: 'Gemma3ForCausalLM',
    textModelType: 'gemma3_text',
    defaults: GEMMA3_TEXT_DEFAULTS,
    tensorPrefix: 'language_model.',
  },
};

/** Top-level fields that apply to the decoder when its own config leaves them out. */
const INHERITED = ['bos_token_id', 'eos_token_id', 'tie_word_embeddings', 'quantization_config'] as const;

export interface TextDecoderConfig {
  /** The decoder's full config.json, as its text-only class would have saved it. */
  readonly config: JsonObject;
  /** The multimodal class, for messages. */
  readonly hfArchitecture: string;
  readonly tensorPrefix: string;
}

/**
 * The text decoder's config of a multimodal checkpoint Kiln runs the decoder of, or null when
 * `config` is not one (every other config is read as it is).
 */
export function textDecoderConfig(f: Fields, config: JsonObject): TextDecoderConfig | null {
  const archs = config.architectures;
  const cls = Array.isArray(archs) && typeof archs[0] === 'string' ? archs[0] : undefined;
  const decoder = cls === undefined ? undefined : TEXT_DECODERS[cls];
  if (cls === undefined || decoder === undefined) return null;
  const text = config.text_config;
  if (!isJsonObject(text)) {
    return f.invalid('text_config', text, `an object (the text decoder's settings of ${cls})`);
  }
  const t = new Fields(f.label, text, 'text_config.');
  if (!t.unset('model_type') && text.model_type !== decoder.textModelType) {
    t.invalid('model_type', text.model_type, JSON.stringify(decoder.textModelType));
  }
  const merged: JsonObject = { ...decoder.defaults };
  for (const key of INHERITED) if (!f.unset(key)) merged[key] = config[key];
  for (const [key, value] of Object.entries(text)) if (value !== undefined) merged[key] = value;
  merged.architectures = [decoder.textClass];
  merged.model_type = decoder.textModelType;
  return { config: merged, hfArchitecture: cls, tensorPrefix: decoder.tensorPrefix };
}
