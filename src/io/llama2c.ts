/**
 * llama2.c checkpoints (karpathy/llama2.c `export.py` formats) converted to a Hugging Face folder's
 * contents: config.json, generation_config.json and the tensors of model.safetensors.
 *
 * Formats: legacy "v0" (7 int32 header: dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size
 * (negative = separate classifier), seq_len, then fp32 tensors in run.c's order) and "v1" (magic
 * "ak42", version 1, the same 7 ints, a shared-classifier byte, padded to 256 bytes, then fp32
 * tensors in export.py's version1 order). v2 (int8 Q8_0) is refused.
 *
 * RoPE: llama2.c rotates interleaved pairs (2i, 2i+1); HF Llama rotates halves (i, i + d/2). The
 * rows of wq and wk are permuted per head (row 2i -> i, row 2i+1 -> i + d/2), exactly what HF's
 * convert_llama_weights_to_hf.py does, so rotate-half on the new weights gives the same scores.
 */
import { InvalidModelFileError, UnsupportedModelError } from '../errors.js';
import type { ByteSource } from './byte-source.js';
import { decodeToFloat32, encodeFromFloat32, type FloatDtype } from './dtype.js';
import type { TensorToWrite } from './safetensors-writer.js';

export interface Llama2cHeader {
  version: 0 | 1;
  dim: number;
  hiddenDim: number;
  nLayers: number;
  nHeads: number;
  nKvHeads: number;
  vocabSize: number;
  seqLen: number;
  sharedClassifier: boolean;
  /** Byte offset of the first tensor. */
  dataOffset: number;
}

const V1_MAGIC = 0x616b3432; // "ak42" read as a little-endian u32

/** Reads and validates the header of a llama2.c checkpoint. */
export async function readLlama2cHeader(src: ByteSource): Promise<Llama2cHeader> {
  if (src.size < 28)
    throw new InvalidModelFileError(`${src.name}: ${src.size} bytes is too short for a llama2.c checkpoint`);
  const raw = await src.read(0, Math.min(src.size, 256));
  const head = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
  let h: Llama2cHeader;
  if (head.getUint32(0, true) === V1_MAGIC) {
    const version = head.getInt32(4, true);
    if (version !== 1) {
      throw new UnsupportedModelError(
        `${src.name}: llama2.c format version ${version} is not supported (only v0 and v1, fp32)`,
      );
    }
    if (src.size < 256) throw new InvalidModelFileError(`${src.name}: truncated v1 header`);
    const ints = Array.from({ length: 7 }, (_, i) => head.getInt32(8 + 4 * i, true));
    h = header(1, ints, head.getUint8(36) === 1, 256);
  } else {
    const ints = Array.from({ length: 7 }, (_, i) => head.getInt32(4 * i, true));
    // v0 marks a separate classifier with a negative vocab size.
    const shared = (ints[5] as number) > 0;
    ints[5] = Math.abs(ints[5] as number);
    h = header(0, ints, shared, 28);
  }
  for (const [k, v] of Object.entries(h)) {
    if (typeof v === 'number' && k !== 'version' && (!Number.isInteger(v) || v <= 0 || v > 1 << 24)) {
      throw new InvalidModelFileError(
        `${src.name}: header field ${k} = ${v} is not a plausible size; is this a llama2.c checkpoint?`,
      );
    }
  }
  if (h.dim % h.nHeads !== 0 || h.nHeads % h.nKvHeads !== 0 || (h.dim / h.nHeads) % 2 !== 0) {
    throw new InvalidModelFileError(
      `${src.name}: dim ${h.dim}, n_heads ${h.nHeads}, n_kv_heads ${h.nKvHeads} do not give an even head size shared by whole KV groups`,
    );
  }
  const expected = h.dataOffset + 4 * tensorLayout(h).reduce((s, t) => s + t.count, 0);
  if (src.size !== expected) {
    throw new InvalidModelFileError(
      `${src.name}: file is ${src.size} bytes but the header (dim ${h.dim}, layers ${h.nLayers}, vocab ${h.vocabSize}, seq_len ${h.seqLen}) implies ${expected}`,
    );
  }
  return h;
}

function header(version: 0 | 1, ints: number[], shared: boolean, dataOffset: number): Llama2cHeader {
  const [dim, hiddenDim, nLayers, nHeads, nKvHeads, vocabSize, seqLen] = ints as [
    number,
    number,
    number,
    number,
    number,
    number,
    number,
  ];
  return {
    version,
    dim,
    hiddenDim,
    nLayers,
    nHeads,
    nKvHeads,
    vocabSize,
    seqLen,
    sharedClassifier: shared,
    dataOffset,
  };
}

interface Segment {
  /** HF tensor name pattern; `{l}` is the layer; null for data that is skipped (RoPE tables). */
  name: string | null;
  perLayer: boolean;
  rows: number;
  cols: number;
  /** Elements in the whole segment (all layers). */
  count: number;
}

/** The tensors of the file, in file order. */
function tensorLayout(h: Llama2cHeader): Segment[] {
  const headSize = h.dim / h.nHeads;
  const kvDim = h.nKvHeads * headSize;
  const seg = (name: string | null, perLayer: boolean, rows: number, cols: number): Segment => ({
    name,
    perLayer,
    rows,
    cols,
    count: (perLayer ? h.nLayers : 1) * rows * cols,
  });
  const L = 'model.layers.{l}';
  const embed = seg('model.embed_tokens.weight', false, h.vocabSize, h.dim);
  const attnNorm = seg(`${L}.input_layernorm.weight`, true, 1, h.dim);
  const ffnNorm = seg(`${L}.post_attention_layernorm.weight`, true, 1, h.dim);
  const wq = seg(`${L}.self_attn.q_proj.weight`, true, h.dim, h.dim);
  const wk = seg(`${L}.self_attn.k_proj.weight`, true, kvDim, h.dim);
  const wv = seg(`${L}.self_attn.v_proj.weight`, true, kvDim, h.dim);
  const wo = seg(`${L}.self_attn.o_proj.weight`, true, h.dim, h.dim);
  const w1 = seg(`${L}.mlp.gate_proj.weight`, true, h.hiddenDim, h.dim);
  const w2 = seg(`${L}.mlp.down_proj.weight`, true, h.dim, h.hiddenDim);
  const w3 = seg(`${L}.mlp.up_proj.weight`, true, h.hiddenDim, h.dim);
  const norm = seg('model.norm.weight', false, 1, h.dim);
  const cls = h.sharedClassifier ? [] : [seg('lm_head.weight', false, h.vocabSize, h.dim)];
  if (h.version === 1) return [attnNorm, ffnNorm, norm, embed, wq, wk, wv, wo, w1, w2, w3, ...cls];
  // v0 (run.c's memory_map_weights) also stores the RoPE cos/sin tables before the classifier.
  const freqs = seg(null, false, 1, h.seqLen * headSize);
  return [embed, attnNorm, wq, wk, wv, wo, ffnNorm, w1, w2, w3, norm, freqs, ...cls];
}

/** Permutes the rows of wq/wk per head from interleaved-pair to rotate-half RoPE order. */
export function permuteForRotateHalf(
  w: Float32Array,
  heads: number,
  headSize: number,
  cols: number,
): Float32Array {
  const out = new Float32Array(w.length);
  const half = headSize / 2;
  for (let h = 0; h < heads; h++) {
    for (let i = 0; i < half; i++) {
      const base = h * headSize;
      out.set(w.subarray((base + 2 * i) * cols, (base + 2 * i + 1) * cols), (base + i) * cols);
      out.set(w.subarray((base + 2 * i + 1) * cols, (base + 2 * i + 2) * cols), (base + half + i) * cols);
    }
  }
  return out;
}

export interface Llama2cConversion {
  header: Llama2cHeader;
  config: Record<string, unknown>;
  generationConfig: Record<string, unknown>;
  tensors: TensorToWrite[];
}

/**
 * Converts a llama2.c checkpoint. `special` gives the tokenizer's BOS/EOS ids (llama2.c's defaults
 * are 1 and 2); `dtype` is the output weight format.
 */
export async function convertLlama2c(
  src: ByteSource,
  opts: { dtype?: FloatDtype; bosTokenId?: number | null; eosTokenId?: number | null } = {},
): Promise<Llama2cConversion> {
  const h = await readLlama2cHeader(src);
  const dtype = opts.dtype ?? 'F32';
  const headSize = h.dim / h.nHeads;
  const tensors: TensorToWrite[] = [];
  let offset = h.dataOffset;
  for (const s of tensorLayout(h)) {
    const layers = s.perLayer ? h.nLayers : 1;
    const per = s.rows * s.cols;
    for (let l = 0; l < layers; l++) {
      const bytes = await src.read(offset, per * 4);
      offset += per * 4;
      if (!s.name) continue;
      let values: Float32Array = decodeToFloat32('F32', bytes);
      const name = s.name.replace('{l}', String(l));
      if (name.endsWith('q_proj.weight')) values = permuteForRotateHalf(values, h.nHeads, headSize, s.cols);
      if (name.endsWith('k_proj.weight')) values = permuteForRotateHalf(values, h.nKvHeads, headSize, s.cols);
      tensors.push({
        name,
        dtype,
        shape: s.rows === 1 ? [s.cols] : [s.rows, s.cols],
        data: encodeFromFloat32(dtype, values),
      });
    }
  }
  const bos = opts.bosTokenId === undefined ? 1 : opts.bosTokenId;
  const eos = opts.eosTokenId === undefined ? 2 : opts.eosTokenId;
  const config: Record<string, unknown> = {
    architectures: ['LlamaForCausalLM'],
    model_type: 'llama',
    hidden_size: h.dim,
    intermediate_size: h.hiddenDim,
    num_hidden_layers: h.nLayers,
    num_attention_heads: h.nHeads,
    num_key_value_heads: h.nKvHeads,
    max_position_embeddings: h.seqLen,
    vocab_size: h.vocabSize,
    // llama2.c's run.c: RMSNorm eps 1e-5, RoPE base 10000, SiLU gating.
    rms_norm_eps: 1e-5,
    rope_theta: 10000,
    hidden_act: 'silu',
    tie_word_embeddings: h.sharedClassifier,
    attention_bias: false,
    mlp_bias: false,
    bos_token_id: bos,
    eos_token_id: eos,
    torch_dtype: { F32: 'float32', F16: 'float16', BF16: 'bfloat16' }[dtype],
  };
  const generationConfig = { bos_token_id: bos, eos_token_id: eos };
  return { header: h, config, generationConfig, tensors };
}
