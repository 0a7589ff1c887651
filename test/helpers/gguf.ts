/**
 * GGUF files written from the test models of checkpoints.ts the way llama.cpp's converter writes
 * them: `<arch>.*` hyper-parameters, GGUF tensor names, the q/k row permutation of Llama-family
 * files, F32/F16/BF16 tensors in ggml's [cols, rows] order, and the SentencePiece tokenizer as
 * tokenizer.ggml.* arrays.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { decodeToFloat32, type SafetensorsDtype } from '../../src/io/dtype.js';
import type { GgufValue } from '../../src/io/gguf.js';
import { ggufTypeByName } from '../../src/io/gguf-types.js';
import { ropeInvFreq } from '../../src/kernels/rope.ref.js';
import { encodeGguf, gv, type GgufTensorToWrite } from '../../src/io/gguf-writer.js';
import { openCheckpoint } from '../../src/io/safetensors-checkpoint.js';
import { parseSentencePieceModel } from '../../src/io/sentencepiece.js';
import { loadModelSpec } from '../../src/model/config.js';
import { ggufTensorName } from '../../src/model/gguf-config.js';
import { expectedTensors } from '../../src/model/tensors.js';
import { openLocalModelDir } from '../../src/node/fs-model-dir.js';
import { dequantizeGguf, quantizeGguf } from '../../src/quant/gguf-blocks.js';
import { sharedModel } from './shared.js';

/** llama.cpp's permutation of a [rows, cols] matrix's rows (or a vector's elements) per head. */
export function permuteHeads(bytes: Uint8Array, rowBytes: number, headDim: number): Uint8Array {
  const out = new Uint8Array(bytes.length);
  const rows = bytes.length / rowBytes;
  const half = headDim / 2;
  for (let r = 0; r < rows; r++) {
    const h = Math.floor(r / headDim);
    const i = Math.floor((r % headDim) / half);
    const j = r % half;
    const to = h * headDim + 2 * j + i;
    out.set(bytes.subarray(r * rowBytes, (r + 1) * rowBytes), to * rowBytes);
  }
  return out;
}

const GGUF_ARCH: Record<string, string> = { llama: 'llama', qwen2: 'qwen2', mistral: 'mistral' };

/** What {@link writeGgufFromFolder} writes besides the folder's own tensors. */
export interface GgufWriteOptions {
  /**
   * The block type to store a tensor in (by transformers name), quantized with ggufk's CPU
   * quantizer before llama.cpp's row permutation; undefined keeps the folder's float dtype.
   */
  typeOf?: (name: string) => string | undefined;
  /** Receives each quantized tensor's values as its blocks decode them (transformers' row order). */
  onDecoded?: (name: string, values: Float32Array) => void;
}

/** Writes `<folder>/<file>` as the GGUF file of the test model folder `folder`. */
export async function writeGgufFromFolder(
  folder: string,
  file = 'model.gguf',
  o: GgufWriteOptions = {},
): Promise<string> {
  const dir = openLocalModelDir(folder);
  const spec = await loadModelSpec(dir);
  const arch = GGUF_ARCH[spec.architecture];
  if (!arch) throw new Error(`no GGUF architecture for ${spec.architecture}`);
  const ckpt = await openCheckpoint(dir);
  const tensors: GgufTensorToWrite[] = [];
  try {
    for (const name of expectedTensors(spec).keys()) {
      const info = ckpt.get(name);
      const g = ggufTensorName(name);
      if (!g) throw new Error(`no GGUF name for ${name}`);
      let data = await ckpt.readTensor(info);
      const block = o.typeOf?.(name);
      if (block !== undefined) {
        const values = decodeToFloat32(info.dtype, data);
        data = quantizeGguf(block, values);
        o.onDecoded?.(name, Float32Array.from(dequantizeGguf(block, data, values.length)));
      }
      if (arch !== 'qwen2' && /\.attn_[qk]\./.test(g)) {
        data = permuteHeads(data, data.byteLength / (info.shape[0] as number), spec.headDim);
      }
      const type = ggufTypeByName(block ?? (info.dtype as SafetensorsDtype));
      if (!type) throw new Error(info.dtype);
      tensors.push({ name: g, type, dims: [...info.shape].reverse(), data });
    }
  } finally {
    await ckpt.close();
  }
  const sp = parseSentencePieceModel(
    new Uint8Array(readFileSync(sharedModel('babyllama-tok105', 'tok105.model'))),
  );
  const k = (key: string) => `${arch}.${key}`;
  const metadata: [string, GgufValue][] = [
    ['general.architecture', gv.str(arch)],
    ['general.name', gv.str('kiln test model')],
    [k('context_length'), gv.u32(spec.maxPositionEmbeddings)],
    [k('embedding_length'), gv.u32(spec.hiddenSize)],
    [k('block_count'), gv.u32(spec.numLayers)],
    [k('feed_forward_length'), gv.u32(spec.intermediateSize)],
    [k('attention.head_count'), gv.u32(spec.numHeads)],
    [k('attention.head_count_kv'), gv.u32(spec.numKvHeads)],
    [k('attention.key_length'), gv.u32(spec.headDim)],
    [k('attention.value_length'), gv.u32(spec.headDim)],
    [k('rope.dimension_count'), gv.u32(spec.headDim)],
    [k('rope.freq_base'), gv.f32(spec.ropeTheta)],
    [k('attention.layer_norm_rms_epsilon'), gv.f32(spec.rmsNormEps)],
    [k('vocab_size'), gv.u32(spec.vocabSize)],
    ['tokenizer.ggml.model', gv.str('llama')],
    ['tokenizer.ggml.tokens', gv.strs(sp.pieces.map((p) => p.piece))],
    ['tokenizer.ggml.scores', gv.f32s(sp.pieces.map((p) => p.score))],
    ['tokenizer.ggml.token_type', gv.i32s(sp.pieces.map((p) => p.type))],
    ['tokenizer.ggml.bos_token_id', gv.u32(sp.trainerSpec.bosId)],
    ['tokenizer.ggml.eos_token_id', gv.u32(sp.trainerSpec.eosId)],
    ['tokenizer.ggml.unknown_token_id', gv.u32(sp.trainerSpec.unkId)],
    ['tokenizer.ggml.add_bos_token', gv.bool(true)],
    ['tokenizer.ggml.add_space_prefix', gv.bool(sp.normalizerSpec.addDummyPrefix)],
    ['tokenizer.ggml.remove_extra_whitespaces', gv.bool(sp.normalizerSpec.removeExtraWhitespaces)],
  ];
  if (spec.ropeScaling.type === 'llama3') {
    // As llama.cpp's converter: the llama3 rule evaluated in float64, stored as f32 divisors.
    const plain = ropeInvFreq(spec.headDim, spec.ropeTheta, { type: 'none' });
    const scaled = ropeInvFreq(spec.headDim, spec.ropeTheta, spec.ropeScaling);
    const factors = Float32Array.from(plain, (f, i) => f / (scaled[i] as number));
    tensors.push({
      name: 'rope_freqs.weight',
      type: ggufTypeByName('F32')!,
      dims: [factors.length],
      data: new Uint8Array(factors.buffer),
    });
  }
  if (spec.ropeScaling.type === 'linear') {
    metadata.push(
      [k('rope.scaling.type'), gv.str('linear')],
      [k('rope.scaling.factor'), gv.f32(spec.ropeScaling.factor)],
    );
  }
  const path = join(folder, file);
  writeFileSync(path, encodeGguf({ metadata, tensors }));
  return path;
}
