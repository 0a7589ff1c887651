/**
 * Mistral (MistralForCausalLM; modeling_mistral.py): Llama's layout without biases (transformers'
 * Mistral ignores attention_bias and mlp_bias), and one sliding attention window on every layer
 * (MistralConfig ignores `layer_types`, warning that Ministral is the class for mixed layers).
 */
import type { Architecture } from '../architecture.js';
import { LLAMA_BLOCK, llamaTensors } from '../llama-layout.js';

/** transformers' MistralConfig default for `sliding_window` when the key is absent. */
const DEFAULT_SLIDING_WINDOW = 4096;

export const mistral: Architecture = {
  name: 'mistral',
  hfClasses: ['MistralForCausalLM'],
  config(f, { numLayers }) {
    // As MistralConfig: an absent key means its default window of 4096, while an explicit null
    // (Mistral 7B v0.2 and later) turns sliding-window attention off.
    const raw = f.raw('sliding_window');
    const slidingWindow =
      raw === undefined ? DEFAULT_SLIDING_WINDOW : raw === null ? undefined : f.positiveInt('sliding_window');
    const layerWindows = new Array<number>(numLayers).fill(slidingWindow ?? 0);
    return { qkvBias: false, oBias: false, mlpBias: false, layerWindows };
  },
  tensors: llamaTensors,
  block: LLAMA_BLOCK,
};
