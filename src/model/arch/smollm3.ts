/**
 * SmolLM3 (SmolLM3ForCausalLM; modeling_smollm3.py / configuration_smollm3.py): Llama's layout and
 * block, but some layers apply no RoPE at all (NoPE): `no_rope_layers[l]` is 1 where layer l
 * rotates, 0 where it does not; absent, every `no_rope_layer_interval`-th layer (default 4: layers
 * 3, 7, ...) is NoPE. Biases as Llama (`attention_bias` on q, k, v and o, `mlp_bias`); a sliding
 * window only with `use_sliding_window`, on the NoPE layers unless `layer_types` says otherwise.
 */
import type { Architecture } from '../architecture.js';
import { LLAMA_BLOCK, llamaTensors } from '../llama-layout.js';
import { layerWindowsFrom } from '../windows.js';

export const smollm3: Architecture = {
  name: 'smollm3',
  hfClasses: ['SmolLM3ForCausalLM'],
  config(f, { numLayers }) {
    const attentionBias = f.bool('attention_bias', false);
    let ropeLayers: boolean[];
    if (f.unset('no_rope_layers')) {
      const interval = f.optionalPositiveInt('no_rope_layer_interval') ?? 4;
      ropeLayers = Array.from({ length: numLayers }, (_, l) => (l + 1) % interval !== 0);
    } else {
      const v = f.raw('no_rope_layers');
      if (!Array.isArray(v) || v.length < numLayers || v.some((x) => x !== 0 && x !== 1)) {
        f.invalid('no_rope_layers', v, `a list of at least ${numLayers} entries, each 0 or 1`);
      }
      ropeLayers = (v as number[]).slice(0, numLayers).map((x) => x === 1);
    }
    // As SmolLM3Config: without layer_types, the NoPE layers slide when use_sliding_window and
    // sliding_window are both set.
    const window = f.bool('use_sliding_window', false) ? f.optionalPositiveInt('sliding_window') : undefined;
    return {
      qkvBias: attentionBias,
      oBias: attentionBias,
      mlpBias: f.bool('mlp_bias', false),
      ropeLayers,
      layerWindows: layerWindowsFrom(f, numLayers, window, (i) => !ropeLayers[i]),
    };
  },
  tensors: llamaTensors,
  block: LLAMA_BLOCK,
};
