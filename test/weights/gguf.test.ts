/**
 * GGUF models against the Hugging Face folders they were written from: the same ModelSpec, the
 * same tokenizer ids, the q/k rows put back in transformers' order byte for byte, and on the GPU
 * the same logits (bit for bit: after un-permuting, the engine runs the same kernels on the same
 * bytes) and the same greedy ids.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { UnsupportedModelError } from '../../src/errors.js';
import { ggufModelDir } from '../../src/io/gguf-model-dir.js';
import { openCheckpoint } from '../../src/io/safetensors-checkpoint.js';
import { expectedTensors } from '../../src/model/tensors.js';
import { createEngine, openLocalModelDir, openModelArg } from '../../src/node/index.js';
import { openModelFiles } from '../../src/weights/model-files.js';
import { writeTestModel, type TestModelOptions } from '../helpers/checkpoints.js';
import { writeGgufFromFolder } from '../helpers/gguf.js';

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

  it('refuses a block-quantized projection by name, before anything is allocated', async () => {
    const { folder } = await pair({});
    const { encodeGguf } = await import('../../src/io/gguf-writer.js');
    const { parseGgufHeader } = await import('../../src/io/gguf.js');
    const { ggufTypeByName } = await import('../../src/io/gguf-types.js');
    const src = await openLocalModelDir(folder).open('model.gguf');
    const h = await parseGgufHeader(src);
    const metadata = [...h.metadata.entries];
    const tensors = [];
    for (const t of h.tensors.values()) {
      const q = t.name === 'blk.0.ffn_down.weight';
      const type = q ? ggufTypeByName('Q8_0')! : t.type;
      const data = q ? new Uint8Array((t.elements / 32) * 34) : await src.read(t.fileOffset, t.byteLength);
      tensors.push({ name: t.name, type, dims: t.dims, data });
    }
    await src.close();
    const { writeFileSync } = await import('node:fs');
    writeFileSync(join(folder, 'q.gguf'), encodeGguf({ metadata, tensors }));
    const files = await openModelFiles(ggufModelDir(openLocalModelDir(folder), 'q.gguf'));
    expect(() => files.weightSource('none')).toThrow(UnsupportedModelError);
    expect(() => files.weightSource('none')).toThrow(
      /q.gguf: block-quantized weights Q8_0 \(1 tensors, e.g. blk.0.ffn_down.weight\)/,
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
