/**
 * Llama (LlamaForCausalLM; transformers' modeling_llama.py / configuration_llama.py): the base
 * layout. `attention_bias` puts biases on q, k, v and o; `mlp_bias` on gate, up and down.
 */
import type { Architecture } from '../architecture.js';
import { LLAMA_BLOCK, llamaTensors } from '../llama-layout.js';

export const llama: Architecture = {
  name: 'llama',
  hfClasses: ['LlamaForCausalLM'],
  config(f) {
    const attentionBias = f.bool('attention_bias', false);
    return { qkvBias: attentionBias, oBias: attentionBias, mlpBias: f.bool('mlp_bias', false) };
  },
  tensors: llamaTensors,
  block: LLAMA_BLOCK,
};
