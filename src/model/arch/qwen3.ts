/**
 * Qwen3 (Qwen3ForCausalLM; transformers' modeling_qwen3.py / configuration_qwen3.py): Llama's
 * layout and block with a per-head RMSNorm of q and k before RoPE (`self_attn.q_norm` /
 * `k_norm`, [head_dim]), an explicit head_dim, biases on q, k, v and o only when
 * `attention_bias`, and a sliding window only when `use_sliding_window`, on the layers Qwen3Config
 * picks: those `layer_types` marks "sliding_attention", or else every layer from
 * `max_window_layers` on.
 */
import type { Architecture } from '../architecture.js';
import { LLAMA_BLOCK, llamaTensors, withQkNorm } from '../llama-layout.js';
import { layerWindowsFrom } from '../windows.js';

/** Qwen3Config's defaults for absent keys. */
const DEFAULT_SLIDING_WINDOW = 4096;
const DEFAULT_MAX_WINDOW_LAYERS = 28;

export const qwen3: Architecture = {
  name: 'qwen3',
  hfClasses: ['Qwen3ForCausalLM'],
  config(f, { numLayers }) {
    const attentionBias = f.bool('attention_bias', false);
    // As Qwen3Config: sliding_window is dropped unless use_sliding_window; absent means its
    // default, null means none.
    let window: number | undefined;
    if (f.bool('use_sliding_window', false)) {
      const raw = f.raw('sliding_window');
      window =
        raw === undefined
          ? DEFAULT_SLIDING_WINDOW
          : raw === null
            ? undefined
            : f.positiveInt('sliding_window');
    }
    const maxWindowLayers = f.unset('max_window_layers')
      ? DEFAULT_MAX_WINDOW_LAYERS
      : f.nonNegativeInt('max_window_layers');
    return {
      qkvBias: attentionBias,
      oBias: attentionBias,
      mlpBias: false,
      layerWindows: layerWindowsFrom(f, numLayers, window, (i) => i >= maxWindowLayers),
    };
  },
  tensors: (spec) => withQkNorm(llamaTensors(spec)),
  block: { ...LLAMA_BLOCK, qkNorm: 'rmsnorm-head' },
};
