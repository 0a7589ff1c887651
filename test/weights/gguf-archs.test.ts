/**
 * GGUF files of Qwen3, Gemma 2, Gemma 3 and Phi-3 written the way llama.cpp's converter lays them
 * out (test/helpers/gguf.ts: Gemma's norms stored as w + 1, Phi-3's fused attn_qkv / ffn_up and
 * LongRoPE factor tensors, Gemma's implied window pattern and attention scale) against the Hugging
 * Face folders they came from: the same ModelSpec and tokenizer, the same (1 + w) norm weights, and
 * on the GPU the same logits bit for bit (both engines run the same kernels on the same f32
 * values), the float64 reference's logits within the forward pass's f32 budget, and the same 64
 * greedy ids.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { InvalidModelFileError, UnsupportedModelError } from '../../src/errors.js';
import { decodeToFloat32 } from '../../src/io/dtype.js';
import {
  GgufMetadata,
  parseGgufHeader,
  type GgufHeader,
  type GgufTensorInfo,
  type GgufValue,
} from '../../src/io/gguf.js';
import { ggufTypeByName } from '../../src/io/gguf-types.js';
import { gv } from '../../src/io/gguf-writer.js';
import { ggufConfigJson, ggufModelSpec } from '../../src/model/gguf-config.js';
import { ggufCheckpoint } from '../../src/weights/gguf-checkpoint.js';
import { openCheckpoint } from '../../src/io/safetensors-checkpoint.js';
import { ReferenceModel } from '../../src/model/reference.js';
import { expectedTensors, modelTensors, normTensors } from '../../src/model/tensors.js';
import { createEngine, openLocalModelDir, openModelArg } from '../../src/node/index.js';
import { openModelFiles } from '../../src/weights/model-files.js';
import { ARCH_CASES } from '../helpers/arch-cases.js';
import { GGUF_ARCH_CASES } from '../helpers/gguf-arch-cases.js';
import { writeTestModel, type TestModelOptions } from '../helpers/checkpoints.js';
import { overlayCheckpoint, writeGgufFromFolder } from '../helpers/gguf.js';
import { expectClose } from '../helpers/gpu.js';

const root = mkdtempSync(join(tmpdir(), 'kiln-gguf-archs-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

let n = 0;

/** The options of an arch-cases.ts case (its real config's keys), by name prefix. */
const optsOf = (prefix: string): TestModelOptions => {
  const c = ARCH_CASES.find((x) => x.name.startsWith(prefix));
  if (!c) throw new Error(prefix);
  return c.opts;
};
const qwenOpts = () => optsOf('Qwen3');
const gemma2Opts = () => optsOf('Gemma 2');
const gemma3Opts = () => optsOf('Gemma 3');
const phi4Opts = () => optsOf('Phi-4-mini');
async function pair(c: (typeof GGUF_ARCH_CASES)[number]) {
  const folder = join(root, `m${n++}`);
  writeTestModel(folder, c.opts);
  return { folder, file: await writeGgufFromFolder(folder) };
}

describe('GGUF architectures (CPU side)', () => {
  it.each(GGUF_ARCH_CASES)('$name: spec, tokenizer and every tensor match the folder', async (c) => {
    const { folder, file } = await pair(c);
    const hf = await openModelFiles(openLocalModelDir(folder));
    const gg = await openModelFiles(await openModelArg(file));
    expect(gg.gguf?.metadata.string('general.architecture')).toBe(c.gguf);
    expect({ ...gg.spec, hfArchitecture: hf.spec.hfArchitecture }).toEqual(hf.spec);
    c.check(gg.spec);
    const [ht, gt] = [await hf.tokenizer(), await gg.tokenizer()];
    for (const text of ['Once upon a time', ' two  spaces', 'x\ny'])
      expect(gt.encode(text)).toEqual(ht.encode(text));
    const norms = normTensors(modelTensors(hf.spec));
    const onePlus = c.gguf.startsWith('gemma');
    const a = await openCheckpoint(openLocalModelDir(folder));
    const b = await gg.openCheckpoint();
    try {
      for (const name of expectedTensors(hf.spec).keys()) {
        const [x, y] = [a.get(name), b.get(name)];
        expect(y.shape).toEqual(x.shape);
        const want = decodeToFloat32(x.dtype, await a.readTensor(x));
        const got = decodeToFloat32(y.dtype, await b.readTensor(y));
        if (onePlus && norms.has(name)) {
          // The file holds fl32(w + 1); read back as w' with fl32(1 + w') equal to it, the f32
          // weight both the loader and transformers multiply by.
          expect(Float32Array.from(got, (v) => 1 + v)).toEqual(Float32Array.from(want, (v) => 1 + v));
        } else {
          expect(got).toEqual(want);
        }
        // Chunked reads give the same bytes.
        const parts: Uint8Array[] = [];
        for await (const { bytes } of b.readTensorChunks(y, 96)) parts.push(bytes);
        expect(Buffer.concat(parts)).toEqual(Buffer.from(await b.readTensor(y)));
      }
    } finally {
      await a.close();
      await b.close();
    }
  });
});

/**
 * The f32-arithmetic budget of test/model/models.test.ts (1e-4, justified there): the GGUF engine
 * runs the forward pass of the folder's engine on the same f32 weights.
 */
const LOGIT_ATOL = 1e-4;
const STEPS = 64;

describe('GGUF architectures on the GPU', () => {
  it.each(GGUF_ARCH_CASES)(
    '$name: the folder logits and 64 greedy ids, the float64 reference logits',
    async (c) => {
      const { folder, file } = await pair(c);
      // Past Phi's LongRoPE switch (16) and the Gemma windows (10, 12).
      const prompt = [1, ...Array.from({ length: 19 }, (_, i) => 3 + ((i * 37 + 7) % 100))];
      const hf = await createEngine({ model: folder, kvCache: 'f32' });
      const gg = await createEngine({ model: file, kvCache: 'f32' });
      try {
        const lg = await gg.logits(prompt);
        expect(lg).toEqual(await hf.logits(prompt));
        const files = await openModelFiles(await openModelArg(file));
        const ckpt = await files.openCheckpoint();
        try {
          const ref = await ReferenceModel.load(files.spec, ckpt);
          ref
            .forward(prompt)
            .forEach((row, i) => expectClose(lg[i] as Float32Array, row, { atol: LOGIT_ATOL }));
        } finally {
          await ckpt.close();
        }
        const opts = { maxTokens: STEPS, temperature: 0, ignoreEos: true };
        const [ih, ig] = [
          (await hf.generate(prompt, opts).result()).tokenIds,
          (await gg.generate(prompt, opts).result()).tokenIds,
        ];
        expect(ih).toHaveLength(STEPS);
        expect(new Set(ih).size).toBeGreaterThan(4);
        expect(ig).toEqual(ih);
      } finally {
        hf.dispose();
        gg.dispose();
      }
    },
    300_000,
  );
});

/** Layer part -> block type; `embed`, `head`: token_embd and output (undefined: the folder's dtype). */
interface BlockMix {
  parts: Record<string, string>;
  embed?: string;
  head?: string;
}

/**
 * Block-quantized files of each architecture through the whole engine (file -> reader -> source ->
 * matmul_gguf / embed_gguf, Gemma's √hidden on a block table, Phi-3's fused blocks) against the
 * float64 reference model over the file's own values: its float tensors as read (Gemma's norms
 * included) and its blocks as they decode. Across the four, every GGUF type Kiln runs appears:
 * F32 (norms, LongRoPE factors), F16 (Qwen3's MLP), BF16 (Gemma 3's embeddings), Q8_0, Q4_0,
 * Q4_1, Q5_0, Q5_1, Q2_K..Q6_K, IQ4_NL, IQ4_XS. The tolerance is the f32 budget of the block
 * forward test (test/weights/gguf-blocks-forward.test.ts, 1e-4): both sides use the same decoded
 * weights up to one f32 rounding each, and matmul_gguf's summation depth is of the float matmul's.
 */
describe('block-quantized GGUF files per architecture', () => {
  // K-quants need K in whole 256-element blocks: hidden 256, intermediate 512, 4 heads of 64.
  const shape = { hidden: 256, intermediate: 512, heads: 4, kvHeads: 2, headDim: 64, layers: 2 };
  const cases: [string, TestModelOptions, BlockMix][] = [
    [
      'Qwen3, tied Q8_0 table, K-quant attention beside an F16 MLP',
      { ...qwenOpts(), ...shape, tie: true, dtype: 'F16', seed: 401 },
      {
        parts: { q_proj: 'Q4_K', k_proj: 'Q5_K', v_proj: 'Q6_K', o_proj: 'Q3_K' },
        embed: 'Q8_0',
      },
    ],
    [
      'Gemma 2, tied Q6_K table scaled by √hidden, legacy quants, soft-caps, window 6',
      {
        ...gemma2Opts(),
        ...shape,
        seed: 402,
        config: { ...gemma2Opts().config, query_pre_attn_scalar: 64, sliding_window: 6 },
      },
      {
        parts: {
          q_proj: 'Q4_0',
          k_proj: 'Q4_1',
          v_proj: 'Q5_0',
          o_proj: 'Q5_1',
          gate_proj: 'Q8_0',
          up_proj: 'Q4_K',
          down_proj: 'Q6_K',
        },
        embed: 'Q6_K',
      },
    ],
    [
      'Gemma 3 (bf16 norms and table beside block layers; 6 layers, window 4)',
      {
        ...gemma3Opts(),
        ...shape,
        layers: 6,
        seed: 403,
        config: {
          ...gemma3Opts().config,
          query_pre_attn_scalar: 64,
          sliding_window: 4,
          sliding_window_pattern: 6,
        },
      },
      {
        parts: {
          q_proj: 'Q5_K',
          k_proj: 'Q4_K',
          v_proj: 'Q8_0',
          o_proj: 'IQ4_XS',
          gate_proj: 'Q2_K',
          up_proj: 'Q3_K',
          down_proj: 'Q5_1',
        },
      },
    ],
    [
      'Phi-3 (fused Q8_0 attn_qkv and Q5_K ffn_up, partial rotary, LongRoPE crossed, Q6_K head, IQ4_NL table)',
      {
        ...phi4Opts(),
        ...shape,
        tie: false,
        dtype: 'F16',
        seed: 404,
        // 48 of 64 dims rotate: 24 factors each, Phi-3.5-like values.
        config: {
          ...phi4Opts().config,
          rope_scaling: {
            type: 'longrope',
            long_factor: Array.from({ length: 24 }, (_, i) => Number((1 + i * 0.9).toFixed(4))),
            short_factor: Array.from({ length: 24 }, (_, i) => Number((1 + i * 0.01).toFixed(4))),
          },
        },
      },
      {
        parts: { qkv_proj: 'Q8_0', o_proj: 'Q4_1', gate_up_proj: 'Q5_K', down_proj: 'Q4_0' },
        embed: 'IQ4_NL',
        head: 'Q6_K',
      },
    ],
  ];
  it.each(cases)(
    '%s: logits equal the float64 reference over the file',
    async (_, o, mix) => {
      const folder = join(root, `q${n++}`);
      writeTestModel(folder, o);
      const decoded = new Map<string, Float32Array>();
      const file = await writeGgufFromFolder(folder, 'blocks.gguf', {
        typeOf: (name) => {
          if (name === 'model.embed_tokens.weight') return mix.embed;
          if (name === 'lm_head.weight') return mix.head;
          const part = Object.keys(mix.parts).find((p) => name.endsWith(`.${p}.weight`));
          return part === undefined ? undefined : mix.parts[part];
        },
        onDecoded: (name, v) => decoded.set(name, v),
      });
      const files = await openModelFiles(await openModelArg(file));
      expect(files.weightSource('none').description).toMatch(/^gguf /);
      // Past Phi's LongRoPE switch (16) and the Gemma windows.
      const prompt = [1, ...Array.from({ length: 19 }, (_, i) => 3 + ((i * 29 + 5) % 100))];
      const engine = await createEngine({ model: file, kvCache: 'f32' });
      let logits: Float32Array[];
      try {
        logits = await engine.logits(prompt);
      } finally {
        engine.dispose();
      }
      const ckpt = await files.openCheckpoint();
      try {
        const ref = await ReferenceModel.load(files.spec, overlayCheckpoint(ckpt, files.spec, decoded));
        ref
          .forward(prompt)
          .forEach((row, i) => expectClose(logits[i] as Float32Array, row, { atol: LOGIT_ATOL }));
      } finally {
        await ckpt.close();
      }
    },
    300_000,
  );
});

/** The header of `file` with metadata keys replaced (undefined: removed) and tensors dropped. */
async function variant(
  file: string,
  meta: Record<string, GgufValue | undefined>,
  dropTensors: string[] = [],
): Promise<{ h: GgufHeader; read: (t: GgufTensorInfo) => Promise<Uint8Array> }> {
  const dir = await openModelArg(file);
  const src = await dir.open((dir as unknown as { ggufFile: string }).ggufFile);
  const h = await parseGgufHeader(src);
  const bytes = new Map<string, Uint8Array>();
  for (const t of h.tensors.values())
    if (t.dims.length === 1) bytes.set(t.name, await src.read(t.fileOffset, t.byteLength));
  await src.close();
  const entries = new Map(h.metadata.entries);
  for (const [k, v] of Object.entries(meta)) {
    if (v === undefined) entries.delete(k);
    else entries.set(k, v);
  }
  const tensors = new Map([...h.tensors].filter(([name]) => !dropTensors.includes(name)));
  return {
    h: { ...h, metadata: new GgufMetadata(h.file, entries), tensors },
    read: (t) => Promise.resolve(bytes.get(t.name) ?? new Uint8Array(0)),
  };
}

describe("GGUF architectures' implied values and refusals", () => {
  const fileOf = async (prefix: string) => {
    const c = GGUF_ARCH_CASES.find((x) => x.name.startsWith(prefix));
    if (!c) throw new Error(prefix);
    return (await pair(c)).file;
  };

  it("Gemma: llama.cpp's defaults and rules where the converter writes no key", async () => {
    const g2 = await fileOf('Gemma 2');
    // Absent soft-caps and window: llama.cpp's (and Gemma2Config's) 50, 30 and 4096.
    let v = await variant(g2, {
      'gemma2.attn_logit_softcapping': undefined,
      'gemma2.final_logit_softcapping': undefined,
      'gemma2.attention.sliding_window': undefined,
    });
    let s = await ggufModelSpec(v.h, v.read);
    expect([s.attnLogitSoftcap, s.finalLogitSoftcap, s.layerWindows]).toEqual([50, 30, [4096, 0]]);
    // The 27B (46 layers) scales queries by hidden / heads (48 / 4 = 12), others by head_dim.
    v = await variant(g2, { 'gemma2.block_count': gv.u32(46) });
    expect(ggufConfigJson(v.h)['query_pre_attn_scalar']).toBe(12);
    const g3 = await fileOf('Gemma 3');
    v = await variant(g3, { 'gemma3.block_count': gv.u32(62) });
    expect(ggufConfigJson(v.h)['query_pre_attn_scalar']).toBe(12);
    // An explicit pattern: a period, or one bool per layer.
    v = await variant(g3, { 'gemma3.attention.sliding_window_pattern': gv.u32(3) });
    expect((await ggufModelSpec(v.h, v.read)).layerWindows).toEqual([10, 10, 0, 10, 10, 0]);
    const bools: GgufValue = {
      type: 'array',
      itemType: 'bool',
      value: [true, false, true, true, false, false],
    };
    v = await variant(g3, { 'gemma3.attention.sliding_window_pattern': bools });
    s = await ggufModelSpec(v.h, v.read);
    expect(s.layerWindows).toEqual([10, 0, 10, 10, 0, 0]);
    expect(s.layerRope).toEqual(['local', 'global', 'local', 'local', 'global', 'global']);
    // No window key (sliding_window_pattern 1 in the folder): every layer global.
    v = await variant(g3, { 'gemma3.attention.sliding_window': undefined });
    expect((await ggufModelSpec(v.h, v.read)).layerWindows).toEqual([0, 0, 0, 0, 0, 0]);
    // The local RoPE base of older converters' files: 10000.
    v = await variant(g3, { 'gemma3.rope.freq_base_swa': gv.f32(20000) });
    expect((await ggufModelSpec(v.h, v.read)).localRopeTheta).toBe(20000);
    const short: GgufValue = { type: 'array', itemType: 'bool', value: [true, false] };
    v = await variant(g3, { 'gemma3.attention.sliding_window_pattern': short });
    await expect(ggufModelSpec(v.h, v.read)).rejects.toThrow(
      /metadata gemma3.attention.sliding_window_pattern has 2 entries, expected one per layer \(6\)/,
    );
    v = await variant(g3, { 'gemma3.attention.sliding_window_pattern': gv.u32(0) });
    await expect(ggufModelSpec(v.h, v.read)).rejects.toThrow(InvalidModelFileError);
  });

  it('Phi-3: LongRoPE needs both factor tensors and the original context; other scalings are refused', async () => {
    const phi = await fileOf('Phi-4-mini');
    let v = await variant(phi, {}, ['rope_factors_short.weight']);
    await expect(ggufModelSpec(v.h, v.read)).rejects.toThrow(
      /tensor rope_factors_short.weight is missing beside rope_factors_long.weight/,
    );
    v = await variant(phi, { 'phi3.rope.scaling.original_context_length': undefined });
    await expect(ggufModelSpec(v.h, v.read)).rejects.toThrow(
      /without metadata phi3.rope.scaling.original_context_length/,
    );
    v = await variant(phi, { 'phi3.rope.scaling.type': gv.str('yarn') });
    await expect(ggufModelSpec(v.h, v.read)).rejects.toThrow(UnsupportedModelError);
    await expect(ggufModelSpec(v.h, v.read)).rejects.toThrow(
      /metadata phi3.rope.scaling.type "yarn" is not supported/,
    );
    // 12 of 16 dims rotate: 6 factors each; 5 rotated dims are refused.
    v = await variant(phi, { 'phi3.rope.dimension_count': gv.u32(5) });
    await expect(ggufModelSpec(v.h, v.read)).rejects.toThrow(/phi3.rope.dimension_count is 5/);
    // An attention factor other than transformers' default is the file's.
    v = await variant(phi, { 'phi3.rope.scaling.attn_factor': gv.f32(1.5) });
    const s = await ggufModelSpec(v.h, v.read);
    expect(s.ropeScaling.type === 'longrope' && s.ropeScaling.attentionFactor).toBe(1.5);
    // Factor tensors in a file of another architecture.
    v = await variant(phi, { 'general.architecture': gv.str('qwen3') });
    await expect(ggufModelSpec(v.h, v.read)).rejects.toThrow(/read for phi3 only, not qwen3/);
  });

  it('partial rotary embeddings are refused outside Phi-3; a block-quantized Gemma norm is refused', async () => {
    const q = await fileOf('Qwen3');
    const v = await variant(q, { 'qwen3.rope.dimension_count': gv.u32(16) });
    expect(() => ggufConfigJson(v.h)).toThrow(/qwen3.rope.dimension_count is 16 but the head size is 32/);
    const g2 = await fileOf('Gemma 2');
    const dir = await openModelArg(g2);
    const files = await openModelFiles(dir);
    const h = files.gguf as GgufHeader;
    const norm = h.tensors.get('blk.0.attn_norm.weight') as GgufTensorInfo;
    const tensors = new Map(h.tensors).set(norm.name, { ...norm, type: ggufTypeByName('Q8_0')! });
    const src = await dir.open((dir as unknown as { ggufFile: string }).ggufFile);
    expect(() => ggufCheckpoint({ ...h, tensors }, src, files.spec)).toThrow(
      /tensor blk.0.attn_norm.weight in .* is Q8_0; a norm weight must be F32, F16 or BF16/,
    );
    await src.close();
  });
});
