import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { InvalidModelFileError, UnsupportedModelError } from '../../src/errors.js';
import { loadModelSpec, parseModelConfig } from '../../src/model/config.js';
import { MAX_DIM, MAX_LAYERS } from '../../src/model/fields.js';
import { openLocalModelDir } from '../../src/node/fs-model-dir.js';

// Abridged copies of the published config.json files of the models named.
const tinyLlama = {
  architectures: ['LlamaForCausalLM'],
  bos_token_id: 1,
  eos_token_id: 2,
  hidden_act: 'silu',
  hidden_size: 2048,
  intermediate_size: 5632,
  max_position_embeddings: 2048,
  model_type: 'llama',
  num_attention_heads: 32,
  num_hidden_layers: 22,
  num_key_value_heads: 4,
  rms_norm_eps: 1e-5,
  rope_scaling: null,
  rope_theta: 10000.0,
  tie_word_embeddings: false,
  torch_dtype: 'bfloat16',
  vocab_size: 32000,
};

const llama32_1b = {
  architectures: ['LlamaForCausalLM'],
  attention_bias: false,
  bos_token_id: 128000,
  eos_token_id: 128001,
  head_dim: 64,
  hidden_act: 'silu',
  hidden_size: 2048,
  intermediate_size: 8192,
  max_position_embeddings: 131072,
  mlp_bias: false,
  model_type: 'llama',
  num_attention_heads: 32,
  num_hidden_layers: 16,
  num_key_value_heads: 8,
  rms_norm_eps: 1e-5,
  rope_scaling: {
    factor: 32.0,
    high_freq_factor: 4.0,
    low_freq_factor: 1.0,
    original_max_position_embeddings: 8192,
    rope_type: 'llama3',
  },
  rope_theta: 500000.0,
  tie_word_embeddings: true,
  vocab_size: 128256,
};
const llama32Generation = { bos_token_id: 128000, do_sample: true, eos_token_id: [128001, 128008, 128009] };

const qwen25_05b = {
  architectures: ['Qwen2ForCausalLM'],
  bos_token_id: 151643,
  eos_token_id: 151645,
  hidden_act: 'silu',
  hidden_size: 896,
  intermediate_size: 4864,
  max_position_embeddings: 32768,
  max_window_layers: 21,
  model_type: 'qwen2',
  num_attention_heads: 14,
  num_hidden_layers: 24,
  num_key_value_heads: 2,
  rms_norm_eps: 1e-6,
  rope_theta: 1000000.0,
  sliding_window: 32768,
  tie_word_embeddings: true,
  use_sliding_window: false,
  vocab_size: 151936,
};

const mistral7b_v01 = {
  architectures: ['MistralForCausalLM'],
  bos_token_id: 1,
  eos_token_id: 2,
  hidden_act: 'silu',
  hidden_size: 4096,
  intermediate_size: 14336,
  max_position_embeddings: 32768,
  model_type: 'mistral',
  num_attention_heads: 32,
  num_hidden_layers: 32,
  num_key_value_heads: 8,
  rms_norm_eps: 1e-5,
  rope_theta: 10000.0,
  sliding_window: 4096,
  tie_word_embeddings: false,
  vocab_size: 32000,
};

describe('parseModelConfig: supported models', () => {
  it('reads a GQA Llama (TinyLlama)', () => {
    expect(parseModelConfig(tinyLlama)).toEqual({
      architecture: 'llama',
      hfArchitecture: 'LlamaForCausalLM',
      vocabSize: 32000,
      hiddenSize: 2048,
      intermediateSize: 5632,
      numLayers: 22,
      numHeads: 32,
      numKvHeads: 4,
      headDim: 64,
      rmsNormEps: 1e-5,
      ropeTheta: 10000,
      ropeScaling: { type: 'none' },
      maxPositionEmbeddings: 2048,
      layerWindows: new Array<number>(22).fill(0),
      tieWordEmbeddings: false,
      qkvBias: false,
      oBias: false,
      mlpBias: false,
      bosTokenId: 1,
      eosTokenIds: [2],
      quantizationConfig: null,
    });
  });

  it('defaults num_key_value_heads, rope_theta, tie_word_embeddings and hidden_act', () => {
    const {
      num_key_value_heads: _k,
      rope_theta: _r,
      tie_word_embeddings: _t,
      hidden_act: _h,
      ...rest
    } = tinyLlama;
    const spec = parseModelConfig({ ...rest, head_dim: null, num_key_value_heads: null });
    expect([spec.numKvHeads, spec.ropeTheta, spec.tieWordEmbeddings, spec.headDim]).toEqual([
      32,
      10000,
      false,
      64,
    ]);
  });

  it('reads Llama 3.2 with llama3 rope scaling, tied embeddings and generation_config eos ids', () => {
    const spec = parseModelConfig(llama32_1b, llama32Generation);
    expect(spec.ropeScaling).toEqual({
      type: 'llama3',
      factor: 32,
      lowFreqFactor: 1,
      highFreqFactor: 4,
      originalMaxPositionEmbeddings: 8192,
    });
    expect(spec.ropeTheta).toBe(500000);
    expect(spec.tieWordEmbeddings).toBe(true);
    expect([spec.numHeads, spec.numKvHeads, spec.headDim]).toEqual([32, 8, 64]);
    expect(spec.bosTokenId).toBe(128000);
    expect(spec.eosTokenIds).toEqual([128001, 128008, 128009]);
  });

  it('uses an explicit head_dim that differs from hidden/heads', () => {
    const spec = parseModelConfig({
      ...tinyLlama,
      hidden_size: 1000,
      num_attention_heads: 16,
      num_key_value_heads: 8,
      head_dim: 128,
    });
    expect(spec.headDim).toBe(128);
  });

  it('reads linear scaling under both "type" and "rope_type", and "default" as none', () => {
    expect(
      parseModelConfig({ ...tinyLlama, rope_scaling: { type: 'linear', factor: 4 } }).ropeScaling,
    ).toEqual({
      type: 'linear',
      factor: 4,
    });
    expect(
      parseModelConfig({ ...tinyLlama, rope_scaling: { rope_type: 'linear', factor: 2.5 } }).ropeScaling,
    ).toEqual({
      type: 'linear',
      factor: 2.5,
    });
    expect(parseModelConfig({ ...tinyLlama, rope_scaling: { rope_type: 'default' } }).ropeScaling).toEqual({
      type: 'none',
    });
  });

  it('reads transformers v5 rope_parameters', () => {
    const { rope_theta: _t, rope_scaling: _s, ...rest } = llama32_1b;
    const spec = parseModelConfig({
      ...rest,
      rope_parameters: { ...llama32_1b.rope_scaling, rope_theta: 500000 },
    });
    expect(spec.ropeTheta).toBe(500000);
    expect(spec.ropeScaling.type).toBe('llama3');
    const plain = parseModelConfig({
      ...tinyLlama,
      rope_theta: undefined,
      rope_parameters: { rope_type: 'default', rope_theta: 1e6 },
    });
    expect([plain.ropeTheta, plain.ropeScaling.type]).toEqual([1e6, 'none']);
  });

  it('gives Llama q/k/v/o biases with attention_bias and MLP biases with mlp_bias', () => {
    const spec = parseModelConfig({ ...tinyLlama, attention_bias: true, mlp_bias: true });
    expect([spec.qkvBias, spec.oBias, spec.mlpBias]).toEqual([true, true, true]);
  });

  it('reads Qwen2.5 with q/k/v biases only, tied embeddings and eos from generation_config', () => {
    const spec = parseModelConfig(qwen25_05b, { bos_token_id: 151643, eos_token_id: [151645, 151643] });
    expect(spec.architecture).toBe('qwen2');
    expect([spec.qkvBias, spec.oBias, spec.mlpBias]).toEqual([true, false, false]);
    expect(spec.tieWordEmbeddings).toBe(true);
    expect([spec.numHeads, spec.numKvHeads, spec.headDim]).toEqual([14, 2, 64]);
    expect(spec.rmsNormEps).toBe(1e-6);
    expect(spec.eosTokenIds).toEqual([151645, 151643]);
    expect(spec.maxPositionEmbeddings).toBe(32768);
    // Qwen2 biases do not depend on attention_bias, which its config never sets.
    expect(parseModelConfig({ ...qwen25_05b, attention_bias: false }).qkvBias).toBe(true);
  });

  it('keeps max_position_embeddings past a sliding window (the kernels honour the window)', () => {
    const spec = parseModelConfig(mistral7b_v01);
    expect(spec.maxPositionEmbeddings).toBe(32768);
    expect(spec.layerWindows).toEqual(new Array<number>(32).fill(4096));
    expect(
      parseModelConfig({ ...qwen25_05b, use_sliding_window: true, sliding_window: 4096 })
        .maxPositionEmbeddings,
    ).toBe(32768);
    // Mistral has no bias options in transformers: attention_bias is ignored there.
    expect(parseModelConfig({ ...mistral7b_v01, attention_bias: true }).qkvBias).toBe(false);
  });

  it('follows MistralConfig: an absent sliding_window is its default of 4096, null turns it off', () => {
    const { sliding_window: _window, ...noWindow } = mistral7b_v01;
    expect(parseModelConfig(noWindow).layerWindows).toEqual(new Array<number>(32).fill(4096));
    expect(parseModelConfig({ ...mistral7b_v01, sliding_window: null }).layerWindows).toEqual(
      new Array<number>(32).fill(0),
    );
    // MistralConfig ignores layer_types: every layer slides.
    const types = new Array<string>(32).fill('full_attention');
    expect(parseModelConfig({ ...mistral7b_v01, layer_types: types }).layerWindows).toEqual(
      new Array<number>(32).fill(4096),
    );
  });

  it('follows Qwen2Config: layers from max_window_layers slide when use_sliding_window, or as layer_types says', () => {
    const windows = (extra: Record<string, unknown>): number[] =>
      parseModelConfig({ ...qwen25_05b, ...extra }).layerWindows;
    const full = new Array<number>(24).fill(0);
    expect(windows({})).toEqual(full);
    // use_sliding_window false drops the window even where layer_types marks sliding layers.
    expect(windows({ layer_types: new Array<string>(24).fill('sliding_attention') })).toEqual(full);
    const slid = windows({ use_sliding_window: true, sliding_window: 512 });
    expect(slid).toEqual([...new Array<number>(21).fill(0), 512, 512, 512]);
    // Absent keys take Qwen2Config's defaults: window 4096, max_window_layers 28 (no layer of 24).
    const { sliding_window: _w, max_window_layers: _m, ...bare } = qwen25_05b;
    expect(parseModelConfig({ ...bare, use_sliding_window: true }).layerWindows).toEqual(full);
    expect(
      parseModelConfig({ ...bare, use_sliding_window: true, max_window_layers: 22 }).layerWindows,
    ).toEqual([...new Array<number>(22).fill(0), 4096, 4096]);
    expect(windows({ use_sliding_window: true, sliding_window: null })).toEqual(full);
    const types = Array.from({ length: 24 }, (_, i) => (i % 2 ? 'full_attention' : 'sliding_attention'));
    expect(windows({ use_sliding_window: true, sliding_window: 64, layer_types: types })).toEqual(
      Array.from({ length: 24 }, (_, i) => (i % 2 ? 0 : 64)),
    );
  });

  it('refuses a malformed layer_types, naming the field', () => {
    const on = { ...qwen25_05b, use_sliding_window: true, sliding_window: 64 };
    expect(() => parseModelConfig({ ...on, layer_types: ['full_attention'] })).toThrow(
      /layer_types is \[.*\], expected a list of 24 entries/,
    );
    expect(() =>
      parseModelConfig({ ...on, layer_types: [...new Array<string>(23).fill('full_attention'), 'chunked'] }),
    ).toThrow(/layer_types\[23\] "chunked" is not supported/);
    expect(() => parseModelConfig({ ...on, max_window_layers: -1 })).toThrow(
      /max_window_layers is -1, expected a non-negative integer/,
    );
  });

  it('accepts sizes up to the sanity bounds', () => {
    const spec = parseModelConfig({
      ...tinyLlama,
      num_hidden_layers: MAX_LAYERS,
      max_position_embeddings: MAX_DIM,
    });
    expect([spec.numLayers, spec.maxPositionEmbeddings]).toEqual([1024, 2 ** 24]);
  });

  it('merges eos ids from config and generation_config, and lets generation_config set bos', () => {
    const spec = parseModelConfig(
      { ...tinyLlama, eos_token_id: [2, 7] },
      { bos_token_id: 5, eos_token_id: 9 },
    );
    expect(spec.bosTokenId).toBe(5);
    expect(spec.eosTokenIds).toEqual([2, 7, 9]);
    const noBos = parseModelConfig({ ...tinyLlama, bos_token_id: null, eos_token_id: null }, {});
    expect([noBos.bosTokenId, noBos.eosTokenIds]).toEqual([null, []]);
  });
});

describe('parseModelConfig: errors name the field and value', () => {
  const cases: [string, unknown, unknown, RegExp, typeof InvalidModelFileError][] = [
    [
      'a non-object config',
      [1],
      undefined,
      /config.json is \[1\], expected a JSON object/,
      InvalidModelFileError,
    ],
    [
      'an unknown architecture',
      { ...tinyLlama, architectures: ['GPT2LMHeadModel'] },
      undefined,
      /architectures\[0\] "GPT2LMHeadModel" \(model_type "llama"\) is not supported/,
      UnsupportedModelError,
    ],
    [
      'an empty architectures list',
      { ...tinyLlama, architectures: [] },
      undefined,
      /architectures is \[\], expected a non-empty list/,
      InvalidModelFileError,
    ],
    [
      'a model_type that disagrees',
      { ...tinyLlama, model_type: 'qwen2' },
      undefined,
      /model_type is "qwen2", expected "llama"/,
      InvalidModelFileError,
    ],
    [
      'a missing hidden_size',
      { ...tinyLlama, hidden_size: undefined },
      undefined,
      /hidden_size is missing, expected a positive integer/,
      InvalidModelFileError,
    ],
    [
      'a string vocab_size',
      { ...tinyLlama, vocab_size: '32000' },
      undefined,
      /vocab_size is "32000", expected a positive integer/,
      InvalidModelFileError,
    ],
    [
      'a zero num_hidden_layers',
      { ...tinyLlama, num_hidden_layers: 0 },
      undefined,
      /num_hidden_layers is 0, expected a positive integer/,
      InvalidModelFileError,
    ],
    [
      'a fractional intermediate_size',
      { ...tinyLlama, intermediate_size: 5632.5 },
      undefined,
      /intermediate_size is 5632.5/,
      InvalidModelFileError,
    ],
    [
      'a negative max_position_embeddings',
      { ...tinyLlama, max_position_embeddings: -1 },
      undefined,
      /max_position_embeddings is -1/,
      InvalidModelFileError,
    ],
    [
      'kv heads that do not divide heads',
      { ...tinyLlama, num_attention_heads: 8, num_key_value_heads: 3, hidden_size: 512 },
      undefined,
      /config.json: num_key_value_heads \(3\) must divide num_attention_heads \(8\)/,
      InvalidModelFileError,
    ],
    [
      'heads that do not divide hidden_size',
      { ...tinyLlama, hidden_size: 2050 },
      undefined,
      /num_attention_heads \(32\) must divide hidden_size \(2050\)/,
      InvalidModelFileError,
    ],
    [
      'an odd head_dim',
      { ...tinyLlama, head_dim: 63 },
      undefined,
      /head_dim is 63, expected an even number/,
      InvalidModelFileError,
    ],
    [
      'a missing rms_norm_eps',
      { ...tinyLlama, rms_norm_eps: undefined },
      undefined,
      /rms_norm_eps is missing, expected a positive number/,
      InvalidModelFileError,
    ],
    [
      'a zero rope_theta',
      { ...tinyLlama, rope_theta: 0 },
      undefined,
      /rope_theta is 0, expected a positive number/,
      InvalidModelFileError,
    ],
    [
      'yarn scaling',
      { ...tinyLlama, rope_scaling: { rope_type: 'yarn', factor: 4 } },
      undefined,
      /rope_scaling.rope_type "yarn" is not supported/,
      UnsupportedModelError,
    ],
    [
      'dynamic scaling under "type"',
      { ...tinyLlama, rope_scaling: { type: 'dynamic', factor: 2 } },
      undefined,
      /rope_scaling.type "dynamic" is not supported/,
      UnsupportedModelError,
    ],
    [
      'yarn scaling',
      { ...tinyLlama, rope_scaling: { rope_type: 'yarn', factor: 4 } },
      undefined,
      /"yarn" is not supported/,
      UnsupportedModelError,
    ],
    [
      'scaling without a type',
      { ...tinyLlama, rope_scaling: { factor: 2 } },
      undefined,
      /rope_scaling.rope_type is missing/,
      InvalidModelFileError,
    ],
    [
      'a rope_scaling string',
      { ...tinyLlama, rope_scaling: 'linear' },
      undefined,
      /rope_scaling is "linear", expected null or an object/,
      InvalidModelFileError,
    ],
    [
      'linear scaling without factor',
      { ...tinyLlama, rope_scaling: { type: 'linear' } },
      undefined,
      /rope_scaling.factor is missing, expected a positive number/,
      InvalidModelFileError,
    ],
    [
      'llama3 scaling without low_freq_factor',
      { ...llama32_1b, rope_scaling: { ...llama32_1b.rope_scaling, low_freq_factor: undefined } },
      undefined,
      /rope_scaling.low_freq_factor is missing/,
      InvalidModelFileError,
    ],
    [
      'llama3 scaling with equal frequency factors',
      { ...llama32_1b, rope_scaling: { ...llama32_1b.rope_scaling, high_freq_factor: 1 } },
      undefined,
      /rope_scaling.high_freq_factor is 1, expected a value above low_freq_factor \(1\)/,
      InvalidModelFileError,
    ],
    [
      'a gelu activation',
      { ...tinyLlama, hidden_act: 'gelu' },
      undefined,
      /hidden_act "gelu" is not supported \(expected "silu"\)/,
      UnsupportedModelError,
    ],
    [
      'a quantized checkpoint',
      { ...tinyLlama, quantization_config: { quant_method: 'bitsandbytes', load_in_4bit: true } },
      undefined,
      /quantization_config \(quant_method "bitsandbytes"\) is not supported: Kiln loads kiln, gptq, awq/,
      UnsupportedModelError,
    ],
    [
      'a non-boolean tie_word_embeddings',
      { ...tinyLlama, tie_word_embeddings: 'yes' },
      undefined,
      /tie_word_embeddings is "yes", expected true or false/,
      InvalidModelFileError,
    ],
    [
      'a negative eos id',
      { ...tinyLlama, eos_token_id: [2, -1] },
      undefined,
      /eos_token_id is \[2,-1\], expected a token id or a list of token ids/,
      InvalidModelFileError,
    ],
    [
      'a sliding window of 0',
      { ...mistral7b_v01, sliding_window: 0 },
      undefined,
      /sliding_window is 0, expected a positive integer/,
      InvalidModelFileError,
    ],
    [
      'a non-object generation_config',
      tinyLlama,
      'x',
      /generation_config.json is "x", expected a JSON object/,
      InvalidModelFileError,
    ],
    [
      'a bad generation_config eos',
      tinyLlama,
      { eos_token_id: 'eos' },
      /generation_config.json: eos_token_id is "eos"/,
      InvalidModelFileError,
    ],
  ];
  for (const [what, config, generation, message, cls] of cases) {
    it(`rejects ${what}`, () => {
      let err: unknown;
      try {
        parseModelConfig(config, generation);
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(cls);
      expect((err as Error).message).toMatch(message);
    });
  }

  // [field, value, further fields]: each over its sanity bound (1024 layers, 2^24 for other sizes).
  const overBound: [string, number, Record<string, unknown>?][] = [
    ['num_hidden_layers', 1e12],
    ['num_hidden_layers', MAX_LAYERS + 1],
    ['vocab_size', MAX_DIM + 1],
    ['hidden_size', 2 ** 40],
    ['intermediate_size', 2 ** 30],
    ['max_position_embeddings', 2 ** 31],
    ['num_attention_heads', 2 ** 25, { num_key_value_heads: 1 }],
    ['num_key_value_heads', 2 ** 25],
    ['head_dim', 2 ** 26],
  ];
  for (const [field, value, more] of overBound) {
    it(`rejects ${field} = ${value}, over its bound`, () => {
      const max = field === 'num_hidden_layers' ? 1024 : 16777216;
      expect(() => parseModelConfig({ ...tinyLlama, ...more, [field]: value })).toThrow(
        new InvalidModelFileError(
          `config.json: ${field} is ${value}, expected at most ${max} (no real model is that large)`,
        ),
      );
    });
  }

  it('names the folder when given a location', () => {
    expect(() => parseModelConfig({ ...tinyLlama, vocab_size: 0 }, undefined, 'models/x')).toThrow(
      'config.json in models/x: vocab_size is 0, expected a positive integer',
    );
  });

  it('keeps UnsupportedModelError distinct from InvalidModelFileError', () => {
    expect(() => parseModelConfig({ ...tinyLlama, hidden_act: 'relu' })).not.toThrow(InvalidModelFileError);
  });
});

describe('loadModelSpec', () => {
  const root = mkdtempSync(join(tmpdir(), 'kiln-config-'));
  afterAll(() => rmSync(root, { recursive: true, force: true }));

  it('reads config.json and generation_config.json from a folder', async () => {
    const dir = join(root, 'llama32');
    mkdirSync(dir);
    writeFileSync(join(dir, 'config.json'), JSON.stringify(llama32_1b));
    writeFileSync(join(dir, 'generation_config.json'), JSON.stringify(llama32Generation));
    const spec = await loadModelSpec(openLocalModelDir(dir));
    expect(spec.eosTokenIds).toEqual([128001, 128008, 128009]);
  });

  it('works without generation_config.json', async () => {
    const dir = join(root, 'tiny');
    mkdirSync(dir);
    writeFileSync(join(dir, 'config.json'), JSON.stringify(tinyLlama));
    expect((await loadModelSpec(openLocalModelDir(dir))).eosTokenIds).toEqual([2]);
  });

  it('names the folder when config.json is missing or broken', async () => {
    const empty = join(root, 'empty');
    mkdirSync(empty);
    await expect(loadModelSpec(openLocalModelDir(empty))).rejects.toThrow(`no config.json in ${empty}`);
    const broken = join(root, 'broken');
    mkdirSync(broken);
    writeFileSync(join(broken, 'config.json'), '{"hidden_size": ');
    await expect(loadModelSpec(openLocalModelDir(broken))).rejects.toThrow(
      `config.json in ${broken} is not valid JSON`,
    );
    writeFileSync(join(broken, 'config.json'), JSON.stringify({ ...tinyLlama, num_attention_heads: 'many' }));
    await expect(loadModelSpec(openLocalModelDir(broken))).rejects.toThrow(
      `config.json in ${broken}: num_attention_heads is "many", expected a positive integer`,
    );
  });
});

// Abridged copies of the published config.json files of the 2026 small models.
const qwen3_06b = {
  architectures: ['Qwen3ForCausalLM'],
  attention_bias: false,
  attention_dropout: 0.0,
  bos_token_id: 151643,
  eos_token_id: 151645,
  head_dim: 128,
  hidden_act: 'silu',
  hidden_size: 1024,
  intermediate_size: 3072,
  max_position_embeddings: 40960,
  max_window_layers: 28,
  model_type: 'qwen3',
  num_attention_heads: 16,
  num_hidden_layers: 28,
  num_key_value_heads: 8,
  rms_norm_eps: 1e-6,
  rope_scaling: null,
  rope_theta: 1000000,
  sliding_window: null,
  tie_word_embeddings: true,
  torch_dtype: 'bfloat16',
  use_sliding_window: false,
  vocab_size: 151936,
};

const gemma3_1b = {
  architectures: ['Gemma3ForCausalLM'],
  attention_bias: false,
  attn_logit_softcapping: null,
  bos_token_id: 2,
  eos_token_id: [1, 106],
  final_logit_softcapping: null,
  head_dim: 256,
  hidden_activation: 'gelu_pytorch_tanh',
  hidden_size: 1152,
  intermediate_size: 6912,
  max_position_embeddings: 32768,
  model_type: 'gemma3_text',
  num_attention_heads: 4,
  num_hidden_layers: 26,
  num_key_value_heads: 1,
  query_pre_attn_scalar: 256,
  rms_norm_eps: 1e-6,
  rope_local_base_freq: 10000,
  rope_scaling: null,
  rope_theta: 1000000,
  sliding_window: 512,
  sliding_window_pattern: 6,
  torch_dtype: 'bfloat16',
  vocab_size: 262144,
};

const phi4mini = {
  architectures: ['Phi3ForCausalLM'],
  bos_token_id: 199999,
  eos_token_id: 199999,
  hidden_act: 'silu',
  hidden_size: 3072,
  intermediate_size: 8192,
  max_position_embeddings: 131072,
  model_type: 'phi3',
  num_attention_heads: 24,
  num_hidden_layers: 32,
  num_key_value_heads: 8,
  original_max_position_embeddings: 4096,
  partial_rotary_factor: 0.75,
  rms_norm_eps: 1e-5,
  rope_scaling: {
    long_factor: Array.from({ length: 48 }, (_, i) => 1 + i),
    short_factor: Array.from({ length: 48 }, () => 1),
    type: 'longrope',
  },
  rope_theta: 10000.0,
  sliding_window: 262144,
  tie_word_embeddings: true,
  vocab_size: 200064,
};

describe('parseModelConfig: Qwen3, SmolLM3, Phi-3, Gemma 2, Gemma 3', () => {
  it('reads Qwen3-0.6B: explicit head_dim, tied, no window', () => {
    const s = parseModelConfig(qwen3_06b);
    expect([s.architecture, s.headDim, s.tieWordEmbeddings, s.qkvBias, s.maxPositionEmbeddings]).toEqual([
      'qwen3',
      128,
      true,
      false,
      40960,
    ]);
  });

  it('reads SmolLM3 NoPE layers from no_rope_layers, or every 4th by default', () => {
    const base = {
      ...qwen3_06b,
      architectures: ['SmolLM3ForCausalLM'],
      model_type: 'smollm3',
      num_hidden_layers: 8,
    };
    expect(parseModelConfig({ ...base, no_rope_layers: [1, 0, 1, 1, 1, 1, 1, 0] }).layerRope).toEqual([
      'global',
      'none',
      'global',
      'global',
      'global',
      'global',
      'global',
      'none',
    ]);
    expect(parseModelConfig(base).layerRope).toEqual([
      'global',
      'global',
      'global',
      'none',
      'global',
      'global',
      'global',
      'none',
    ]);
  });

  it('reads Phi-4-mini: partial rotary 96 of 128, LongRoPE with the attention factor of 131072 / 4096', () => {
    const s = parseModelConfig(phi4mini);
    expect(s.rotaryDim).toBe(96);
    const r = s.ropeScaling;
    if (r.type !== 'longrope') throw new Error(r.type);
    expect(r.originalMaxPositionEmbeddings).toBe(4096);
    expect(r.attentionFactor).toBeCloseTo(Math.sqrt(1 + Math.log(32) / Math.log(4096)), 15);
    expect(r.longFactor).toHaveLength(48);
    // The window (262144) is beyond the context: no clamp.
    expect(s.maxPositionEmbeddings).toBe(131072);
  });

  it('reads Phi-3\'s older "su" rope type as longrope, and refuses factor lists of the wrong length', () => {
    const su = {
      ...phi4mini,
      partial_rotary_factor: undefined,
      num_attention_heads: 32,
      num_key_value_heads: 32,
    };
    const half = 3072 / 32 / 2;
    const rs = { long_factor: Array(half).fill(2), short_factor: Array(half).fill(1), type: 'su' };
    expect(parseModelConfig({ ...su, rope_scaling: rs }).ropeScaling.type).toBe('longrope');
    expect(() =>
      parseModelConfig({ ...su, rope_scaling: { ...rs, type: 'longrope', long_factor: [1] } }),
    ).toThrow(/rope_scaling.long_factor is \[1\], expected a list of 48 positive numbers/);
  });

  it('reads gemma-3-1b: 5 sliding layers of every 6 on the local RoPE, query_pre_attn_scalar, no caps', () => {
    const s = parseModelConfig(gemma3_1b);
    expect(s.layerRope?.slice(0, 12)).toEqual([
      ...Array(5).fill('local'),
      'global',
      ...Array(5).fill('local'),
      'global',
    ]);
    expect([
      s.localRopeTheta,
      s.ropeTheta,
      s.attentionScale,
      s.attnLogitSoftcap,
      s.finalLogitSoftcap,
    ]).toEqual([10000, 1000000, 1 / 16, undefined, undefined]);
  });

  it('reads Gemma 3 saved by transformers v5 (rope_parameters per layer type, layer_types)', () => {
    const v5 = {
      ...gemma3_1b,
      rope_local_base_freq: undefined,
      rope_scaling: undefined,
      rope_theta: undefined,
      sliding_window_pattern: undefined,
      layer_types: ['sliding_attention', 'full_attention'],
      num_hidden_layers: 2,
      rope_parameters: {
        full_attention: { rope_type: 'linear', factor: 8.0, rope_theta: 1000000 },
        sliding_attention: { rope_type: 'default', rope_theta: 10000 },
      },
    };
    const s = parseModelConfig(v5);
    expect([s.layerRope, s.localRopeTheta, s.ropeTheta, s.ropeScaling]).toEqual([
      ['local', 'global'],
      10000,
      1000000,
      { type: 'linear', factor: 8 },
    ]);
  });

  it('reads gemma-2-2b: alternating sliding layers, both soft-caps, GeGLU named by hidden_activation', () => {
    const g2 = {
      ...gemma3_1b,
      architectures: ['Gemma2ForCausalLM'],
      model_type: 'gemma2',
      attn_logit_softcapping: 50.0,
      final_logit_softcapping: 30.0,
      hidden_act: 'gelu_pytorch_tanh',
      rope_local_base_freq: undefined,
      sliding_window_pattern: undefined,
      sliding_window: 4096,
      max_position_embeddings: 8192,
    };
    const s = parseModelConfig(g2);
    expect([s.attnLogitSoftcap, s.finalLogitSoftcap, s.layerRope]).toEqual([50, 30, undefined]);
    expect(() => parseModelConfig({ ...g2, hidden_activation: 'gelu' })).toThrow(
      new UnsupportedModelError(
        'config.json: hidden_activation "gelu" is not supported (expected "gelu_pytorch_tanh", the tanh approximation Gemma uses)',
      ),
    );
  });

  it('refuses a vision tower, MoE layers and an unknown model_type, naming the field', () => {
    // Gemma3ForConditionalGeneration runs its text decoder (gemma3-multimodal.test.ts); PaliGemma's
    // Gemma decoder is not read through text_config, so its tower refuses it.
    const paligemma = {
      architectures: ['PaliGemmaForConditionalGeneration'],
      model_type: 'paligemma',
      text_config: gemma3_1b,
      vision_config: { model_type: 'siglip_vision_model' },
    };
    expect(() => parseModelConfig(paligemma)).toThrow(UnsupportedModelError);
    expect(() => parseModelConfig(paligemma)).toThrow(/vision_config is set: this checkpoint has a vision/);
    const moe = {
      ...qwen3_06b,
      architectures: ['Qwen3MoeForCausalLM'],
      model_type: 'qwen3_moe',
      num_experts: 128,
    };
    expect(() => parseModelConfig(moe)).toThrow(
      /num_experts is 128: mixture-of-experts layers are not supported/,
    );
    const mixtral = { ...tinyLlama, num_local_experts: 8 };
    expect(() => parseModelConfig(mixtral)).toThrow(/num_local_experts is 8: mixture-of-experts/);
    expect(() => parseModelConfig({ ...qwen3_06b, model_type: 'qwen3_next' })).toThrow(
      new UnsupportedModelError(
        'config.json: model_type "qwen3_next" is not supported (architectures[0] is Qwen3ForCausalLM)',
      ),
    );
    expect(() =>
      parseModelConfig({ ...qwen3_06b, architectures: ['Olmo2ForCausalLM'], model_type: 'olmo2' }),
    ).toThrow(/architectures\[0\] "Olmo2ForCausalLM" \(model_type "olmo2"\) is not supported/);
  });
});
