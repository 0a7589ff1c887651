/**
 * Qwen2 / Qwen2.5 (Qwen2ForCausalLM; modeling_qwen2.py): Llama's layout with biases on q, k and v
 * always (none on o or the MLP, whatever attention_bias says), and a sliding window only when
 * `use_sliding_window` is true.
 */
import type { Architecture } from '../architecture.js';
import { LLAMA_BLOCK, llamaTensors } from '../llama-layout.js';

export const qwen2: Architecture = {
  name: 'qwen2',
  hfClasses: ['Qwen2ForCausalLM'],
  config(f) {
    const slidingWindow = f.bool('use_sliding_window', false) ? f.positiveInt('sliding_window') : undefined;
    return { qkvBias: true, oBias: false, mlpBias: false, slidingWindow };
  },
  tensors: llamaTensors,
  block: LLAMA_BLOCK,
};
