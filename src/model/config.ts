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
import { parseRopeScaling } from './rope-config.js';
import { textDecoderConfig } from './text-config.js';
import type { LayerRope, ModelSpec, RopeScaling } from './spec.js';

function fileLabel(file: string, location: string | undefined): string {
  return location === undefined ? file : `${file} in ${location}`;
}

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
  // A multimodal checkpoint whose text decoder Kiln runs (its vision tower ignored): read on as
  // the decoder's own config.
  const decoder = textDecoderConfig(new Fields(label, config), config);
  if (decoder) {
    const spec = parseModelConfig(decoder.config, generationConfig, location);
    return { ...spec, hfArchitecture: decoder.hfArchitecture, tensorPrefix: decoder.tensorPrefix };
  }
  const f: Fields = new Fields(label, config);
  refuseUnsupportedFeatures(f);

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
    const mt =
      typeof config.model_type === 'string' ? ` (model_type ${JSON.stringify(config.model_type)})` : '';
    f.unsupported(
      `architectures[0] ${JSON.stringify(hfArchitecture)}${mt} is not supported ` +
        `(supported: ${supportedClasses().join(', ')})`,
    );
  }
  const architecture = arch.name;
  if (typeof config.model_type === 'string' && !architectureNamed(config.model_type)) {
    f.unsupported(
      `model_type ${JSON.stringify(config.model_type)} is not supported (architectures[0] is ${hfArchitecture})`,
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

  // A gated-GELU block (Gemma) checks its own activation field in its architecture file.
  if (arch.block.mlp === 'swiglu') {
    const hiddenAct = f.unset('hidden_act') ? 'silu' : config.hidden_act;
    if (hiddenAct !== 'silu')
      f.unsupported(`hidden_act ${describeValue(hiddenAct)} is not supported (expected "silu")`);
  }

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

  const maxPositionEmbeddings = f.positiveInt('max_position_embeddings');
  // The architecture's own fields: projection biases, the attention window of each layer, its
  // RoPE variants.
  const ac = arch.config(f, { numLayers, headDim });
  const layerWindows = [...(ac.layerWindows ?? new Array<number>(numLayers).fill(0))];
  if (layerWindows.length !== numLayers || !layerWindows.every((w) => Number.isSafeInteger(w) && w >= 0)) {
    throw new InvalidModelFileError(
      `${label}: the ${architecture} rules gave ${layerWindows.length} layer windows, expected ${numLayers} non-negative integers`,
    );
  }
  const { qkvBias, oBias, mlpBias } = ac;
  const rotaryDim = ac.rotaryDim ?? headDim;
  if (rotaryDim % 2 !== 0 || rotaryDim > headDim)
    f.invalid('partial_rotary_factor', config.partial_rotary_factor, 'a fraction of head_dim that is even');
  let ropeScaling: RopeScaling;
  if (ac.globalRope) {
    ropeTheta = ac.globalRope.theta;
    ropeScaling = ac.globalRope.scaling;
  } else ropeScaling = parseRopeScaling(f, architecture, rotaryDim);
  const layerRope: LayerRope[] | undefined =
    ac.ropeLayers || ac.localRope
      ? Array.from({ length: numLayers }, (_, l) =>
          ac.ropeLayers?.[l] === false
            ? 'none'
            : ac.localRope && (layerWindows[l] ?? 0) > 0
              ? 'local'
              : 'global',
        )
      : undefined;

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
    layerRope,
    localRopeTheta: ac.localRope?.theta,
    rotaryDim: ac.rotaryDim,
    attentionScale: ac.attentionScale,
    attnLogitSoftcap: ac.attnLogitSoftcap,
    finalLogitSoftcap: ac.finalLogitSoftcap,
  };
}

/**
 * Config fields of features the engine does not implement, refused before anything else is read
 * (and so before any weight is loaded), naming the field: mixture-of-experts layers and vision
 * towers.
 */
function refuseUnsupportedFeatures(f: Fields): void {
  for (const field of ['vision_config', 'vision_tower', 'audio_config']) {
    if (!f.unset(field)) {
      f.unsupported(
        `${field} is set: this checkpoint has a vision/audio tower, which Kiln does not run ` +
          '(text-only decoders only, and the text decoder of Gemma3ForConditionalGeneration)',
      );
    }
  }
  for (const field of ['num_experts', 'num_local_experts', 'n_routed_experts', 'moe_num_experts']) {
    const v = f.raw(field);
    if (v !== undefined && v !== null && v !== 0) {
      f.unsupported(
        `${field} is ${describeValue(v)}: mixture-of-experts layers are not supported (dense decoders only)`,
      );
    }
  }
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
