/**
 * Qwen2 / Qwen2.5 (Qwen2ForCausalLM; modeling_qwen2.py): Llama's layout with biases on q, k and v
 * always (none on o or the MLP, whatever attention_bias says), and a sliding window only when
 * `use_sliding_window` is true, on the layers Qwen2Config picks: those `layer_types` marks
 * "sliding_attention", or without it every layer from `max_window_layers` on.
 */
import type { Architecture } from '../architecture.js';
import { LLAMA_BLOCK, llamaTensors } from '../llama-layout.js';
import { layerWindowsFrom } from '../windows.js';

/** Qwen2Config's defaults for absent keys. */
const DEFAULT_SLIDING_WINDOW = 4096;
const DEFAULT_MAX_WINDOW_LAYERS = 28;

export const qwen2: Architecture = {
  name: 'qwen2',
  hfClasses: ['Qwen2ForCausalLM'],
  config(f, { numLayers }) {
    // Qwen2Config drops sliding_window unless use_sliding_window; an absent key is its default and
    // an explicit null means no window even then.
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
    const layerWindows = layerWindowsFrom(f, numLayers, window, (i) => i >= maxWindowLayers);
    return { qkvBias: true, oBias: false, mlpBias: false, layerWindows };
  },
  tensors: llamaTensors,
  block: LLAMA_BLOCK,
};
