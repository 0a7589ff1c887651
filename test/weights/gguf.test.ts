/**
 * GGUF models against the Hugging Face folders they were written from: the same ModelSpec, the
 * same tokenizer ids, the q/k rows put back in transformers' order byte for byte, and on the GPU
 * the same logits (bit for bit: after un-permuting, the engine runs the same kernels on the same
 * bytes) and the same greedy ids.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { writeFileSync } from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import { parseGgufHeader } from '../../src/io/gguf.js';
import { ggufTypeByName } from '../../src/io/gguf-types.js';
import { encodeGguf } from '../../src/io/gguf-writer.js';
import { ReferenceModel } from '../../src/model/reference.js';
import { ropeInvFreq } from '../../src/kernels/rope.ref.js';
import { expectClose, plainGpu, testGpu } from '../helpers/gpu.js';
import { q4SubgroupsUsable } from '../../src/kernels/matmul-q4.js';
import { UnsupportedModelError } from '../../src/errors.js';
import { ggufModelDir } from '../../src/io/gguf-model-dir.js';
import { openCheckpoint } from '../../src/io/safetensors-checkpoint.js';
import { expectedTensors } from '../../src/model/tensors.js';
import { createEngine, openLocalModelDir, openModelArg } from '../../src/node/index.js';
import { openModelFiles } from '../../src/weights/model-files.js';
import { checkActivations } from '../../src/engine/load.js';
import { checkOptions } from '../../src/engine/options.js';
import { writeTestModel, type TestModelOptions } from '../helpers/checkpoints.js';
import { overlayCheckpoint, writeGgufFromFolder } from '../helpers/gguf.js';

const root = mkdtempSync(join(tmpdir(), 'kiln-gguf-weights-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

let n = 0;
async function pair(o: TestModelOptions) {
  const folder = join(root, `m${n++}`);
  writeTestModel(folder, o);
  const file = await writeGgufFromFolder(folder);
  return { folder, file };
}

describe('GGUF files as models (CPU side)', () => {
  for (const o of [
    { architecture: 'LlamaForCausalLM', kvHeads: 2 },
    { architecture: 'Qwen2ForCausalLM', dtype: 'F16', tie: true },
    { architecture: 'LlamaForCausalLM', dtype: 'BF16', ropeScaling: { rope_type: 'linear', factor: 2 } },
  ] as TestModelOptions[]) {
    it(`${o.architecture} ${o.dtype ?? 'F32'}: spec, tokenizer and every tensor match the folder`, async () => {
      const { folder, file } = await pair(o);
      const hf = await openModelFiles(openLocalModelDir(folder));
      const gg = await openModelFiles(await openModelArg(file));
      expect(gg.gguf).not.toBeNull();
      expect({ ...gg.spec, hfArchitecture: hf.spec.hfArchitecture }).toEqual(hf.spec);
      const [ht, gt] = [await hf.tokenizer(), await gg.tokenizer()];
      for (const text of ['Once upon a time', ' two  spaces', 'x\ny', '']) {
        expect(gt.encode(text)).toEqual(ht.encode(text));
      }
      const a = await openCheckpoint(openLocalModelDir(folder));
      const b = await gg.openCheckpoint();
      try {
        for (const name of expectedTensors(hf.spec).keys()) {
          const [x, y] = [a.get(name), b.get(name)];
          expect({ name, dtype: y.dtype, shape: y.shape }).toEqual({ name, dtype: x.dtype, shape: x.shape });
          expect(await b.readTensor(y)).toEqual(await a.readTensor(x));
          // Chunked reads un-permute whole heads: the same bytes in any chunk size.
          const parts: Uint8Array[] = [];
          for await (const { bytes } of b.readTensorChunks(y, 200)) parts.push(bytes);
          expect(Buffer.concat(parts)).toEqual(Buffer.from(await a.readTensor(x)));
        }
      } finally {
        await a.close();
        await b.close();
      }
    });
  }

  it("Llama 3.1-style RoPE: rope_freqs.weight gives the frequencies of the folder's llama3 rule", async () => {
    const ropeScaling = {
      rope_type: 'llama3',
      factor: 8,
      low_freq_factor: 1,
      high_freq_factor: 4,
      original_max_position_embeddings: 64,
    };
    const { folder, file } = await pair({ ropeScaling, ropeTheta: 500000, headDim: 32, heads: 4 });
    const hf = await openModelFiles(openLocalModelDir(folder));
    const gg = await openModelFiles(await openModelArg(file));
    expect(gg.spec.ropeScaling.type).toBe('factors');
    const want = ropeInvFreq(hf.spec.headDim, hf.spec.ropeTheta, hf.spec.ropeScaling);
    const got = ropeInvFreq(gg.spec.headDim, gg.spec.ropeTheta, gg.spec.ropeScaling);
    // The file's divisors are f32: each frequency within f32 rounding (2^-24 relative) of the rule's.
    got.forEach((f, i) => expect(Math.abs(f / (want[i] as number) - 1)).toBeLessThan(2 ** -23));
    // Low frequencies are divided by the factor, high ones kept: the rule really applied.
    expect(
      (want[want.length - 1] as number) / ropeInvFreq(32, 500000, { type: 'none' })[want.length - 1]!,
    ).toBeCloseTo(1 / 8, 12);
    expect({ ...gg.spec, ropeScaling: hf.spec.ropeScaling, hfArchitecture: hf.spec.hfArchitecture }).toEqual(
      hf.spec,
    );
  });

  it('refuses block types without a kernel, and --quant q4 on a block file, by name', async () => {
    const { folder } = await pair({ hidden: 256, intermediate: 256 });
    const q8 = await writeGgufFromFolder(folder, 'q8.gguf', {
      typeOf: (n) => (n.endsWith('mlp.down_proj.weight') ? 'Q8_0' : undefined),
    });
    const q8Dir = await openModelArg(q8);
    const files = await openModelFiles(q8Dir);
    expect(files.weightSource('none').description).toBe('gguf Q8_0 blocks');
    // Block weights are quantized: their matmuls read f32 activations, so f16 ones are refused.
    expect(files.weightSource('none').quantized).toBe(true);
    expect(() =>
      checkActivations(checkOptions({ model: q8Dir, activations: 'f16' }), files.weightSource('none')),
    ).toThrow(/activations 'f16' applies to float weights; quantized models \(int4, GGUF blocks\) read f32/);
    expect(() => files.weightSource('q4')).toThrow(
      /q8.gguf is already quantized \(Q8_0\); --quant q4 applies to float weights/,
    );
    // IQ2_XXS has no kernel: its bytes are never read, the refusal names it and an example tensor.
    const src = await openLocalModelDir(folder).open('model.gguf');
    const h = await parseGgufHeader(src);
    const tensors = [];
    for (const t of h.tensors.values()) {
      const iq = t.name === 'blk.1.ffn_up.weight';
      const type = iq ? ggufTypeByName('IQ2_XXS')! : t.type;
      const data = iq ? new Uint8Array((t.elements / 256) * 66) : await src.read(t.fileOffset, t.byteLength);
      tensors.push({ name: t.name, type, dims: t.dims, data });
    }
    await src.close();
    writeFileSync(join(folder, 'iq.gguf'), encodeGguf({ metadata: [...h.metadata.entries], tensors }));
    const iq = await openModelFiles(ggufModelDir(openLocalModelDir(folder), 'iq.gguf'));
    expect(() => iq.weightSource('none')).toThrow(UnsupportedModelError);
    expect(() => iq.weightSource('none')).toThrow(
      /iq.gguf: block type IQ2_XXS \(1 tensors, e.g. blk.1.ffn_up.weight\) has no GPU kernel in Kiln/,
    );
  });
});

describe('GGUF files on the GPU', () => {
  const PROMPT = [1, 12, 40, 7, 99, 3, 57];
  for (const o of [
    { architecture: 'LlamaForCausalLM', kvHeads: 2, dtype: 'F32' },
    { architecture: 'LlamaForCausalLM', kvHeads: 4, dtype: 'F16', tie: true },
    { architecture: 'Qwen2ForCausalLM', dtype: 'F16' },
  ] as TestModelOptions[]) {
    it(`${o.architecture} ${o.dtype}: the same logits and greedy ids as the folder`, async () => {
      const { folder, file } = await pair(o);
      const hf = await createEngine({ model: folder });
      const gg = await createEngine({ model: file });
      try {
        const [lh, lg] = [await hf.logits(PROMPT), await gg.logits(PROMPT)];
        expect(lg).toEqual(lh);
        const opts = { maxTokens: 12, temperature: 0, ignoreEos: true };
        const ids = async (e: typeof hf) => (await e.generate('Once upon a time', opts).result()).tokenIds;
        const [ih, ig] = [await ids(hf), await ids(gg)];
        expect(ih.length).toBeGreaterThan(0);
        expect(ig).toEqual(ih);
      } finally {
        hf.dispose();
        gg.dispose();
      }
    }, 120_000);
  }
});

/**
 * Block-quantized GGUF files through the whole engine (file -> reader -> source -> matmul_gguf /
 * embed_gguf) against the float64 reference model over the values the blocks decode to. The
 * tolerance is the f32-arithmetic budget of the block-kernel forward test
 * (test/weights/gguf-blocks-forward.test.ts, 1e-4): both sides use the same decoded weights up to
 * one f32 rounding each, and matmul_gguf's summation depth is of the float matmul's order.
 */
describe('block-quantized GGUF files on the GPU', () => {
  const LOGIT_ATOL = 1e-4;
  const PROMPT = [1, 17, 45, 3, 88, 23, 61, 9];
  // Q4_K_M-like mixes: K-quants for most projections, Q6_K for v and down, Q8_0/Q6_K tables.
  const mix: Record<string, string> = {
    q_proj: 'Q4_K',
    k_proj: 'Q4_K',
    v_proj: 'Q6_K',
    o_proj: 'Q5_K',
    gate_proj: 'Q4_0',
    up_proj: 'Q8_0',
    down_proj: 'Q6_K',
  };
  for (const [label, o, head, embed] of [
    ['Llama (q/k rows permuted in the file), Q6_K head, Q8_0 embeddings', { seed: 61 }, 'Q6_K', 'Q8_0'],
    [
      'Qwen2, tied Q8_0 head that is also the embedding table',
      { architecture: 'Qwen2ForCausalLM', tie: true, seed: 62 },
      'Q8_0',
      'Q8_0',
    ],
    [
      'Llama, F16 head and embeddings beside block projections',
      { seed: 63, dtype: 'F16' },
      undefined,
      undefined,
    ],
  ] as [string, TestModelOptions, string | undefined, string | undefined][]) {
    it(`${label}: logits equal the float64 reference over the decoded weights`, async () => {
      const folder = join(root, `b${n++}`);
      const spec = writeTestModel(folder, {
        hidden: 256,
        intermediate: 512,
        heads: 4,
        kvHeads: 2,
        layers: 2,
        ...o,
      });
      const decoded = new Map<string, Float32Array>();
      const file = await writeGgufFromFolder(folder, 'blocks.gguf', {
        typeOf: (name) => {
          if (name === 'model.embed_tokens.weight') return embed;
          if (name === 'lm_head.weight') return head;
          const role = Object.keys(mix).find((r) => name.endsWith(`.${r}.weight`));
          return role === undefined ? undefined : mix[role];
        },
        onDecoded: (name, v) => decoded.set(name, v),
      });
      // An f32 KV cache: the reference keeps K/V exact, and an f16 cache would round them.
      const engine = await createEngine({ model: file, kvCache: 'f32' });
      let logits: Float32Array[];
      try {
        logits = await engine.logits(PROMPT);
      } finally {
        engine.dispose();
      }
      const ckpt = await openCheckpoint(openLocalModelDir(folder));
      try {
        const ref = await ReferenceModel.load(spec, overlayCheckpoint(ckpt, spec, decoded));
        const want = ref.forward(PROMPT);
        want.forEach((row, i) => expectClose(logits[i] as Float32Array, row, { atol: LOGIT_ATOL }));
      } finally {
        await ckpt.close();
      }
      // Float tensors of the file were never quantized.
      expect(decoded.has('model.layers.0.input_layernorm.weight')).toBe(false);
    }, 240_000);
  }
});

/**
 * The whole engine on a device made without subgroups, where matmul_gguf_vec4 takes its per-lane
 * X fragment (common/gguf_x_direct.wgsl: every lane loads the step's 8 vec4s of X itself) instead
 * of the subgroup broadcast. Two formats keep the compile short on llvmpipe: Q4_K for every
 * projection (a K-quant: per-block head of 6-bit scales and mins, 8 groups) and Q8_0 for the
 * embedding table and the untied LM head (a 32-element block with its f16 d in the d-plane; the
 * head runs matmul_gguf_vec4_q8_0, the table embed_gguf). Tolerance: the 1e-4 f32-arithmetic
 * budget of the block tests above; the per-lane fragment multiplies the same X values in the same
 * order as the broadcast, so that budget holds unchanged. Greedy ids: the reference's, asserted
 * only where every step's top two reference logits are more than 2 x 1e-4 apart, so logits each
 * within 1e-4 of the reference cannot swap them; and the subgroup device's.
 */
describe('a block-quantized GGUF file on a device without subgroups', () => {
  const LOGIT_ATOL = 1e-4;
  const PROMPT = [1, 17, 45, 3, 88, 23, 61, 9];
  const STEPS = 8;

  /** The labels of the shader modules made on `device` while `f` runs. */
  async function modulesMade<T>(device: GPUDevice, f: () => Promise<T>): Promise<[T, Set<string>]> {
    const labels = new Set<string>();
    const make = device.createShaderModule.bind(device);
    device.createShaderModule = (desc: GPUShaderModuleDescriptor) => {
      labels.add(desc.label ?? '');
      return make(desc);
    };
    try {
      return [await f(), labels];
    } finally {
      device.createShaderModule = make;
    }
  }

  it('Q4_K projections, Q8_0 table and head: logits equal the float64 reference, greedy ids the reference and the subgroup device', async () => {
    const folder = join(root, `p${n++}`);
    const spec = writeTestModel(folder, {
      hidden: 256,
      intermediate: 256,
      heads: 4,
      kvHeads: 2,
      layers: 2,
      seed: 64,
    });
    const decoded = new Map<string, Float32Array>();
    const file = await writeGgufFromFolder(folder, 'plain.gguf', {
      typeOf: (name) =>
        name === 'model.embed_tokens.weight' || name === 'lm_head.weight'
          ? 'Q8_0'
          : name.endsWith('_proj.weight')
            ? 'Q4_K'
            : undefined,
      onDecoded: (name, v) => decoded.set(name, v),
    });
    expect(decoded.get('lm_head.weight')).toBeDefined();

    const ckpt = await openCheckpoint(openLocalModelDir(folder));
    let want: Float64Array[];
    const wantIds: number[] = [];
    try {
      const ref = await ReferenceModel.load(spec, overlayCheckpoint(ckpt, spec, decoded));
      want = ref.forward(PROMPT);
      const ctx = [...PROMPT];
      for (let s = 0; s < STEPS; s++) {
        const last = ref.forward(ctx).at(-1) as Float64Array;
        const order = [...last.keys()].sort((a, b) => (last[b] as number) - (last[a] as number));
        const [best, second] = order as [number, number];
        expect((last[best] as number) - (last[second] as number)).toBeGreaterThan(2 * LOGIT_ATOL);
        wantIds.push(best);
        ctx.push(best);
      }
    } finally {
      await ckpt.close();
    }

    const run = async (device: GPUDevice) =>
      modulesMade(device, async () => {
        // An f32 KV cache: the reference keeps K/V exact (the plain device has no f16 anyway).
        const engine = await createEngine({ model: file, kvCache: 'f32', device });
        try {
          const logits = await engine.logits(PROMPT);
          const opts = { maxTokens: STEPS, temperature: 0, ignoreEos: true };
          const ids = (await engine.generate(PROMPT, opts).result()).tokenIds;
          return { logits, ids };
        } finally {
          engine.dispose();
        }
      });

    const plain = await plainGpu();
    expect(plain.device.features.has('subgroups')).toBe(false);
    const [p, plainModules] = await run(plain.device);
    const gguf = [...plainModules].filter((l) => l.startsWith('matmul_gguf_vec4_'));
    // Both formats' matmuls ran, every one on the per-lane path.
    expect(gguf.some((l) => l.startsWith('matmul_gguf_vec4_q4_k_'))).toBe(true);
    expect(gguf.some((l) => l.startsWith('matmul_gguf_vec4_q8_0_'))).toBe(true);
    expect(gguf.filter((l) => l.includes('_sg'))).toEqual([]);
    want.forEach((row, i) => expectClose(p.logits[i] as Float32Array, row, { atol: LOGIT_ATOL }));
    expect(p.ids).toEqual(wantIds);

    // The same file on the test device (subgroups where the adapter has them).
    const sub = await testGpu();
    const [s, subModules] = await run(sub.device);
    if (q4SubgroupsUsable(sub))
      expect([...subModules].some((l) => l.startsWith('matmul_gguf_vec4_q4_k_') && l.includes('_sg'))).toBe(
        true,
      );
    want.forEach((row, i) => expectClose(s.logits[i] as Float32Array, row, { atol: LOGIT_ATOL }));
    expect(s.ids).toEqual(p.ids);
  }, 600_000);
});
