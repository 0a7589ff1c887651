/**
 * Gemma 2 (Gemma2ForCausalLM; modeling_gemma2.py / configuration_gemma2.py): the Gemma block
 * (gemma-layout.ts) with attention-logit soft-capping (`attn_logit_softcapping`, 50) and final-
 * logit soft-capping (`final_logit_softcapping`, 30), and sliding-window attention on every other
 * layer starting with layer 0 (or as `layer_types` says).
 */
import type { Architecture } from '../architecture.js';
import { GEMMA_BLOCK, gemmaConfig, gemmaTensors } from '../gemma-layout.js';

export const gemma2: Architecture = {
  name: 'gemma2',
  hfClasses: ['Gemma2ForCausalLM'],
  config: (f, { numLayers }) => gemmaConfig(f, numLayers, (l) => (l + 1) % 2 !== 0),
  tensors: gemmaTensors,
  block: GEMMA_BLOCK,
};
