/**
 * The fuzz targets: every parser of untrusted model files, fed random and mutated inputs through
 * the same entry points Kiln uses (a ModelDir over Blobs, as in the browser). A case passes when
 * it ends in success (whose result is then checked for the parser's promises) or in a Kiln error
 * class with a message; any other exception is a crash. Reads go through a ByteSource that fails
 * the case when a parser reads more than twice the file, so a hostile size cannot turn into an
 * unbounded allocation. `npm test` runs a few hundred cases per target with fixed seeds
 * (test/fuzz/); `npm run bench:fuzz` runs many more. The harness (outcomes, bounded sources) is
 * harness.ts.
 */
import fc from 'fast-check';
import { DTYPE_BYTES, SAFETENSORS_DTYPES, type SafetensorsDtype } from '../../src/io/dtype.js';
import { convertLlama2c } from '../../src/io/llama2c.js';
import { openCheckpoint } from '../../src/io/safetensors-checkpoint.js';
import { parseSafetensorsHeader } from '../../src/io/safetensors.js';
import { encodeSafetensors, encodeSafetensorsIndex } from '../../src/io/safetensors-writer.js';
import { convertSentencePiece } from '../../src/io/sentencepiece.js';
import { KilnTokenizer, type ChatMessage } from '../../src/io/tokenizer.js';
import { loadModelSpec } from '../../src/model/config.js';
import { parseQuantConfig } from '../../src/quant/import-config.js';
import { ggufModelTarget } from './gguf-targets.js';
import { boundedDir, bytesSource, check, outcome, type FuzzData, type FuzzTarget } from './harness.js';
import { hostileJsonValue, mutatedBytes, mutatedJson, mutatedText } from './mutate.js';

const utf8 = new TextEncoder();

// ---------------------------------------------------------------- safetensors header

const tensorSpec = fc.record({
  name: fc.oneof(
    fc.string({ minLength: 1, maxLength: 8 }),
    fc.constantFrom('__proto__', 'a.weight', '0', 'constructor'),
  ),
  dtype: fc.constantFrom(...SAFETENSORS_DTYPES),
  shape: fc.array(fc.nat(5), { maxLength: 3 }),
});

/** A valid safetensors file of 0-4 small tensors. */
const validSafetensors: fc.Arbitrary<Uint8Array> = fc
  .uniqueArray(tensorSpec, { maxLength: 4, selector: (t) => t.name })
  .filter((ts) => ts.every((t) => t.name !== '__metadata__'))
  .chain((ts) =>
    fc
      .option(fc.dictionary(fc.string({ maxLength: 6 }), fc.string({ maxLength: 6 }), { maxKeys: 2 }), {
        nil: undefined,
      })
      .map((meta) =>
        encodeSafetensors(
          ts.map((t) => ({
            name: t.name,
            dtype: t.dtype as SafetensorsDtype,
            shape: t.shape,
            data: new Uint8Array(
              t.shape.reduce((p, d) => p * d, 1) * DTYPE_BYTES[t.dtype as SafetensorsDtype],
            ),
          })),
          meta,
        ),
      ),
  );

/** `file` with its header JSON mutated, re-framed with a correct (or deliberately wrong) length. */
function withMutatedHeader(file: Uint8Array): fc.Arbitrary<Uint8Array> {
  const len = Number(new DataView(file.buffer, file.byteOffset).getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(file.subarray(8, 8 + len))) as unknown;
  const data = file.subarray(8 + len);
  return fc.tuple(mutatedJson(header), fc.integer({ min: -3, max: 3 })).map(([h, skew]) => {
    const json = utf8.encode(JSON.stringify(h) ?? 'null');
    const out = new Uint8Array(8 + json.length + data.length);
    new DataView(out.buffer).setBigUint64(0, BigInt(Math.max(0, json.length + (skew === 3 ? 1 : 0))), true);
    out.set(json, 8);
    out.set(data, 8 + json.length);
    return out;
  });
}

const safetensorsBytes: fc.Arbitrary<Uint8Array> = fc.oneof(
  validSafetensors,
  validSafetensors.chain(withMutatedHeader),
  validSafetensors.chain(mutatedBytes),
  fc.uint8Array({ maxLength: 48 }),
);

export const safetensorsHeaderTarget: FuzzTarget<Uint8Array> = {
  name: 'safetensors header',
  input: safetensorsBytes,
  run: (bytes) =>
    outcome(async () => {
      const src = bytesSource('model.safetensors', bytes);
      const h = await parseSafetensorsHeader(src);
      let covered = 0;
      for (const t of h.tensors.values()) {
        check(
          t.fileOffset >= h.dataStart && t.fileOffset + t.byteLength <= src.size,
          `${t.name} outside the file`,
        );
        const n = t.shape.reduce((p, d) => p * d, 1);
        check(n * DTYPE_BYTES[t.dtype] === t.byteLength, `${t.name}: byteLength disagrees with its shape`);
        covered += t.byteLength;
      }
      check(covered === src.size - h.dataStart, 'tensors do not tile the data section');
    }),
};

// ---------------------------------------------------------------- safetensors index (sharded)

interface ShardedInput {
  index: string;
  shards: Record<string, Uint8Array>;
}

function shard(names: string[]): Uint8Array {
  return encodeSafetensors(
    names.map((name) => ({ name, dtype: 'F32', shape: [2], data: new Uint8Array(8) })),
  );
}

const SHARD_A = 'model-00001-of-00002.safetensors';
const SHARD_B = 'model-00002-of-00002.safetensors';
const baseShards = { [SHARD_A]: shard(['a', 'b']), [SHARD_B]: shard(['c']) };
const baseIndex = JSON.parse(encodeSafetensorsIndex({ a: SHARD_A, b: SHARD_A, c: SHARD_B }, 24)) as unknown;

const shardedInput: fc.Arbitrary<ShardedInput> = fc.oneof(
  mutatedJson(baseIndex).map((j) => ({ index: JSON.stringify(j) ?? '', shards: baseShards })),
  mutatedText(JSON.stringify(baseIndex)).map((index) => ({ index, shards: baseShards })),
  fc.tuple(fc.constantFrom(SHARD_A, SHARD_B), mutatedBytes(baseShards[SHARD_B])).map(([name, bytes]) => ({
    index: JSON.stringify(baseIndex),
    shards: { ...baseShards, [name]: bytes },
  })),
  fc.constantFrom(SHARD_A, SHARD_B).map((drop) => {
    const shards: Record<string, Uint8Array> = { ...baseShards };
    delete shards[drop];
    return { index: JSON.stringify(baseIndex), shards };
  }),
);

export const safetensorsIndexTarget: FuzzTarget<ShardedInput> = {
  name: 'safetensors index',
  input: shardedInput,
  run: ({ index, shards }) =>
    outcome(async () => {
      const ckpt = await openCheckpoint(boundedDir({ 'model.safetensors.index.json': index, ...shards }));
      try {
        for (const t of ckpt.tensors.values()) {
          check(t.file.startsWith('fuzz/') && !t.file.slice(5).includes('/'), `${t.name} in ${t.file}`);
          check((await ckpt.readTensor(t)).byteLength === t.byteLength, `${t.name}: short read`);
        }
      } finally {
        await ckpt.close();
      }
    }),
};

// ---------------------------------------------------------------- config.json

const LLAMA_CONFIG = {
  architectures: ['LlamaForCausalLM'],
  model_type: 'llama',
  hidden_size: 64,
  intermediate_size: 96,
  num_hidden_layers: 2,
  num_attention_heads: 4,
  num_key_value_heads: 2,
  vocab_size: 128,
  max_position_embeddings: 256,
  rms_norm_eps: 1e-5,
  rope_theta: 10000,
  rope_scaling: {
    rope_type: 'llama3',
    factor: 8,
    low_freq_factor: 1,
    high_freq_factor: 4,
    original_max_position_embeddings: 128,
  },
  hidden_act: 'silu',
  tie_word_embeddings: false,
  bos_token_id: 1,
  eos_token_id: [2, 3],
  head_dim: 16,
};
const BASE_CONFIGS: Record<string, unknown>[] = [
  LLAMA_CONFIG,
  {
    ...LLAMA_CONFIG,
    architectures: ['Qwen2ForCausalLM'],
    model_type: 'qwen2',
    use_sliding_window: true,
    sliding_window: 128,
    rope_scaling: null,
  },
  { ...LLAMA_CONFIG, architectures: ['MistralForCausalLM'], model_type: 'mistral', sliding_window: 4096 },
  {
    ...LLAMA_CONFIG,
    rope_scaling: undefined,
    rope_parameters: { rope_type: 'linear', factor: 2, rope_theta: 500000 },
    quantization_config: { quant_method: 'gptq', bits: 4, group_size: 32, desc_act: false, sym: true },
  },
];

interface ConfigInput {
  config: string;
  generation?: string;
  quantize?: string;
}

const jsonText = (base: unknown): fc.Arbitrary<string> =>
  fc.oneof(
    { weight: 4, arbitrary: mutatedJson(base).map((j) => JSON.stringify(j) ?? '') },
    { weight: 1, arbitrary: mutatedText(JSON.stringify(base)) },
  );

const configInput: fc.Arbitrary<ConfigInput> = fc.record(
  {
    config: fc.constantFrom(...BASE_CONFIGS).chain(jsonText),
    generation: jsonText({ bos_token_id: 1, eos_token_id: 2 }),
    quantize: jsonText({ bits: 4, group_size: 128, desc_act: true }),
  },
  { requiredKeys: ['config'] },
);

export const configTarget: FuzzTarget<ConfigInput> = {
  name: 'config.json',
  input: configInput,
  run: (c) =>
    outcome(async () => {
      const files: Record<string, string> = { 'config.json': c.config };
      if (c.generation !== undefined) files['generation_config.json'] = c.generation;
      if (c.quantize !== undefined) files['quantize_config.json'] = c.quantize;
      const s = await loadModelSpec(boundedDir(files));
      for (const [k, v] of Object.entries(s)) {
        // Token ids may be 0; every size and constant must be positive.
        if (typeof v === 'number')
          check(Number.isFinite(v) && (v > 0 || (k === 'bosTokenId' && v === 0)), `${k} = ${v}`);
      }
      check(s.numHeads % s.numKvHeads === 0 && s.headDim % 2 === 0, 'heads');
      for (const id of s.eosTokenIds) check(Number.isSafeInteger(id) && id >= 0, `eos ${id}`);
      if (s.quantizationConfig) parseQuantConfig(s.quantizationConfig, 'config.json quantization_config');
    }),
};

// ---------------------------------------------------------------- GPTQ / AWQ configs

const QUANT_BASES: Record<string, unknown>[] = [
  {
    quant_method: 'gptq',
    bits: 4,
    group_size: 128,
    desc_act: true,
    sym: true,
    checkpoint_format: 'gptq',
    dynamic: {},
  },
  {
    quant_method: 'awq',
    bits: 4,
    group_size: 64,
    zero_point: true,
    version: 'gemm',
    modules_to_not_convert: ['lm_head'],
  },
  { w_bit: 4, q_group_size: 128, zero_point: true, version: 'GEMM' },
  { bits: 4, group_size: -1, desc_act: false, sym: false, lm_head: false },
];

export const quantConfigTarget: FuzzTarget<unknown> = {
  name: 'GPTQ/AWQ config',
  input: fc.oneof(fc.constantFrom(...QUANT_BASES).chain(mutatedJson), hostileJsonValue),
  run: (obj) =>
    outcome(async () => {
      const q = parseQuantConfig(obj, 'quantization_config');
      check(q.bits === 4, 'bits');
      check(q.groupSize === -1 || [32, 64, 128].includes(q.groupSize), `group size ${q.groupSize}`);
    }),
};

// ---------------------------------------------------------------- tokenizer_config.json + chat templates

interface TokenizerInput {
  config: string;
  jinja?: string;
  messages: ChatMessage[];
  text: string;
}

const HOSTILE_TEMPLATES = [
  '{% for i in range(10**9) %}x{% endfor %}',
  "{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s }}",
  '{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}',
];

const messages: fc.Arbitrary<ChatMessage[]> = fc.array(
  fc.record({
    role: fc.constantFrom('system', 'user', 'assistant'),
    content: fc.string({ maxLength: 24, unit: 'grapheme' }),
  }),
  { maxLength: 4 },
);

export function tokenizerTarget(data: FuzzData): FuzzTarget<TokenizerInput> {
  const converted = convertSentencePiece(data.tokenizerModel, 'tok105.model');
  const tokenizerJson = JSON.stringify(converted.tokenizerJson);
  const template = fc.oneof(
    fc.constantFrom(...data.chatTemplates),
    fc.constantFrom(...data.chatTemplates).chain(mutatedText),
    // Hostile code (src/io/chat-template.ts bounds it): a render must stop, not hang.
    fc.constantFrom(...HOSTILE_TEMPLATES).chain((t) => fc.oneof(fc.constant(t), mutatedText(t))),
  );
  const baseConfig = fc.tuple(template, fc.boolean()).map(([t, list]) => ({
    ...converted.tokenizerConfig,
    add_bos_token: true,
    chat_template: list ? [{ name: 'default', template: t }] : t,
  }));
  const input: fc.Arbitrary<TokenizerInput> = fc.record(
    {
      config: baseConfig.chain(jsonText),
      jinja: template,
      messages,
      text: fc.string({ maxLength: 32, unit: 'grapheme' }),
    },
    { requiredKeys: ['config', 'messages', 'text'] },
  );
  return {
    name: 'tokenizer_config.json + chat template',
    input,
    run: (t) =>
      outcome(async () => {
        const files: Record<string, string> = {
          'tokenizer.json': tokenizerJson,
          'tokenizer_config.json': t.config,
        };
        if (t.jinja !== undefined) files['chat_template.jinja'] = t.jinja;
        const tok = await KilnTokenizer.load(boundedDir(files));
        const ids = tok.encode(t.text);
        for (const id of ids) check(Number.isInteger(id) && id >= 0 && id < tok.vocabSize, `id ${id}`);
        tok.decode(ids);
        if (tok.hasChatTemplate) {
          const chat = tok.encodeChat(t.messages);
          check(
            chat.every((id) => id >= 0 && id < tok.vocabSize),
            'chat ids',
          );
        }
      }),
  };
}

// ---------------------------------------------------------------- SentencePiece tokenizer.model

export function sentencePieceTarget(data: FuzzData): FuzzTarget<Uint8Array> {
  return {
    name: 'tokenizer.model (SentencePiece)',
    input: fc.oneof(
      { weight: 4, arbitrary: mutatedBytes(data.tokenizerModel) },
      fc.uint8Array({ maxLength: 64 }),
    ),
    run: (bytes) =>
      outcome(async () => {
        const c = convertSentencePiece(bytes, 'tokenizer.model');
        KilnTokenizer.fromJson(c.tokenizerJson, c.tokenizerConfig, 'tokenizer.model (converted)');
      }),
  };
}

// ---------------------------------------------------------------- llama2.c checkpoints

/** A valid tiny llama2.c checkpoint (v0 or v1) with deterministic weights. */
export function llama2cFile(version: 0 | 1, shared: boolean): Uint8Array {
  const [dim, hidden, layers, heads, kvHeads, vocab, seq] = [8, 16, 1, 2, 1, 12, 4];
  const head = dim / heads;
  const kvDim = kvHeads * head;
  const perLayer = 2 * dim + dim * dim * 2 + 2 * kvDim * dim + 3 * hidden * dim;
  let floats = vocab * dim + layers * perLayer + dim + (shared ? 0 : vocab * dim);
  if (version === 0) floats += seq * head;
  const offset = version === 0 ? 28 : 256;
  const out = new Uint8Array(offset + 4 * floats);
  const v = new DataView(out.buffer);
  let p = 0;
  if (version === 1) {
    v.setUint32(0, 0x616b3432, true);
    v.setInt32(4, 1, true);
    p = 8;
  }
  [dim, hidden, layers, heads, kvHeads, version === 0 && !shared ? -vocab : vocab, seq].forEach((x, i) =>
    v.setInt32(p + 4 * i, x, true),
  );
  if (version === 1) v.setUint8(36, shared ? 1 : 0);
  for (let i = 0; i < floats; i++) v.setFloat32(offset + 4 * i, Math.sin(i) * 0.1, true);
  return out;
}

export const llama2cTarget: FuzzTarget<Uint8Array> = {
  name: 'llama2.c checkpoint',
  input: fc.oneof(
    fc
      .tuple(fc.constantFrom<0 | 1>(0, 1), fc.boolean())
      .chain(([ver, shared]) => mutatedBytes(llama2cFile(ver, shared))),
    fc.uint8Array({ maxLength: 300 }),
  ),
  run: (bytes) =>
    outcome(async () => {
      const c = await convertLlama2c(bytesSource('model.bin', bytes));
      let total = 0;
      for (const t of c.tensors) {
        const n = t.shape.reduce((a, b) => a * b, 1);
        check(
          t.data.byteLength === n * 4,
          `${t.name} has ${t.data.byteLength} bytes for [${t.shape.join(', ')}]`,
        );
        total += t.data.byteLength;
      }
      check(total <= bytes.length, 'more tensor bytes than the file holds');
    }),
};

/** Every file parser's target (the HTTP target needs a running server: see http.ts). */
export function fileTargets(data: FuzzData): FuzzTarget[] {
  return [
    safetensorsHeaderTarget,
    safetensorsIndexTarget,
    configTarget,
    quantConfigTarget,
    tokenizerTarget(data),
    sentencePieceTarget(data),
    llama2cTarget,
    ggufModelTarget,
  ] as FuzzTarget[];
}
