/**
 * Small Hugging Face checkpoints with seeded random weights, written at test time: one helper for
 * every supported variant (GQA, Qwen2 biases, tied head, llama3/linear rope scaling, explicit
 * head_dim, f32/f16/bf16, sharded). The tokenizer is the real tok105 SentencePiece model converted.
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { encodeFromFloat32, type FloatDtype } from '../../src/io/dtype.js';
import {
  encodeSafetensors,
  encodeSafetensorsIndex,
  type TensorToWrite,
} from '../../src/io/safetensors-writer.js';
import { convertSentencePiece } from '../../src/io/sentencepiece.js';
import { parseModelConfig } from '../../src/model/config.js';
import type { ModelSpec } from '../../src/model/spec.js';
import { architectureOf } from '../../src/model/registry.js';
import { expectedTensors, modelTensors, normTensors } from '../../src/model/tensors.js';
import { randomF32 } from './random.js';
import { sharedModel } from './shared.js';

export interface TestModelOptions {
  architecture?: keyof typeof MODEL_TYPES;
  hidden?: number;
  intermediate?: number;
  layers?: number;
  heads?: number;
  kvHeads?: number;
  /** Written as config.head_dim when set (may differ from hidden / heads). */
  headDim?: number;
  /** >= 105 (the tokenizer's size). */
  vocab?: number;
  maxPositions?: number;
  tie?: boolean;
  /** Llama attention_bias (q, k, v and o biases). */
  attentionBias?: boolean;
  ropeTheta?: number;
  ropeScaling?: Record<string, unknown> | null;
  dtype?: FloatDtype;
  /** Split the tensors over this many shards with an index. */
  shards?: number;
  seed?: number;
  /** Extra or overriding config.json fields. */
  config?: Record<string, unknown>;
}

/** config.json's model_type of each class these helpers write. */
export const MODEL_TYPES = {
  LlamaForCausalLM: 'llama',
  MistralForCausalLM: 'mistral',
  Qwen2ForCausalLM: 'qwen2',
  Qwen3ForCausalLM: 'qwen3',
  SmolLM3ForCausalLM: 'smollm3',
  Phi3ForCausalLM: 'phi3',
  Gemma2ForCausalLM: 'gemma2',
  Gemma3ForCausalLM: 'gemma3_text',
} as const;

/**
 * Writes the model into `dir` and returns its parsed spec. Keys of `config` set to undefined are
 * left out of config.json (JSON.stringify drops them), for architectures whose configs lack them.
 */
export function writeTestModel(dir: string, o: TestModelOptions = {}): ModelSpec {
  mkdirSync(dir, { recursive: true });
  const arch = o.architecture ?? 'LlamaForCausalLM';
  const config: Record<string, unknown> = {
    architectures: [arch],
    model_type: MODEL_TYPES[arch],
    hidden_size: o.hidden ?? 64,
    intermediate_size: o.intermediate ?? 96,
    num_hidden_layers: o.layers ?? 2,
    num_attention_heads: o.heads ?? 4,
    num_key_value_heads: o.kvHeads ?? 2,
    vocab_size: o.vocab ?? 128,
    max_position_embeddings: o.maxPositions ?? 256,
    rms_norm_eps: 1e-5,
    rope_theta: o.ropeTheta ?? 10000,
    rope_scaling: o.ropeScaling ?? null,
    hidden_act: 'silu',
    tie_word_embeddings: o.tie ?? false,
    bos_token_id: 1,
    eos_token_id: 2,
    torch_dtype: 'float32',
    ...(o.headDim !== undefined ? { head_dim: o.headDim } : {}),
    ...(o.attentionBias !== undefined ? { attention_bias: o.attentionBias } : {}),
    ...o.config,
  };
  const spec = parseModelConfig(config);
  writeFileSync(join(dir, 'config.json'), JSON.stringify(config, null, 2));
  const tok = convertSentencePiece(
    new Uint8Array(readFileSync(sharedModel('babyllama-tok105', 'tok105.model'))),
  );
  writeFileSync(join(dir, 'tokenizer.json'), JSON.stringify(tok.tokenizerJson));
  writeFileSync(join(dir, 'tokenizer_config.json'), JSON.stringify(tok.tokenizerConfig));

  const dtype = o.dtype ?? 'F32';
  let seed = o.seed ?? 1;
  const names = modelTensors(spec);
  const norms = normTensors(names);
  // Gemma's norms multiply by (1 + w): its stored weights sit near 0, not near 1.
  const normOffset = architectureOf(spec).block.normWeight === 'one-plus-w' ? 0 : 1;
  const tensors: TensorToWrite[] = [];
  for (const [name, shape] of expectedTensors(spec)) {
    const n = shape.reduce((a, b) => a * b, 1);
    const isNorm = norms.has(name);
    const scale = isNorm
      ? 0.2
      : name.endsWith('.bias')
        ? 0.1
        : weightScale(name, shape[shape.length - 1] as number, names.embed, `${names.lmHead}.weight`);
    const v = randomF32(n, seed++, scale);
    if (isNorm) for (let i = 0; i < n; i++) v[i] = (v[i] as number) + normOffset;
    tensors.push({ name, dtype, shape, data: encodeFromFloat32(dtype, v) });
  }
  const shards = o.shards ?? 1;
  if (shards === 1) {
    writeFileSync(join(dir, 'model.safetensors'), encodeSafetensors(tensors, { format: 'pt' }));
  } else {
    const map: Record<string, string> = {};
    let total = 0;
    for (let s = 0; s < shards; s++) {
      const file = `model-${String(s + 1).padStart(5, '0')}-of-${String(shards).padStart(5, '0')}.safetensors`;
      const mine = tensors.filter((_, i) => i % shards === s);
      for (const t of mine) {
        map[t.name] = file;
        total += t.data.byteLength;
      }
      writeFileSync(join(dir, file), encodeSafetensors(mine, { format: 'pt' }));
    }
    writeFileSync(join(dir, 'model.safetensors.index.json'), encodeSafetensorsIndex(map, total));
  }
  return spec;
}

/**
 * Half-width of the uniform init of a weight matrix with `fanIn` inputs. Plain 1/sqrt(fanIn) makes
 * degenerate models: near-uniform attention averages every position into the same vector, and a
 * tied head then keeps predicting one id (or echoes the last token). Sharper attention (q, k ×3), a
 * stronger MLP branch (down ×3), small embeddings (±0.1, so the residual branches, not the token's
 * own embedding, decide a tied head's argmax) and a ×3 LM head give varied greedy ids whose
 * top-two logit margins are ~1e-3 or more: far above the GPU's f32 error (~1e-6).
 * Norm weights stay near 1 and biases small.
 */
function weightScale(name: string, fanIn: number, embed: string, lmHead: string): number {
  if (name === embed) return 0.1;
  const gain =
    name === lmHead || /\.(q|k|qkv)_proj\.weight$/.test(name) || /\.down_proj\.weight$/.test(name) ? 3 : 1;
  return gain / Math.sqrt(fanIn);
}
