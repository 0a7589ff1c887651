/**
 * A model's checkpoint tensors, from its architecture's declaration (src/model/arch/): the one
 * place loaders, the reference model, the quantizer and test fixtures get names and shapes from.
 */
import type { ModelTensors } from './architecture.js';
import { architectureOf } from './registry.js';
import type { ModelSpec } from './spec.js';

export function modelTensors(spec: ModelSpec): ModelTensors {
  return architectureOf(spec).tensors(spec);
}

/**
 * Every tensor of the float checkpoint with the shape it must have, in a fixed order (embeddings;
 * per layer the input norm, projection weights then biases of attention, the post-attention norm,
 * MLP weights then biases; the final norm; the LM head).
 */
export function expectedTensors(spec: ModelSpec): Map<string, number[]> {
  const t = modelTensors(spec);
  const { hiddenSize: h, vocabSize } = spec;
  const out = new Map<string, number[]>();
  out.set(t.embed, [vocabSize, h]);
  for (const L of t.layers) {
    out.set(L.inputNorm, [h]);
    for (const p of [L.qkv, L.o]) for (const s of p.sources) out.set(`${s.prefix}.weight`, [s.rows, p.cols]);
    for (const p of [L.qkv, L.o])
      if (p.bias) for (const s of p.sources) out.set(`${s.prefix}.bias`, [s.rows]);
    out.set(L.postNorm, [h]);
    for (const p of [L.gateUp, L.down])
      for (const s of p.sources) out.set(`${s.prefix}.weight`, [s.rows, p.cols]);
    for (const p of [L.gateUp, L.down])
      if (p.bias) for (const s of p.sources) out.set(`${s.prefix}.bias`, [s.rows]);
  }
  out.set(t.finalNorm, [h]);
  if (t.lmHead !== null) out.set(`${t.lmHead}.weight`, [vocabSize, h]);
  return out;
}
