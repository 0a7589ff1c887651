/**
 * GGUF files written from the test models of checkpoints.ts the way llama.cpp's converter
 * (convert_hf_to_gguf.py) writes them: `<arch>.*` hyper-parameters (only the keys the converter
 * writes for that architecture), GGUF tensor names, the q/k row permutation of Llama-family files,
 * F32/F16/BF16 tensors in ggml's [cols, rows] order, and the SentencePiece tokenizer as
 * tokenizer.ggml.* arrays. For Qwen3, Gemma 2/3 and Phi-3 also: 1-D tensors in F32, Gemma's norm
 * weights stored as w + 1 (added in the checkpoint's dtype), Gemma 3's embedding rows cut to the
 * tokenizer's size, Phi-3's LongRoPE factors as tensors. A config the converter cannot represent
 * (a Gemma query_pre_attn_scalar or window pattern other than llama.cpp's implied ones) is refused.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { decodeToFloat32, encodeFromFloat32, type SafetensorsDtype } from '../../src/io/dtype.js';
import { parseGgufHeader, type GgufValue } from '../../src/io/gguf.js';
import { ggufTypeByName } from '../../src/io/gguf-types.js';
import { ropeInvFreq } from '../../src/kernels/rope.ref.js';
import { encodeGguf, gv, type GgufTensorToWrite } from '../../src/io/gguf-writer.js';
import { openCheckpoint, type Checkpoint } from '../../src/io/safetensors-checkpoint.js';
import { parseSentencePieceModel } from '../../src/io/sentencepiece.js';
import { loadModelSpec } from '../../src/model/config.js';
import { ggufHyperParameters, ggufTensorName } from '../../src/model/gguf-config.js';
import type { ModelSpec } from '../../src/model/spec.js';
import { expectedTensors, modelTensors, normTensors } from '../../src/model/tensors.js';
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

const GGUF_ARCH: Record<string, string> = {
  llama: 'llama',
  qwen2: 'qwen2',
  mistral: 'mistral',
  qwen3: 'qwen3',
  gemma2: 'gemma2',
  gemma3_text: 'gemma3',
  phi3: 'phi3',
};

/** Architectures written as the current converter does (1-D tensors in F32). */
const F32_VECTORS = new Set(['qwen3', 'gemma2', 'gemma3', 'phi3']);

/**
 * The keys the converter writes for the architectures with their own rules, checked against what
 * llama.cpp implies where it writes none.
 */
function archMetadata(arch: string, spec: ModelSpec, k: (key: string) => string): [string, GgufValue][] {
  const out: [string, GgufValue][] = [];
  if (arch === 'gemma2' || arch === 'gemma3') {
    const big = arch === 'gemma2' ? 46 : 62;
    const scalar = spec.numLayers === big ? spec.hiddenSize / spec.numHeads : spec.headDim;
    if (Math.abs((spec.attentionScale ?? 0) - scalar ** -0.5) > 1e-15) {
      throw new Error(`GGUF stores no query_pre_attn_scalar: llama.cpp implies ${scalar}`);
    }
    const period = arch === 'gemma2' ? 2 : 6;
    const window = Math.max(...spec.layerWindows);
    const implied = spec.layerWindows.map((_, l) => (window > 0 && l % period < period - 1 ? window : 0));
    if (JSON.stringify(implied) !== JSON.stringify(spec.layerWindows)) {
      throw new Error(`windows ${spec.layerWindows.join(',')} are not llama.cpp's period ${period}`);
    }
    if (window > 0) out.push([k('attention.sliding_window'), gv.u32(window)]);
    if (spec.finalLogitSoftcap !== undefined)
      out.push([k('final_logit_softcapping'), gv.f32(spec.finalLogitSoftcap)]);
    if (arch === 'gemma2') {
      out.push([k('attn_logit_softcapping'), gv.f32(spec.attnLogitSoftcap ?? 0)]);
      if (spec.ropeTheta !== 10000) throw new Error('the Gemma 2 converter writes no rope_theta');
    } else {
      if (spec.attnLogitSoftcap !== undefined) throw new Error('Gemma 3 has no attention soft-cap');
      out.push([k('rope.freq_base_swa'), gv.f32(spec.localRopeTheta ?? 10000)]);
    }
  }
  if (arch === 'phi3') {
    const rs = spec.ropeScaling;
    if (rs.type !== 'longrope') throw new Error('the Phi-3 test models use LongRoPE');
    out.push(
      [k('rope.scaling.original_context_length'), gv.u32(rs.originalMaxPositionEmbeddings)],
      [k('rope.scaling.attn_factor'), gv.f32(rs.attentionFactor)],
      [k('attention.sliding_window'), gv.u32(Math.max(...spec.layerWindows))],
    );
  }
  return out;
}

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
  const sp = parseSentencePieceModel(
    new Uint8Array(readFileSync(sharedModel('babyllama-tok105', 'tok105.model'))),
  );
  const gemma = arch === 'gemma2' || arch === 'gemma3';
  const norms = normTensors(modelTensors(spec));
  try {
    for (const name of expectedTensors(spec).keys()) {
      const info = ckpt.get(name);
      const g = ggufTensorName(arch, name);
      if (!g) throw new Error(`no GGUF name for ${name}`);
      let data = await ckpt.readTensor(info);
      let shape = [...info.shape];
      let dtype = info.dtype as SafetensorsDtype;
      if (gemma && norms.has(name)) {
        // The converter adds the 1 of (1 + w) in the tensor's own dtype.
        data = encodeFromFloat32(
          dtype,
          Float32Array.from(decodeToFloat32(dtype, data), (w) => w + 1),
        );
      }
      if (arch === 'gemma3' && name === 'model.embed_tokens.weight' && shape[0]! > sp.pieces.length) {
        // The Gemma 3 converter keeps only the rows of the tokenizer's ids.
        shape = [sp.pieces.length, shape[1]!];
        data = data.slice(0, (data.byteLength / info.shape[0]!) * sp.pieces.length);
      }
      if (F32_VECTORS.has(arch) && shape.length === 1 && dtype !== 'F32') {
        data = encodeFromFloat32('F32', decodeToFloat32(dtype, data));
        dtype = 'F32';
      }
      const block = o.typeOf?.(name);
      if (block !== undefined) {
        const values = decodeToFloat32(dtype, data);
        data = quantizeGguf(block, values);
        o.onDecoded?.(name, Float32Array.from(dequantizeGguf(block, data, values.length)));
      }
      if ((arch === 'llama' || arch === 'mistral') && /\.attn_[qk]\./.test(g)) {
        data = permuteHeads(data, data.byteLength / (shape[0] as number), spec.headDim);
      }
      const type = ggufTypeByName(block ?? dtype);
      if (!type) throw new Error(dtype);
      tensors.push({ name: g, type, dims: [...shape].reverse(), data });
    }
  } finally {
    await ckpt.close();
  }
  const k = (key: string) => `${arch}.${key}`;
  const metadata: [string, GgufValue][] = [
    ['general.architecture', gv.str(arch)],
    ['general.name', gv.str('kiln test model')],
    ...ggufHyperParameters(arch, spec),
    ...archMetadata(arch, spec, k),
    ['tokenizer.ggml.model', gv.str('llama')],
    ['tokenizer.ggml.tokens', gv.strs(sp.pieces.map((p) => p.piece))],
    ['tokenizer.ggml.scores', gv.f32s(sp.pieces.map((p) => p.score))],
    ['tokenizer.ggml.token_type', gv.i32s(sp.pieces.map((p) => p.type))],
    ['tokenizer.ggml.bos_token_id', gv.u32(sp.trainerSpec.bosId)],
    // The converter's eos is the config's (first) eos id, a second one its end-of-turn id.
    ['tokenizer.ggml.eos_token_id', gv.u32(spec.eosTokenIds[0] ?? sp.trainerSpec.eosId)],
    ...(spec.eosTokenIds[1] !== undefined
      ? [['tokenizer.ggml.eot_token_id', gv.u32(spec.eosTokenIds[1])] as [string, GgufValue]]
      : []),
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
  if (spec.ropeScaling.type === 'longrope') {
    for (const [which, f] of [
      ['long', spec.ropeScaling.longFactor],
      ['short', spec.ropeScaling.shortFactor],
    ] as const) {
      const data = new Uint8Array(Float32Array.from(f).buffer);
      tensors.push({
        name: `rope_factors_${which}.weight`,
        type: ggufTypeByName('F32')!,
        dims: [f.length],
        data,
      });
    }
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

/**
 * The checkpoint `ckpt` with the `replaced` tensors reading as the given f32 values of the shapes
 * the model `spec` expects (a GGUF checkpoint's block tensors are U8 rows of blocks).
 */
export function overlayCheckpoint(
  ckpt: Checkpoint,
  spec: ModelSpec,
  replaced: Map<string, Float32Array>,
): Checkpoint {
  const shapes = expectedTensors(spec);
  const tensors = new Map(ckpt.tensors);
  for (const [name, v] of replaced) {
    const shape = shapes.get(name) ?? ckpt.get(name).shape;
    tensors.set(name, { ...ckpt.get(name), dtype: 'F32', shape: [...shape], byteLength: v.byteLength });
  }
  return {
    ...ckpt,
    tensors,
    get: (name) => tensors.get(name) ?? ckpt.get(name),
    has: (name) => tensors.has(name),
    readTensor: async (info) => {
      const v = replaced.get(info.name);
      return v ? new Uint8Array(v.buffer.slice(0)) : ckpt.readTensor(info);
    },
  };
}

/** What {@link splitGguf} changes to make hostile splits: per shard (0-based), keys set or removed. */
export interface SplitOptions {
  /** Metadata of shard `no` after the split keys are set (undefined removes a key). */
  meta?: (no: number) => Record<string, GgufValue | undefined>;
  /** Tensor names to write into a later shard as well (a duplicate). */
  duplicate?: string[];
}

/**
 * Splits the GGUF file at `path` into `count` shards beside it as llama.cpp's gguf-split does:
 * `<prefix>-0000i-of-0000n.gguf`, tensors in file order in contiguous groups, every metadata key in
 * the first shard and only `split.no` (u16), `split.count` (u16) and `split.tensors.count` (i32) in
 * the others. Returns the shard paths.
 */
export async function splitGguf(path: string, count: number, o: SplitOptions = {}): Promise<string[]> {
  const dir = dirname(path);
  const src = await openLocalModelDir(dir).open(basename(path));
  const h = await parseGgufHeader(src);
  const all: GgufTensorToWrite[] = [];
  for (const t of h.tensors.values()) {
    all.push({ name: t.name, type: t.type, dims: t.dims, data: await src.read(t.fileOffset, t.byteLength) });
  }
  await src.close();
  const prefix = basename(path).replace(/\.gguf$/i, '');
  const per = Math.ceil(all.length / count);
  const out: string[] = [];
  for (let no = 0; no < count; no++) {
    const split: [string, GgufValue][] = [
      ['split.no', { type: 'u16', value: no }],
      ['split.count', { type: 'u16', value: count }],
      ['split.tensors.count', { type: 'i32', value: all.length }],
    ];
    const entries = new Map<string, GgufValue>(no === 0 ? [...h.metadata.entries, ...split] : split);
    for (const [k, v] of Object.entries(o.meta?.(no) ?? {})) {
      if (v === undefined) entries.delete(k);
      else entries.set(k, v);
    }
    const tensors = all.slice(no * per, (no + 1) * per);
    if (no > 0) tensors.push(...all.filter((t) => o.duplicate?.includes(t.name)));
    const file = join(
      dir,
      `${prefix}-${String(no + 1).padStart(5, '0')}-of-${String(count).padStart(5, '0')}.gguf`,
    );
    writeFileSync(file, encodeGguf({ metadata: [...entries], tensors }));
    out.push(file);
  }
  return out;
}
