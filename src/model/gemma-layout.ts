/**
 * What Gemma 2 and Gemma 3 (modeling_gemma2.py, modeling_gemma3.py) share: Llama's tensor names
 * plus four norms per layer (`input_layernorm`, `post_attention_layernorm` on the attention
 * output, `pre_feedforward_layernorm`, `post_feedforward_layernorm` on the MLP output), (1 + w)
 * RMSNorm weights, embeddings scaled by √hidden, GeGLU with tanh-GELU, the attention scale
 * `query_pre_attn_scalar`^-½, optional tanh soft-capping of attention scores and final logits, and
 * sliding-window layers.
 */
import type { ArchConfig, BlockRecipe, ModelTensors } from './architecture.js';
import type { Fields } from './fields.js';
import { llamaTensors } from './llama-layout.js';
import { layerWindowsFrom } from './windows.js';
import type { ModelSpec } from './spec.js';

export const GEMMA_BLOCK: BlockRecipe = {
  norm: 'rmsnorm-sandwich',
  normWeight: 'one-plus-w',
  qkNorm: 'none',
  positions: 'rope',
  mlp: 'geglu-tanh',
  embedScale: 'sqrt-hidden',
};

export function gemmaTensors(spec: ModelSpec): ModelTensors {
  const t = llamaTensors(spec);
  return {
    ...t,
    layers: t.layers.map((L, i) => {
      const p = `model.layers.${i}`;
      return {
        ...L,
        attnOutNorm: `${p}.post_attention_layernorm.weight`,
        postNorm: `${p}.pre_feedforward_layernorm.weight`,
        mlpOutNorm: `${p}.post_feedforward_layernorm.weight`,
      };
    }),
  };
}

/**
 * The fields both Gemmas read. `defaultSliding(l)`: whether layer l slides when `layer_types` is
 * absent (Gemma 2: every other layer from layer 0; Gemma 3: all but every sixth).
 */
export function gemmaConfig(
  f: Fields,
  numLayers: number,
  defaultSliding: (l: number) => boolean,
): ArchConfig {
  // transformers reads hidden_activation (hidden_act is its older name, kept by Gemma 2 configs).
  const actField = f.unset('hidden_activation') ? 'hidden_act' : 'hidden_activation';
  const act = f.unset(actField) ? 'gelu_pytorch_tanh' : f.raw(actField);
  if (act !== 'gelu_pytorch_tanh') {
    f.unsupported(
      `${actField} ${JSON.stringify(act)} is not supported (expected "gelu_pytorch_tanh", the tanh approximation Gemma uses)`,
    );
  }
  const attentionBias = f.bool('attention_bias', false);
  const scalar = f.optionalPositiveNumber('query_pre_attn_scalar') ?? 256;
  return {
    qkvBias: attentionBias,
    oBias: attentionBias,
    mlpBias: false,
    layerWindows: layerWindowsFrom(f, numLayers, f.optionalPositiveInt('sliding_window'), defaultSliding),
    attentionScale: scalar ** -0.5,
    attnLogitSoftcap: f.optionalPositiveNumber('attn_logit_softcapping'),
    finalLogitSoftcap: f.optionalPositiveNumber('final_logit_softcapping'),
  };
}
