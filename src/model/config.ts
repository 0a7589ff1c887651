/**
 * Turns a Hugging Face config.json (plus the optional generation_config.json) into a ModelSpec.
 * Every field the forward pass depends on is checked here, so a model Kiln cannot run exactly is
 * refused with a message naming the field and its value instead of producing wrong tokens later.
 */
import { InvalidModelFileError } from '../errors.js';
import { readJson, type ModelDir } from '../io/byte-source.js';
import { describeValue, isJsonObject, type JsonObject } from '../io/json.js';
import { Fields, MAX_LAYERS } from './fields.js';
import type { Architecture } from './architecture.js';
import { architectureForClass, architectureNamed, supportedClasses } from './registry.js';
import type { ModelSpec, RopeScaling } from './spec.js';

function fileLabel(file: string, location: string | undefined): string {
  return location === undefined ? file : `${file} in ${location}`;
}

function parseRopeScaling(f: Fields, architecture: string): RopeScaling {
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
/** quant_method values whose checkpoints src/weights can load. */
const QUANT_METHODS: readonly string[] = ['kiln', 'gptq', 'awq'];

/**
 * Builds the ModelSpec of a checkpoint of a registered architecture (src/model/registry.ts) from
 * its parsed config.json and, when present, generation_config.json (which may add end-of-sequence
 * ids and override bos). `location` names the model folder in error messages.
 */
export function parseModelConfig(config: unknown, generationConfig?: unknown, location?: string): ModelSpec {
  const label = fileLabel('config.json', location);
  if (!isJsonObject(config)) {
    throw new InvalidModelFileError(`${label} is ${describeValue(config)}, expected a JSON object`);
  }
  const f: Fields = new Fields(label, config);

  let arch: Architecture | undefined;
  let hfArchitecture: string;
  const archs = config.architectures;
  if (archs === undefined || archs === null) {
    const mt = config.model_type;
    arch = typeof mt === 'string' ? architectureNamed(mt) : undefined;
    if (!arch) {
      f.invalid(
        'architectures',
        archs,
        'a list such as ["LlamaForCausalLM"] (model_type does not name one either)',
      );
    }
    hfArchitecture = arch.hfClasses[0] as string;
  } else {
    if (!Array.isArray(archs) || typeof archs[0] !== 'string') {
      f.invalid('architectures', archs, 'a non-empty list of class names');
    }
    hfArchitecture = archs[0];
    arch = architectureForClass(hfArchitecture);
  }
  if (!arch) {
    f.unsupported(
      `architectures[0] ${JSON.stringify(hfArchitecture)} is not supported ` +
        `(supported: ${supportedClasses().join(', ')})`,
    );
  }
  const architecture = arch.name;
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

  const maxPositionEmbeddings = f.positiveInt('max_position_embeddings');
  // The architecture's own fields: projection biases and the attention window of each layer.
  const ac = arch.config(f, { numLayers });
  const layerWindows = [...(ac.layerWindows ?? new Array<number>(numLayers).fill(0))];
  if (layerWindows.length !== numLayers || !layerWindows.every((w) => Number.isSafeInteger(w) && w >= 0)) {
    throw new InvalidModelFileError(
      `${label}: the ${architecture} rules gave ${layerWindows.length} layer windows, expected ${numLayers} non-negative integers`,
    );
  }
  const { qkvBias, oBias, mlpBias } = ac;

  const tieWordEmbeddings = f.bool('tie_word_embeddings', false);

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
    layerWindows,
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
