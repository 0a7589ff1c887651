/**
 * A GGUF file's metadata as the model layer reads it: `general.architecture` and the
 * `<arch>.*` hyper-parameters become the config.json transformers would hold for the same model,
 * which then goes through the architecture file's own rules (config.ts), so a GGUF model and its
 * Hugging Face folder get the same ModelSpec. Also here: GGUF's tensor names for the
 * architecture's checkpoint names, and which of them llama.cpp's converter row-permuted.
 */
import { InvalidModelFileError, UnsupportedModelError } from '../errors.js';
import type { GgufHeader, GgufTensorInfo, GgufValue } from '../io/gguf.js';
import { gv } from '../io/gguf-writer.js';
import { parseModelConfig } from './config.js';
import { MAX_LAYERS } from './fields.js';
import { GGUF_ARCHITECTURES, type GgufArchitecture, type GgufArchKeys } from './gguf-archs.js';
import { architectureForClass } from './registry.js';
import type { ModelSpec } from './spec.js';

/** The GGUF architecture of a file and its rules (gguf-archs.ts). */
export function ggufArchitecture(h: GgufHeader): GgufArchitecture & { name: string } {
  const name = h.metadata.string('general.architecture');
  const a = Object.hasOwn(GGUF_ARCHITECTURES, name) ? GGUF_ARCHITECTURES[name] : undefined;
  if (a === undefined) {
    throw new UnsupportedModelError(
      `${h.file}: general.architecture ${JSON.stringify(name)} is not supported (supported: ${Object.keys(GGUF_ARCHITECTURES).join(', ')})`,
    );
  }
  if (!architectureForClass(a.hfClass)) {
    throw new UnsupportedModelError(
      `${h.file}: general.architecture ${JSON.stringify(name)} (transformers' ${a.hfClass}) is not implemented in this Kiln yet`,
    );
  }
  return { name, ...a };
}

/**
 * The shortest decimal that rounds to the f32 `x`: GGUF stores hyper-parameters such as the norm
 * epsilon as f32, written from the decimal of config.json (1e-5 reads back as 9.99999974e-6), so
 * this recovers the value transformers uses.
 */
export function f32Decimal(x: number): number {
  for (let p = 1; p <= 9; p++) {
    const d = Number(x.toPrecision(p));
    if (Math.fround(d) === Math.fround(x)) return d;
  }
  return x;
}

/** The element count of a GGUF tensor's dimension `d` (ggml order), or undefined when absent. */
function dim(h: GgufHeader, tensor: string, d: number): number | undefined {
  return h.tensors.get(tensor)?.dims[d];
}

/**
 * The config.json (and generation_config.json ids) transformers would hold for this GGUF file,
 * from its metadata and, where GGUF stores no key (vocabulary size, biases, tied embeddings), from
 * its tensor table; the architecture's own keys through its rules (gguf-archs.ts). `longrope`:
 * the factors of the tensors rope_factors_long/short, which {@link ggufModelSpec} reads.
 */
export function ggufConfigJson(
  h: GgufHeader,
  longrope: { long: number[]; short: number[] } | null = null,
): Record<string, unknown> {
  const m = h.metadata;
  const arch = ggufArchitecture(h);
  if (longrope && arch.name !== 'phi3') {
    throw new UnsupportedModelError(
      `${h.file}: tensors rope_factors_long/short (LongRoPE) are read for phi3 only, not ${arch.name}`,
    );
  }
  const k = (key: string) => `${arch.name}.${key}`;
  const num = (key: string) => {
    const v = m.optionalNumber(key);
    return v === undefined ? undefined : m.get(key)?.type === 'f32' ? f32Decimal(v) : v;
  };
  const heads = m.uint(k('attention.head_count'));
  const hidden = m.uint(k('embedding_length'));
  // Capped as config.json's num_hidden_layers is, before any per-layer list is built from it.
  const numLayers = m.uint(k('block_count'), MAX_LAYERS);
  const embedRows = dim(h, 'token_embd.weight', 1);
  const vocab =
    m.optionalUint(k('vocab_size')) ?? embedRows ?? m.optionalStringArray('tokenizer.ggml.tokens')?.length;
  const headDim = m.optionalUint(k('attention.key_length')) ?? (heads > 0 ? hidden / heads : 0);
  const valueDim = m.optionalUint(k('attention.value_length'));
  if (valueDim !== undefined && valueDim !== headDim) {
    throw new UnsupportedModelError(
      `${h.file}: ${k('attention.value_length')} ${valueDim} differs from the key length ${String(headDim)}; Kiln needs them equal`,
    );
  }
  const ropeDims = m.optionalUint(k('rope.dimension_count'));
  // Phi-3's rules read a partial rotary count; every other architecture rotates whole heads.
  if (arch.name !== 'phi3' && ropeDims !== undefined && ropeDims !== headDim) {
    throw new UnsupportedModelError(
      `${h.file}: ${k('rope.dimension_count')} is ${ropeDims} but the head size is ${String(headDim)}; partial rotary embeddings are not supported for ${arch.name}`,
    );
  }
  const config: Record<string, unknown> = {
    architectures: [arch.hfClass],
    vocab_size: vocab,
    hidden_size: hidden,
    intermediate_size: m.uint(k('feed_forward_length')),
    num_hidden_layers: numLayers,
    num_attention_heads: heads,
    num_key_value_heads: m.optionalUint(k('attention.head_count_kv')) ?? heads,
    head_dim: headDim,
    rms_norm_eps: num(k('attention.layer_norm_rms_epsilon')) ?? 1e-5,
    rope_theta: num(k('rope.freq_base')) ?? 10000,
    max_position_embeddings: m.uint(k('context_length')),
    tie_word_embeddings: !h.tensors.has('output.weight'),
    hidden_act: 'silu',
    bos_token_id: m.optionalUint('tokenizer.ggml.bos_token_id') ?? null,
    eos_token_id: [
      ...new Set(
        ['eos_token_id', 'eot_token_id', 'eom_token_id']
          .map((id) => m.optionalUint(`tokenizer.ggml.${id}`))
          .filter((id): id is number => id !== undefined && id < 2 ** 32 - 1),
      ),
    ],
  };
  const scaling = m.optionalString(k('rope.scaling.type'));
  if (scaling === 'linear') {
    config['rope_scaling'] = { rope_type: 'linear', factor: num(k('rope.scaling.factor')) };
  } else if (scaling !== undefined && scaling !== 'none' && !(scaling === 'longrope' && longrope)) {
    throw new UnsupportedModelError(
      `${h.file}: metadata ${k('rope.scaling.type')} ${JSON.stringify(scaling)} is not supported (supported: none, linear${arch.name === 'phi3' ? ', longrope with rope_factors_long/short' : ''})`,
    );
  }
  const keys: GgufArchKeys = {
    h,
    arch: arch.name,
    key: k,
    num: (key) => num(k(key)),
    uint: (key) => m.optionalUint(k(key)),
    numLayers,
    hidden,
    heads,
    headDim,
    longrope,
  };
  for (const [key, v] of Object.entries(arch.config?.(keys) ?? {})) {
    if (v === undefined) delete config[key];
    else config[key] = v;
  }
  return config;
}

/** The factors of a 1-D F32 tensor of `length` elements (RoPE factors), checked positive. */
async function factorTensor(
  h: GgufHeader,
  t: GgufTensorInfo,
  length: number | undefined,
  readTensor: (t: GgufTensorInfo) => Promise<Uint8Array>,
): Promise<number[]> {
  if (t.type.name !== 'F32' || t.dims.length !== 1 || (length !== undefined && t.dims[0] !== length)) {
    throw new InvalidModelFileError(
      `${h.file}: tensor ${t.name} is ${t.type.name} [${t.dims.join(', ')}], expected F32 [${length ?? 'n'}]`,
    );
  }
  const b = await readTensor(t);
  const factors = Array.from(new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength)));
  if (!factors.every((f) => Number.isFinite(f) && f > 0)) {
    throw new InvalidModelFileError(
      `${h.file}: tensor ${t.name} holds a factor that is not a positive number`,
    );
  }
  return factors;
}

/** LongRoPE's factor tensors (Phi-3), both or neither, as the config's long/short factor lists. */
async function ggufLongRope(
  h: GgufHeader,
  readTensor: (t: GgufTensorInfo) => Promise<Uint8Array>,
): Promise<{ long: number[]; short: number[] } | null> {
  const long = h.tensors.get('rope_factors_long.weight');
  const short = h.tensors.get('rope_factors_short.weight');
  if (!long && !short) return null;
  if (!long || !short) {
    throw new InvalidModelFileError(
      `${h.file}: tensor ${long ? 'rope_factors_short.weight' : 'rope_factors_long.weight'} is missing beside ${long ? long.name : short?.name}`,
    );
  }
  // Written as f32 from config.json's decimals, read back as those decimals (like the f32 keys);
  // the architecture's config rules check the length against the rotated dims.
  return {
    long: (await factorTensor(h, long, undefined, readTensor)).map(f32Decimal),
    short: (await factorTensor(h, short, long.dims[0], readTensor)).map(f32Decimal),
  };
}

/**
 * The ModelSpec of a GGUF file, through its architecture's config rules. `readTensor` reads the
 * bytes of a (small) tensor the spec needs: the RoPE factors.
 */
export async function ggufModelSpec(
  h: GgufHeader,
  readTensor: (t: GgufTensorInfo) => Promise<Uint8Array>,
): Promise<ModelSpec> {
  const config = ggufConfigJson(h, await ggufLongRope(h, readTensor));
  const spec = parseModelConfig(config, undefined, `${h.file} (its GGUF metadata)`);
  // Llama 3.1-style scaling, which llama.cpp's converter evaluates and stores as divisors.
  const rf = h.tensors.get('rope_freqs.weight');
  if (rf) {
    if (spec.ropeScaling.type !== 'none') {
      throw new UnsupportedModelError(
        `${h.file}: rope_freqs.weight together with ${spec.ropeScaling.type} RoPE scaling`,
      );
    }
    spec.ropeScaling = { type: 'factors', factors: await factorTensor(h, rf, spec.headDim / 2, readTensor) };
  }
  return spec;
}

/** GGUF's names of the layer parts of Llama's layout (transformers' module path -> GGUF). */
const LLAMA_PARTS: Readonly<Record<string, string>> = {
  input_layernorm: 'attn_norm',
  post_attention_layernorm: 'ffn_norm',
  'self_attn.q_proj': 'attn_q',
  'self_attn.k_proj': 'attn_k',
  'self_attn.v_proj': 'attn_v',
  'self_attn.o_proj': 'attn_output',
  'self_attn.q_norm': 'attn_q_norm',
  'self_attn.k_norm': 'attn_k_norm',
  'mlp.gate_proj': 'ffn_gate',
  'mlp.up_proj': 'ffn_up',
  'mlp.down_proj': 'ffn_down',
};

/**
 * The GGUF name of a transformers checkpoint tensor in a file of GGUF architecture `arch`
 * (`model.layers.3.self_attn.q_proj.weight` -> `blk.3.attn_q.weight`), or undefined for a name
 * GGUF has no counterpart for.
 */
export function ggufTensorName(arch: string, hfName: string): string | undefined {
  const fixed: Record<string, string> = {
    'model.embed_tokens.weight': 'token_embd.weight',
    'model.norm.weight': 'output_norm.weight',
    'lm_head.weight': 'output.weight',
  };
  if (Object.hasOwn(fixed, hfName)) return fixed[hfName];
  const m = /^model\.layers\.(\d+)\.(.+)\.(weight|bias)$/.exec(hfName);
  if (!m) return undefined;
  const [, layer, part, kind] = m as unknown as [string, string, string, string];
  const own = Object.hasOwn(GGUF_ARCHITECTURES, arch) ? GGUF_ARCHITECTURES[arch]?.parts : undefined;
  const parts = { ...LLAMA_PARTS, ...own };
  const g = Object.hasOwn(parts, part) ? parts[part] : undefined;
  return g === undefined ? undefined : `blk.${layer}.${g}.${kind}`;
}

/**
 * The head size by which a GGUF tensor's rows were permuted (llama.cpp interleaves the two rotary
 * halves of each head of q and k for Llama-family files), or 0 when its rows are in transformers'
 * order.
 */
export function ggufRowPermutation(h: GgufHeader, spec: ModelSpec, ggufName: string): number {
  if (!ggufArchitecture(h).permutedQk) return 0;
  if (!/^blk\.\d+\.attn_[qk]\.(weight|bias)$/.test(ggufName)) return 0;
  if (spec.headDim % 2 !== 0) {
    throw new InvalidModelFileError(`${h.file}: head size ${spec.headDim} is odd; RoPE needs pairs`);
  }
  return spec.headDim;
}

/**
 * The hyper-parameter keys a GGUF writer stores for `spec` under architecture `arch`, as llama.cpp's
 * converter does (what `ggufConfigJson` reads back): Gemma 2 keeps its RoPE base implicit and
 * Gemma 3 its vocabulary size (the token list gives it). Architecture-specific keys (windows,
 * soft-caps, scaling) are the writer's to add.
 */
export function ggufHyperParameters(arch: string, spec: ModelSpec): [string, GgufValue][] {
  const k = (key: string) => `${arch}.${key}`;
  return [
    [k('context_length'), gv.u32(spec.maxPositionEmbeddings)],
    [k('embedding_length'), gv.u32(spec.hiddenSize)],
    [k('block_count'), gv.u32(spec.numLayers)],
    [k('feed_forward_length'), gv.u32(spec.intermediateSize)],
    [k('attention.head_count'), gv.u32(spec.numHeads)],
    [k('attention.head_count_kv'), gv.u32(spec.numKvHeads)],
    [k('attention.key_length'), gv.u32(spec.headDim)],
    [k('attention.value_length'), gv.u32(spec.headDim)],
    [k('rope.dimension_count'), gv.u32(spec.rotaryDim ?? spec.headDim)],
    ...(arch === 'gemma2' ? [] : [[k('rope.freq_base'), gv.f32(spec.ropeTheta)] as [string, GgufValue]]),
    [k('attention.layer_norm_rms_epsilon'), gv.f32(spec.rmsNormEps)],
    ...(arch === 'gemma3' ? [] : [[k('vocab_size'), gv.u32(spec.vocabSize)] as [string, GgufValue]]),
  ];
}
