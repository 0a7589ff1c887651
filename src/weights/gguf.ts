/**
 * The WeightSource of a GGUF file. Projections stored as F32, F16 or BF16 are float checkpoint
 * tensors (gguf-checkpoint.ts presents them under transformers' names, rows un-permuted), so they
 * load through the float path, or are quantized to int4 at load like any float checkpoint.
 * Block-quantized projections (Q4_K, Q8_0, ...) are refused by name until their GPU block kernels
 * are wired in: they are never expanded to a float copy in memory.
 */
import { UnsupportedModelError } from '../errors.js';
import type { GgufHeader } from '../io/gguf.js';
import { ggufTensorName } from '../model/gguf-config.js';
import type { ModelSpec } from '../model/spec.js';
import { modelTensors } from '../model/tensors.js';
import { weightSourceFor, type LoadQuantOptions } from './select.js';
import { headTensor, projectionWeights, type WeightSource } from './source.js';

const FLOAT_TYPES = new Set(['F32', 'F16', 'BF16']);

/** The GGUF element types of a model's projection weights and LM head, by type name. */
export function ggufProjectionTypes(h: GgufHeader, spec: ModelSpec): Map<string, string[]> {
  const t = modelTensors(spec);
  const byType = new Map<string, string[]>();
  for (const name of [...projectionWeights(t), headTensor(t), t.embed]) {
    const g = ggufTensorName(name);
    const info = g === undefined ? undefined : h.tensors.get(g);
    if (!info) continue;
    const list = byType.get(info.type.name) ?? [];
    list.push(info.name);
    byType.set(info.type.name, list);
  }
  return byType;
}

export function ggufWeightSource(
  h: GgufHeader,
  spec: ModelSpec,
  quant: 'none' | 'q4',
  opts?: LoadQuantOptions,
): WeightSource {
  const blocks = [...ggufProjectionTypes(h, spec)].filter(([type]) => !FLOAT_TYPES.has(type));
  if (blocks.length > 0) {
    const list = blocks.map(([type, names]) => `${type} (${names.length} tensors, e.g. ${names[0]})`);
    throw new UnsupportedModelError(
      `${h.file}: block-quantized weights ${list.join(', ')} need the GGUF block kernels; ` +
        'this build loads GGUF files whose weights are F32, F16 or BF16',
    );
  }
  return weightSourceFor(spec, h.file, quant, opts);
}
