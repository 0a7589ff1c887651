/**
 * The checkpoint layout and block of transformers' LlamaForCausalLM (modeling_llama.py), which
 * Mistral, Qwen2 and most decoder-only models reuse: `model.embed_tokens`, per layer
 * `input_layernorm`, `self_attn.{q,k,v,o}_proj`, `post_attention_layernorm`, `mlp.{gate,up,down}_proj`,
 * then `model.norm` and `lm_head` (absent when tied to the embeddings).
 */
import type { BlockRecipe, ModelTensors, ProjectionRole, ProjectionTensors } from './architecture.js';
import type { ModelSpec } from './spec.js';

export const LLAMA_BLOCK: BlockRecipe = {
  norm: 'rmsnorm-pre',
  normWeight: 'w',
  qkNorm: 'none',
  positions: 'rope',
  mlp: 'swiglu',
  embedScale: 'none',
};

export function llamaTensors(spec: ModelSpec): ModelTensors {
  const { hiddenSize: h, intermediateSize: inter, numHeads, numKvHeads, headDim } = spec;
  const qDim = numHeads * headDim;
  const kvDim = numKvHeads * headDim;
  const projection = (
    name: string,
    layer: number,
    role: ProjectionRole,
    sources: [string, number][],
    cols: number,
    bias: boolean,
  ): ProjectionTensors => ({
    name,
    role,
    layer,
    sources: sources.map(([prefix, rows]) => ({ prefix, rows })),
    cols,
    bias,
  });
  return {
    embed: 'model.embed_tokens.weight',
    layers: Array.from({ length: spec.numLayers }, (_, i) => {
      const p = `model.layers.${i}`;
      const attn = `${p}.self_attn`;
      const mlp = `${p}.mlp`;
      return {
        inputNorm: `${p}.input_layernorm.weight`,
        qkv: projection(
          `${attn}.qkv_proj`,
          i,
          'qkv',
          [
            [`${attn}.q_proj`, qDim],
            [`${attn}.k_proj`, kvDim],
            [`${attn}.v_proj`, kvDim],
          ],
          h,
          spec.qkvBias,
        ),
        o: projection(`${attn}.o_proj`, i, 'o', [[`${attn}.o_proj`, h]], qDim, spec.oBias),
        postNorm: `${p}.post_attention_layernorm.weight`,
        gateUp: projection(
          `${mlp}.gate_up_proj`,
          i,
          'gateUp',
          [
            [`${mlp}.gate_proj`, inter],
            [`${mlp}.up_proj`, inter],
          ],
          h,
          spec.mlpBias,
        ),
        down: projection(`${mlp}.down_proj`, i, 'down', [[`${mlp}.down_proj`, h]], inter, spec.mlpBias),
      };
    }),
    finalNorm: 'model.norm.weight',
    lmHead: spec.tieWordEmbeddings ? null : 'lm_head',
  };
}

/** The layout plus the per-head q/k norms `self_attn.q_norm` / `k_norm` (Qwen3, Gemma 3). */
export function withQkNorm(t: ModelTensors): ModelTensors {
  return {
    ...t,
    layers: t.layers.map((L, i) => ({
      ...L,
      qNorm: `model.layers.${i}.self_attn.q_norm.weight`,
      kNorm: `model.layers.${i}.self_attn.k_norm.weight`,
    })),
  };
}
