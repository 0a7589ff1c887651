/**
 * A model's checkpoint tensors, from its architecture's declaration (src/model/arch/): the one
 * place loaders, the reference model, the quantizer and test fixtures get names and shapes from.
 */
import type { LayerTensors, ModelTensors, ProjectionTensors } from './architecture.js';
import { decodeToFloat32, encodeFromFloat32, type SafetensorsDtype } from '../io/dtype.js';
import type { Checkpoint } from '../io/safetensors-checkpoint.js';
import { architectureOf } from './registry.js';
import type { ModelSpec } from './spec.js';

export function modelTensors(spec: ModelSpec): ModelTensors {
  const t = architectureOf(spec).tensors(spec);
  const prefix = spec.tensorPrefix;
  if (prefix === undefined || prefix === '') return t;
  const p = (name: string) => prefix + name;
  const proj = (x: ProjectionTensors): ProjectionTensors => ({
    ...x,
    name: p(x.name),
    sources: x.sources.map((s) => ({ ...s, prefix: p(s.prefix) })),
  });
  const opt = (name: string | undefined) => (name === undefined ? undefined : p(name));
  return {
    embed: p(t.embed),
    finalNorm: p(t.finalNorm),
    lmHead: t.lmHead === null ? null : p(t.lmHead),
    layers: t.layers.map((L): LayerTensors => {
      const out: LayerTensors = {
        inputNorm: p(L.inputNorm),
        postNorm: p(L.postNorm),
        qkv: proj(L.qkv),
        o: proj(L.o),
        gateUp: proj(L.gateUp),
        down: proj(L.down),
      };
      const qNorm = opt(L.qNorm);
      const kNorm = opt(L.kNorm);
      const attnOutNorm = opt(L.attnOutNorm);
      const mlpOutNorm = opt(L.mlpOutNorm);
      if (qNorm !== undefined) out.qNorm = qNorm;
      if (kNorm !== undefined) out.kNorm = kNorm;
      if (attnOutNorm !== undefined) out.attnOutNorm = attnOutNorm;
      if (mlpOutNorm !== undefined) out.mlpOutNorm = mlpOutNorm;
      return out;
    }),
  };
}

/**
 * Every tensor of the float checkpoint with the shape it must have, in a fixed order (embeddings;
 * per layer the input norm, projection weights then biases of attention, the q/k norms and the
 * attention-output norm where the block has them, the pre-MLP norm, MLP weights then biases, the
 * MLP-output norm; the final norm; the LM head).
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
    if (L.qNorm !== undefined) out.set(L.qNorm, [spec.headDim]);
    if (L.kNorm !== undefined) out.set(L.kNorm, [spec.headDim]);
    if (L.attnOutNorm !== undefined) out.set(L.attnOutNorm, [h]);
    out.set(L.postNorm, [h]);
    for (const p of [L.gateUp, L.down])
      for (const s of p.sources) out.set(`${s.prefix}.weight`, [s.rows, p.cols]);
    for (const p of [L.gateUp, L.down])
      if (p.bias) for (const s of p.sources) out.set(`${s.prefix}.bias`, [s.rows]);
    if (L.mlpOutNorm !== undefined) out.set(L.mlpOutNorm, [h]);
  }
  out.set(t.finalNorm, [h]);
  if (t.lmHead !== null) out.set(`${t.lmHead}.weight`, [vocabSize, h]);
  return out;
}

/** Every RMSNorm weight tensor of the model (each scaled by the recipe's normWeight rule). */
export function normTensors(t: ModelTensors): Set<string> {
  const out = new Set<string>([t.finalNorm]);
  for (const L of t.layers)
    for (const n of [L.inputNorm, L.postNorm, L.qNorm, L.kNorm, L.attnOutNorm, L.mlpOutNorm])
      if (n !== undefined) out.add(n);
  return out;
}

/**
 * The embedding multiplier of the recipe: 1, or (Gemma) √hidden as transformers applies it, a
 * float32 constant cast to the embedding table's dtype before the product. A Kiln int4 folder whose
 * quantized tied head replaced the table keeps the norms in the model's float dtype: that one.
 */
export function embeddingScale(spec: ModelSpec, t: ModelTensors, ckpt: Checkpoint): number {
  if (architectureOf(spec).block.embedScale === 'none') return 1;
  const embedDtype: SafetensorsDtype = (ckpt.has(t.embed) ? ckpt.get(t.embed) : ckpt.get(t.finalNorm)).dtype;
  const f32 = Math.fround(Math.sqrt(spec.hiddenSize));
  if (embedDtype !== 'F16' && embedDtype !== 'BF16') return f32;
  return decodeToFloat32(embedDtype, encodeFromFloat32(embedDtype, Float32Array.of(f32)))[0] as number;
}

/** A norm weight as the kernels use it: w, or (Gemma's 'one-plus-w') 1 + w rounded to f32. */
export function normWeightValues(spec: ModelSpec, w: Float32Array): Float32Array {
  if (architectureOf(spec).block.normWeight === 'w') return w;
  return Float32Array.from(w, (v) => 1 + v);
}
