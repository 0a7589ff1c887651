/**
 * Gemma 3 text (Gemma3ForCausalLM, model_type "gemma3_text"; modeling_gemma3.py /
 * configuration_gemma3.py): the Gemma block (gemma-layout.ts) plus a per-head (1 + w) RMSNorm of q
 * and k before RoPE, and two RoPEs: sliding layers (all but every `sliding_window_pattern`-th,
 * default 6, or as `layer_types` says) rotate with base `rope_local_base_freq` (10000) unscaled,
 * full-attention layers with `rope_theta` and `rope_scaling` (linear in the 4B and larger). Saved
 * by transformers v5, both sit in `rope_parameters` per layer type instead. Soft-capping is off
 * unless the config sets it. The multimodal Gemma3ForConditionalGeneration (4B and larger) reaches
 * this file through its `text_config` (model/text-config.ts), its vision tower ignored.
 */
import type { Architecture } from '../architecture.js';
import { Fields } from '../fields.js';
import { GEMMA_BLOCK, gemmaConfig, gemmaTensors } from '../gemma-layout.js';
import { isJsonObject } from '../../io/json.js';
import { withQkNorm } from '../llama-layout.js';
import { parseRopeParams } from '../rope-config.js';
import type { RopeScaling } from '../spec.js';

export const gemma3: Architecture = {
  name: 'gemma3_text',
  hfClasses: ['Gemma3ForCausalLM'],
  config(f, { numLayers, headDim }) {
    const pattern = f.optionalPositiveInt('sliding_window_pattern') ?? 6;
    const base = gemmaConfig(f, numLayers, (l) => (l + 1) % pattern !== 0);
    let localRope: { theta: number; scaling: RopeScaling };
    let globalRope: { theta: number; scaling: RopeScaling } | undefined;
    const rp = f.raw('rope_parameters');
    if (isJsonObject(rp) && (isJsonObject(rp.full_attention) || isJsonObject(rp.sliding_attention))) {
      // transformers v5: {"full_attention": {...}, "sliding_attention": {...}}, each with its theta.
      const read = (kind: 'full_attention' | 'sliding_attention', theta: number) => {
        const o = rp[kind];
        if (o === undefined || o === null) return { theta, scaling: { type: 'none' } as RopeScaling };
        if (!isJsonObject(o)) return f.invalid(`rope_parameters.${kind}`, o, 'an object');
        const r = new Fields(f.label, o, `rope_parameters.${kind}.`);
        return {
          theta: r.unset('rope_theta') ? theta : r.positiveNumber('rope_theta'),
          scaling: parseRopeParams(r, f, 'gemma3_text', headDim),
        };
      };
      globalRope = read('full_attention', 1_000_000);
      localRope = read('sliding_attention', 10_000);
    } else {
      localRope = {
        theta: f.optionalPositiveNumber('rope_local_base_freq') ?? 10_000,
        scaling: { type: 'none' },
      };
    }
    return { ...base, localRope, globalRope };
  },
  tensors: (spec) => withQkNorm(gemmaTensors(spec)),
  block: { ...GEMMA_BLOCK, qkNorm: 'rmsnorm-head' },
};
