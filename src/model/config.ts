/**
 * Turns a Hugging Face config.json (plus the optional generation_config.json) into a ModelSpec.
 * Every field the forward pass depends on is checked here, so a model Kiln cannot run exactly is
 * refused with a message naming the field and its value instead of producing wrong tokens later.
 */
import { InvalidModelFileError, UnsupportedModelError } from '../errors.js';
import type { Architecture, ModelSpec, RopeScaling } from './spec.js';
import { readJson, type ModelDir } from '../io/byte-source.js';
import { describeValue, isJsonObject, type JsonObject } from '../io/json.js';

const ARCHITECTURES: Readonly<Record<string, Architecture>> = {
  LlamaForCausalLM: 'llama',
  MistralForCausalLM: 'mistral',
  Qwen2ForCausalLM: 'qwen2',
};

const MODEL_TYPES: Readonly<Record<string, Architecture>> = {
  llama: 'llama',
  mistral: 'mistral',
  qwen2: 'qwen2',
};

/**
 * Sanity bounds on config sizes. They are far above every published model (the largest have ~126
 * layers, hidden sizes of 16k, vocabularies of 262k and contexts of 10M tokens) but stop a hostile
 * or corrupt config.json before it makes the engine build a tensor list or buffers of absurd size.
 * 2^24 is also the largest range in which f32 (what shaders compute positions and sizes in) holds
 * every integer exactly.
 */
export const MAX_LAYERS = 1024;
/** Upper bound of every other size, count or length in config.json (see {@link MAX_LAYERS}). */
export const MAX_DIM = 2 ** 24;

/** transformers' MistralConfig default for `sliding_window` when the key is absent. */
const MISTRAL_DEFAULT_SLIDING_WINDOW = 4096;

/** Field readers bound to one file label, so every message starts with the file it is about. */
class Fields {
  constructor(
    readonly label: string,
    private readonly obj: JsonObject,
    private readonly prefix = '',
  ) {}

  invalid(field: string, value: unknown, expected: string): never {
    throw new InvalidModelFileError(
      `${this.label}: ${this.prefix}${field} is ${describeValue(value)}, expected ${expected}`,
    );
  }

  unsupported(message: string): never {
    throw new UnsupportedModelError(`${this.label}: ${message}`);
  }

  raw(field: string): unknown {
    return this.obj[field];
  }

  /** True when the field is absent or null (HF writes both for "use the default"). */
  unset(field: string): boolean {
    return this.obj[field] === undefined || this.obj[field] === null;
  }

  /** A positive integer no larger than `max` (a sanity bound, see {@link MAX_DIM}). */
  positiveInt(field: string, max = MAX_DIM): number {
    const v = this.obj[field];
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v <= 0) {
      this.invalid(field, v, 'a positive integer');
    }
    if (v > max) this.invalid(field, v, `at most ${max} (no real model is that large)`);
    return v;
  }

  optionalPositiveInt(field: string, max = MAX_DIM): number | undefined {
    return this.unset(field) ? undefined : this.positiveInt(field, max);
  }

  positiveNumber(field: string): number {
    const v = this.obj[field];
    if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) this.invalid(field, v, 'a positive number');
    return v;
  }

  bool(field: string, fallback: boolean): boolean {
    if (this.unset(field)) return fallback;
    const v = this.obj[field];
    if (typeof v !== 'boolean') this.invalid(field, v, 'true or false');
    return v;
  }

  tokenId(field: string): number | null {
    if (this.unset(field)) return null;
    const v = this.obj[field];
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) this.invalid(field, v, 'a token id');
    return v;
  }

  tokenIds(field: string): number[] {
    if (this.unset(field)) return [];
    const v = this.obj[field];
    const list = Array.isArray(v) ? (v as unknown[]) : [v];
    for (const id of list) {
      if (typeof id !== 'number' || !Number.isSafeInteger(id) || id < 0) {
        this.invalid(field, v, 'a token id or a list of token ids');
      }
    }
    return list as number[];
  }
}

function fileLabel(file: string, location: string | undefined): string {
  return location === undefined ? file : `${file} in ${location}`;
}

function parseRopeScaling(f: Fields, architecture: Architecture): RopeScaling {
  // transformers v5 moved these into `rope_parameters`; older configs use `rope_scaling`.
  const field = f.unset('rope_scaling') && !f.unset('rope_parameters') ? 'rope_parameters' : 'rope_scaling';
  if (f.unset(field)) return { type: 'none' };
  const rs = f.raw(field);
  if (!isJsonObject(rs)) f.invalid(field, rs, 'null or an object');
  const r: Fields = new Fields(f.label, rs, `${field}.`);
  const typeField = r.unset('rope_type') ? 'type' : 'rope_type';
  const type = rs[typeField];
  if (typeof type !== 'string') r.invalid('rope_type', type, 'a string such as "linear" or "llama3"');
  switch (type) {
    case 'default':
      return { type: 'none' };
    case 'linear':
      return { type: 'linear', factor: r.positiveNumber('factor') };
    case 'llama3': {
      const s: RopeScaling = {
        type: 'llama3',
        factor: r.positiveNumber('factor'),
        lowFreqFactor: r.positiveNumber('low_freq_factor'),
        highFreqFactor: r.positiveNumber('high_freq_factor'),
        originalMaxPositionEmbeddings: r.positiveInt('original_max_position_embeddings'),
      };
      // The smoothing step divides by (high - low); equal factors would make it 0/0.
      if (s.highFreqFactor <= s.lowFreqFactor) {
        r.invalid('high_freq_factor', s.highFreqFactor, `a value above low_freq_factor (${s.lowFreqFactor})`);
      }
      return s;
    }
    default:
      f.unsupported(
        `${field}.${typeField} ${JSON.stringify(type)} is not supported for ${architecture} ` +
          '(supported: default, linear, llama3)',
      );
  }
}

/**
 * Builds the ModelSpec of a Llama, Mistral or Qwen2 checkpoint from its parsed config.json and,
 * when present, generation_config.json (which may add end-of-sequence ids and override bos).
 * `location` names the model folder in error messages.
 */
/** quant_method values whose checkpoints src/quant can load. */
const QUANT_METHODS: readonly string[] = ['kiln', 'gptq', 'awq'];

export function parseModelConfig(config: unknown, generationConfig?: unknown, location?: string): ModelSpec {
  const label = fileLabel('config.json', location);
  if (!isJsonObject(config)) {
    throw new InvalidModelFileError(`${label} is ${describeValue(config)}, expected a JSON object`);
  }
  const f: Fields = new Fields(label, config);

  let hfArchitecture: string;
  const archs = config.architectures;
  if (archs === undefined || archs === null) {
    const mt = config.model_type;
    if (typeof mt !== 'string' || !Object.hasOwn(MODEL_TYPES, mt)) {
      f.invalid(
        'architectures',
        archs,
        'a list such as ["LlamaForCausalLM"] (model_type does not name one either)',
      );
    }
    hfArchitecture = Object.keys(ARCHITECTURES).find((k) => ARCHITECTURES[k] === MODEL_TYPES[mt])!;
  } else {
    if (!Array.isArray(archs) || typeof archs[0] !== 'string') {
      f.invalid('architectures', archs, 'a non-empty list of class names');
    }
    hfArchitecture = archs[0];
  }
  const architecture = Object.hasOwn(ARCHITECTURES, hfArchitecture)
    ? ARCHITECTURES[hfArchitecture]
    : undefined;
  if (!architecture) {
    f.unsupported(
      `architectures[0] ${JSON.stringify(hfArchitecture)} is not supported ` +
        `(supported: ${Object.keys(ARCHITECTURES).join(', ')})`,
    );
  }
  if (!f.unset('model_type') && config.model_type !== architecture) {
    f.invalid(
      'model_type',
      config.model_type,
      `"${architecture}" to match architectures[0] ${hfArchitecture}`,
    );
  }

  // Checked here only for the method; src/quant parses the rest when the weights are loaded.
  let quantizationConfig: JsonObject | null = null;
  if (!f.unset('quantization_config')) {
    const q = config.quantization_config;
    if (isJsonObject(q) && QUANT_METHODS.includes(q.quant_method as string)) quantizationConfig = q;
    else {
      const method =
        isJsonObject(q) && typeof q.quant_method === 'string' ? ` (quant_method "${q.quant_method}")` : '';
      f.unsupported(
        `quantization_config${method} is not supported: Kiln loads ${QUANT_METHODS.join(', ')} int4 checkpoints and unquantized (f32/f16/bf16) ones`,
      );
    }
  }

  const hiddenAct = f.unset('hidden_act') ? 'silu' : config.hidden_act;
  if (hiddenAct !== 'silu')
    f.unsupported(`hidden_act ${describeValue(hiddenAct)} is not supported (expected "silu")`);

  const vocabSize = f.positiveInt('vocab_size');
  const hiddenSize = f.positiveInt('hidden_size');
  const intermediateSize = f.positiveInt('intermediate_size');
  const numLayers = f.positiveInt('num_hidden_layers', MAX_LAYERS);
  const numHeads = f.positiveInt('num_attention_heads');
  const numKvHeads = f.optionalPositiveInt('num_key_value_heads') ?? numHeads;
  if (numHeads % numKvHeads !== 0) {
    throw new InvalidModelFileError(
      `${label}: num_key_value_heads (${numKvHeads}) must divide num_attention_heads (${numHeads})`,
    );
  }
  let headDim = f.optionalPositiveInt('head_dim');
  if (headDim === undefined) {
    if (hiddenSize % numHeads !== 0) {
      throw new InvalidModelFileError(
        `${label}: num_attention_heads (${numHeads}) must divide hidden_size (${hiddenSize}) when head_dim is not given`,
      );
    }
    headDim = hiddenSize / numHeads;
  }
  // RoPE rotates pairs of elements, so an odd head size has no valid rotation.
  if (headDim % 2 !== 0) f.invalid('head_dim', headDim, 'an even number (RoPE rotates pairs)');

  const rmsNormEps = f.positiveNumber('rms_norm_eps');
  const ropeParams = config.rope_parameters;
  let ropeTheta = 10000;
  if (!f.unset('rope_theta')) ropeTheta = f.positiveNumber('rope_theta');
  else if (isJsonObject(ropeParams) && ropeParams.rope_theta !== undefined) {
    ropeTheta = new Fields(label, ropeParams, 'rope_parameters.').positiveNumber('rope_theta');
  }
  const ropeScaling = parseRopeScaling(f, architecture);

  let maxPositionEmbeddings = f.positiveInt('max_position_embeddings');
  // Kiln implements full causal attention only. Up to the window length, sliding-window attention
  // sees exactly the same keys as full attention, so clamping the context to the window keeps
  // every result exact instead of silently diverging from the reference past it.
  let window: number | undefined;
  if (architecture === 'qwen2') {
    if (f.bool('use_sliding_window', false)) window = f.positiveInt('sliding_window');
  } else if (architecture === 'mistral') {
    // As transformers' MistralConfig: an absent key means its default window of 4096, while an
    // explicit null (Mistral 7B v0.2 and later) turns sliding-window attention off.
    const raw = f.raw('sliding_window');
    if (raw === undefined) window = MISTRAL_DEFAULT_SLIDING_WINDOW;
    else if (raw !== null) window = f.positiveInt('sliding_window');
  }
  if (window !== undefined) maxPositionEmbeddings = Math.min(maxPositionEmbeddings, window);

  const tieWordEmbeddings = f.bool('tie_word_embeddings', false);
  // Only Llama reads attention_bias / mlp_bias; transformers' Mistral ignores them and Qwen2
  // hard-codes q/k/v biases without o/mlp biases.
  const llamaAttnBias = architecture === 'llama' && f.bool('attention_bias', false);
  const qkvBias = architecture === 'qwen2' || llamaAttnBias;
  const oBias = llamaAttnBias;
  const mlpBias = architecture === 'llama' && f.bool('mlp_bias', false);

  let bosTokenId = f.tokenId('bos_token_id');
  const eos = f.tokenIds('eos_token_id');
  if (generationConfig !== undefined && generationConfig !== null) {
    const gLabel = fileLabel('generation_config.json', location);
    if (!isJsonObject(generationConfig)) {
      throw new InvalidModelFileError(
        `${gLabel} is ${describeValue(generationConfig)}, expected a JSON object`,
      );
    }
    const g: Fields = new Fields(gLabel, generationConfig);
    bosTokenId = g.tokenId('bos_token_id') ?? bosTokenId;
    eos.push(...g.tokenIds('eos_token_id'));
  }
  const eosTokenIds = [...new Set(eos)];

  return {
    architecture,
    hfArchitecture,
    vocabSize,
    hiddenSize,
    intermediateSize,
    numLayers,
    numHeads,
    numKvHeads,
    headDim,
    rmsNormEps,
    ropeTheta,
    ropeScaling,
    maxPositionEmbeddings,
    tieWordEmbeddings,
    qkvBias,
    oBias,
    mlpBias,
    bosTokenId,
    eosTokenIds,
    quantizationConfig,
  };
}

/** Reads config.json and the optional generation_config.json of a model folder into a ModelSpec. */
export async function loadModelSpec(dir: ModelDir): Promise<ModelSpec> {
  if (!(await dir.exists('config.json'))) {
    throw new InvalidModelFileError(
      `no config.json in ${dir.location}: expected a Hugging Face model folder`,
    );
  }
  const config = await readJson(dir, 'config.json');
  const generation = (await dir.exists('generation_config.json'))
    ? await readJson(dir, 'generation_config.json')
    : undefined;
  const spec = parseModelConfig(config, generation, dir.location);
  // Older GPTQ folders keep their settings in quantize_config.json instead of config.json.
  if (!spec.quantizationConfig && (await dir.exists('quantize_config.json'))) {
    const q = await readJson(dir, 'quantize_config.json');
    if (!isJsonObject(q)) {
      throw new InvalidModelFileError(`quantize_config.json in ${dir.location} is not a JSON object`);
    }
    spec.quantizationConfig = { quant_method: 'gptq', ...q };
  }
  return spec;
}
