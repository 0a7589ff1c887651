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
import { decodeToFloat32 } from '../../src/io/dtype.js';
import { openCheckpoint } from '../../src/io/safetensors-checkpoint.js';
import { ReferenceModel } from '../../src/model/reference.js';
import { expectedTensors, modelTensors, normTensors } from '../../src/model/tensors.js';
import { createEngine, openLocalModelDir, openModelArg } from '../../src/node/index.js';
import { openModelFiles } from '../../src/weights/model-files.js';
import { GGUF_ARCH_CASES } from '../helpers/gguf-arch-cases.js';
import { writeTestModel } from '../helpers/checkpoints.js';
import { writeGgufFromFolder } from '../helpers/gguf.js';
import { expectClose } from '../helpers/gpu.js';

const root = mkdtempSync(join(tmpdir(), 'kiln-gguf-archs-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

let n = 0;
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
