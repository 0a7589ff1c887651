/**
 * Phi-3 / Phi-3.5 / Phi-4-mini (Phi3ForCausalLM; modeling_phi3.py / configuration_phi3.py):
 * Llama's block over fused checkpoint tensors, `self_attn.qkv_proj` ([q; k; v] rows) and
 * `mlp.gate_up_proj` ([gate; up] rows), used as stacked; no biases. RoPE rotates the first
 * head_dim · `partial_rotary_factor` elements of each head (Phi-4-mini: 0.75), with `longrope`
 * scaling (short/long factors switching at `original_max_position_embeddings`, cos and sin
 * multiplied by the attention factor; the older names "su" and "yarn" mean longrope, as
 * Phi3Config reads them), and `sliding_window` on every layer when set.
 */
import type { Architecture, ModelTensors } from '../architecture.js';
import { parseRopeParams } from '../rope-config.js';
import { Fields } from '../fields.js';
import { isJsonObject } from '../../io/json.js';
import { LLAMA_BLOCK, llamaTensors } from '../llama-layout.js';
import type { ModelSpec } from '../spec.js';

function phi3Tensors(spec: ModelSpec): ModelTensors {
  const t = llamaTensors(spec);
  return {
    ...t,
    layers: t.layers.map((L, i) => {
      const attn = `model.layers.${i}.self_attn`;
      const mlp = `model.layers.${i}.mlp`;
      return {
        ...L,
        qkv: {
          ...L.qkv,
          sources: [{ prefix: `${attn}.qkv_proj`, rows: L.qkv.sources.reduce((a, s) => a + s.rows, 0) }],
        },
        gateUp: {
          ...L.gateUp,
          sources: [{ prefix: `${mlp}.gate_up_proj`, rows: 2 * spec.intermediateSize }],
        },
      };
    }),
  };
}

export const phi3: Architecture = {
  name: 'phi3',
  hfClasses: ['Phi3ForCausalLM'],
  config(f, { numLayers, headDim }) {
    const factor = f.unset('partial_rotary_factor') ? 1 : f.positiveNumber('partial_rotary_factor');
    if (factor > 1) f.invalid('partial_rotary_factor', factor, 'a fraction of head_dim, at most 1');
    const rotaryDim = Math.floor(headDim * factor);
    // Phi3Config renames the rope_scaling types "su" and "yarn" to "longrope".
    let globalRope;
    const rs = f.raw('rope_scaling');
    if (isJsonObject(rs)) {
      const typeField = rs.type !== undefined ? 'type' : 'rope_type';
      if (rs[typeField] === 'su' || rs[typeField] === 'yarn') {
        const r = new Fields(f.label, { ...rs, [typeField]: 'longrope' }, 'rope_scaling.');
        const theta = f.unset('rope_theta') ? 10000 : f.positiveNumber('rope_theta');
        globalRope = { theta, scaling: parseRopeParams(r, f, 'phi3', rotaryDim) };
      }
    }
    return {
      qkvBias: false,
      oBias: false,
      mlpBias: false,
      // Phi3Attention passes config.sliding_window to every layer.
      layerWindows: new Array<number>(numLayers).fill(f.optionalPositiveInt('sliding_window') ?? 0),
      rotaryDim: rotaryDim === headDim ? undefined : rotaryDim,
      globalRope,
    };
  },
  tensors: phi3Tensors,
  block: LLAMA_BLOCK,
};
