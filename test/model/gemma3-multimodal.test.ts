/**
 * Gemma3ForConditionalGeneration checkpoints (the Gemma 3 4B/12B/27B repositories): the text
 * decoder is read through `text_config` (Gemma3TextConfig's defaults filling what transformers
 * left out) and its weights under `language_model.model.*`; the vision tower's config and weights
 * are ignored. A synthetic checkpoint in that layout (the Gemma 3 text case of arch-cases.ts,
 * renamed, with a vision tower beside it) must run exactly as the same weights saved as
 * Gemma3ForCausalLM: logits within the architecture tests' tolerance of the float64 reference and
 * 64 greedy ids equal to it, with no GPU memory spent on the tower.
 */
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, test } from 'vitest';
import { InvalidModelFileError, UnsupportedModelError } from '../../src/errors.js';
import { encodeFromFloat32 } from '../../src/io/dtype.js';
import { openCheckpoint } from '../../src/io/safetensors-checkpoint.js';
import { encodeSafetensors, type TensorToWrite } from '../../src/io/safetensors-writer.js';
import { parseModelConfig } from '../../src/model/config.js';
import { ReferenceModel } from '../../src/model/reference.js';
import { expectedTensors, modelTensors } from '../../src/model/tensors.js';
import { openLocalModelDir } from '../../src/node/fs-model-dir.js';
import { createEngine } from '../../src/node/index.js';
import { ARCH_CASES } from '../helpers/arch-cases.js';
import { writeTestModel } from '../helpers/checkpoints.js';
import { expectClose } from '../helpers/gpu.js';
import { randomF32 } from '../helpers/random.js';

/** architectures.test.ts's bound and its justification (the same weights, the same kernels). */
const LOGIT_ATOL = 1e-4;
const GREEDY_STEPS = 64;

/** google/gemma-3-4b-it's config.json: text_config holds only what differs from the defaults. */
const GEMMA3_4B_CONFIG = {
  architectures: ['Gemma3ForConditionalGeneration'],
  boi_token_index: 255999,
  eoi_token_index: 256000,
  eos_token_id: [1, 106],
  image_token_index: 262144,
  initializer_range: 0.02,
  mm_tokens_per_image: 256,
  model_type: 'gemma3',
  text_config: {
    hidden_size: 2560,
    intermediate_size: 10240,
    model_type: 'gemma3_text',
    num_hidden_layers: 34,
    rope_scaling: { factor: 8.0, rope_type: 'linear' },
    sliding_window: 1024,
  },
  torch_dtype: 'bfloat16',
  transformers_version: '4.50.0.dev0',
  vision_config: {
    hidden_size: 1152,
    image_size: 896,
    intermediate_size: 4304,
    model_type: 'siglip_vision_model',
    num_attention_heads: 16,
    num_hidden_layers: 27,
    patch_size: 14,
    vision_use_head: false,
  },
};

const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

describe('Gemma3ForConditionalGeneration config', () => {
  test('the 4B layout reads as its Gemma 3 text decoder, defaults filled in', () => {
    const s = parseModelConfig(GEMMA3_4B_CONFIG);
    expect(s.architecture).toBe('gemma3_text');
    expect(s.hfArchitecture).toBe('Gemma3ForConditionalGeneration');
    expect(s.tensorPrefix).toBe('language_model.');
    expect([s.vocabSize, s.hiddenSize, s.intermediateSize, s.numLayers]).toEqual([262208, 2560, 10240, 34]);
    expect([s.numHeads, s.numKvHeads, s.headDim]).toEqual([8, 4, 256]);
    expect([s.rmsNormEps, s.ropeTheta, s.localRopeTheta, s.maxPositionEmbeddings]).toEqual([
      1e-6, 1_000_000, 10_000, 131072,
    ]);
    expect(s.ropeScaling).toEqual({ type: 'linear', factor: 8 });
    expect(s.layerWindows).toEqual(Array.from({ length: 34 }, (_, l) => ((l + 1) % 6 === 0 ? 0 : 1024)));
    expect(s.attentionScale).toBeCloseTo(256 ** -0.5, 15);
    expect([s.bosTokenId, s.eosTokenIds, s.tieWordEmbeddings]).toEqual([2, [1, 106], true]);
    expect([s.attnLogitSoftcap, s.finalLogitSoftcap]).toEqual([undefined, undefined]);
    const t = modelTensors(s);
    expect([t.embed, t.finalNorm, t.lmHead]).toEqual([
      'language_model.model.embed_tokens.weight',
      'language_model.model.norm.weight',
      null,
    ]);
    expect(t.layers[0]?.qNorm).toBe('language_model.model.layers.0.self_attn.q_norm.weight');
    expect(t.layers[33]?.qkv.sources.map((x) => x.prefix)).toEqual([
      'language_model.model.layers.33.self_attn.q_proj',
      'language_model.model.layers.33.self_attn.k_proj',
      'language_model.model.layers.33.self_attn.v_proj',
    ]);
    expect([...expectedTensors(s).keys()].every((n) => n.startsWith('language_model.model.'))).toBe(true);
  });

  test('an untied decoder reads its head from language_model.lm_head', () => {
    const s = parseModelConfig({
      ...GEMMA3_4B_CONFIG,
      text_config: { ...GEMMA3_4B_CONFIG.text_config, tie_word_embeddings: false },
    });
    expect(modelTensors(s).lmHead).toBe('language_model.lm_head');
  });

  test('a missing or foreign text_config is refused naming the field', () => {
    const { text_config: _, ...noText } = GEMMA3_4B_CONFIG;
    expect(() => parseModelConfig(noText)).toThrow(InvalidModelFileError);
    expect(() => parseModelConfig(noText)).toThrow(/text_config is missing, expected an object/);
    expect(() =>
      parseModelConfig({ ...GEMMA3_4B_CONFIG, text_config: { model_type: 'llama', hidden_size: 64 } }),
    ).toThrow(/text_config\.model_type is "llama", expected "gemma3_text"/);
  });

  test('other multimodal checkpoints are still refused for their vision tower', () => {
    const llava = {
      ...GEMMA3_4B_CONFIG,
      architectures: ['LlavaForConditionalGeneration'],
      model_type: 'llava',
    };
    expect(() => parseModelConfig(llava)).toThrow(UnsupportedModelError);
    expect(() => parseModelConfig(llava)).toThrow(/vision_config is set/);
  });
});

describe('a Gemma3ForConditionalGeneration checkpoint runs its text decoder', () => {
  test('same logits and greedy ids as the float64 reference of the text-only checkpoint', async () => {
    const gemma3 = ARCH_CASES.find((c) => c.opts.architecture === 'Gemma3ForCausalLM');
    if (!gemma3) throw new Error('arch-cases.ts has no Gemma 3 text case');
    const root = mkdtempSync(join(tmpdir(), 'kiln-gemma3mm-'));
    dirs.push(root);
    const textDir = join(root, 'text');
    const mmDir = join(root, 'multimodal');
    writeTestModel(textDir, gemma3.opts);
    mkdirSync(mmDir);

    // The decoder's config moves under text_config (the ids stay at the top, as in the 4B file);
    // its tensors move under language_model.; a vision tower and projector are added beside them.
    const textConfig = JSON.parse(readFileSync(join(textDir, 'config.json'), 'utf8')) as Record<
      string,
      unknown
    >;
    const { architectures: _a, eos_token_id, bos_token_id, torch_dtype, ...rest } = textConfig;
    const mmConfig = {
      ...GEMMA3_4B_CONFIG,
      eos_token_id,
      bos_token_id,
      torch_dtype,
      text_config: { ...rest, model_type: 'gemma3_text' },
    };
    writeFileSync(join(mmDir, 'config.json'), JSON.stringify(mmConfig, null, 2));
    for (const f of ['tokenizer.json', 'tokenizer_config.json'])
      writeFileSync(join(mmDir, f), readFileSync(join(textDir, f)));
    const src = await openCheckpoint(openLocalModelDir(textDir));
    const tensors: TensorToWrite[] = [];
    try {
      for (const [name, info] of src.tensors) {
        tensors.push({
          name: `language_model.${name}`,
          dtype: info.dtype,
          shape: info.shape,
          data: await src.readTensor(info),
        });
      }
    } finally {
      await src.close();
    }
    // 1 MiB of tower: if it were uploaded the engine's GPU memory would grow by at least that.
    const tower: [string, number[]][] = [
      ['vision_tower.vision_model.embeddings.patch_embedding.weight', [64, 3, 32, 32]],
      ['vision_tower.vision_model.post_layernorm.weight', [64]],
      ['multi_modal_projector.mm_input_projection_weight', [64, 48]],
      ['multi_modal_projector.mm_soft_emb_norm.weight', [64]],
    ];
    tower.forEach(([name, shape], i) => {
      const n = shape.reduce((a, b) => a * b, 1);
      tensors.push({ name, dtype: 'F32', shape, data: encodeFromFloat32('F32', randomF32(n, 900 + i, 0.1)) });
    });
    writeFileSync(join(mmDir, 'model.safetensors'), encodeSafetensors(tensors, { format: 'pt' }));

    const textSpec = parseModelConfig(textConfig);
    const ckpt = await openCheckpoint(openLocalModelDir(textDir));
    let ref: ReferenceModel;
    try {
      ref = await ReferenceModel.load(textSpec, ckpt);
    } finally {
      await ckpt.close();
    }
    const prompt = [1, ...Array.from({ length: 19 }, (_, i) => 3 + ((i * 37 + 7) % 102))];
    const want = ref.forward(prompt);

    const textEngine = await createEngine({ model: textDir, kvCache: 'f32' });
    const textBytes = textEngine.gpuMemoryBytes;
    textEngine.dispose();
    const engine = await createEngine({ model: mmDir, kvCache: 'f32' });
    try {
      expect(engine.spec.hfArchitecture).toBe('Gemma3ForConditionalGeneration');
      expect(engine.gpuMemoryBytes).toBe(textBytes);
      const got = await engine.logits(prompt);
      got.forEach((row, p) => expectClose(row, want[p] as Float64Array, { atol: LOGIT_ATOL }));
      // The reference's greedy ids, compared up to its first near-tie (top-two margin under twice
      // the logit tolerance), which architectures.test.ts requires to be past step 48 here.
      const ids: number[] = [];
      let checked = GREEDY_STEPS;
      const ctx = [...prompt];
      for (let s = 0; s < GREEDY_STEPS; s++) {
        const last = ref.forward(ctx).at(-1) as Float64Array;
        let best = 0;
        for (let j = 1; j < last.length; j++) if ((last[j] as number) > (last[best] as number)) best = j;
        let second = -Infinity;
        for (let j = 0; j < last.length; j++) if (j !== best) second = Math.max(second, last[j] as number);
        if ((last[best] as number) - second < 2 * LOGIT_ATOL && checked === GREEDY_STEPS) checked = s;
        ids.push(best);
        ctx.push(best);
      }
      const r = await engine.generate(prompt, { maxTokens: GREEDY_STEPS, ignoreEos: true }).result();
      expect(checked).toBeGreaterThanOrEqual(48);
      expect(r.tokenIds.slice(0, checked)).toEqual(ids.slice(0, checked));
      expect(new Set(ids).size).toBeGreaterThanOrEqual(6);
    } finally {
      engine.dispose();
    }
  }, 600_000);
});
