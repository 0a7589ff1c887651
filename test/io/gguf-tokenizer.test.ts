import { readdirSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseGgufHeader } from '../../src/io/gguf.js';
import { ggufTokenizer } from '../../src/io/gguf-tokenizer.js';
import { openLocalModelDir } from '../../src/node/fs-model-dir.js';
import { repoRoot } from '../helpers/shared.js';

const vocabDir = resolve(repoRoot, '..', 'shared', 'gguf-vocab');

/** llama.cpp's fixture pair: the test strings and the ids expected for each (no BOS). */
function fixtures(file: string): { text: string; ids: number[] }[] {
  const texts = readFileSync(join(vocabDir, `${file}.inp`), 'utf8').split('\n__ggml_vocab_test__\n');
  // The file ends with a separator, which leaves one empty piece after it.
  texts.pop();
  const lines = readFileSync(join(vocabDir, `${file}.out`), 'utf8').split('\n');
  return texts.map((text, i) => {
    const line = (lines[i] ?? '').trim();
    return { text, ids: line === '' ? [] : line.split(/\s+/).map(Number) };
  });
}

async function tokenizerOf(file: string) {
  const src = await openLocalModelDir(vocabDir).open(file);
  try {
    return ggufTokenizer((await parseGgufHeader(src)).metadata);
  } finally {
    await src.close();
  }
}

describe("GGUF tokenizers against llama.cpp's vocab fixtures", () => {
  const files = readdirSync(vocabDir).filter((f) => f.endsWith('.gguf'));
  it('has every vocab', () => expect(files.length).toBeGreaterThanOrEqual(3));
  for (const file of files) {
    it(`${file}: every fixture string encodes to llama.cpp's ids and decodes back`, async () => {
      const tok = await tokenizerOf(file);
      const cases = fixtures(file);
      expect(cases.length).toBeGreaterThan(40);
      for (const { text, ids } of cases) {
        expect({ text, ids: tok.encode(text, { addSpecialTokens: false }) }).toEqual({ text, ids });
      }
    });
  }
});

describe('GGUF tokenizer metadata', () => {
  it('BOS from add_bos_token, special ids, the chat template', async () => {
    const spm = await tokenizerOf('ggml-vocab-llama-spm.gguf');
    expect(spm.bosTokenId).toBe(1);
    expect(spm.eosTokenIds).toEqual([2]);
    expect(spm.encode('Hello world')).toEqual([1, ...spm.encode('Hello world', { addSpecialTokens: false })]);
    expect(spm.decode(spm.encode(' Hello, world!'), { skipSpecialTokens: true })).toBe(' Hello, world!');
    expect(spm.hasChatTemplate).toBe(false);
    const gpt2 = await tokenizerOf('ggml-vocab-gpt-2.gguf');
    // GPT-2's vocab asks for no BOS.
    expect(gpt2.encode('Hello world')).toEqual([15496, 995]);
    expect(gpt2.decode([15496, 995])).toBe('Hello world');
    const phi3 = await tokenizerOf('ggml-vocab-phi-3.gguf');
    // <|endoftext|>, then <|end|>: the end of a turn its chat template writes.
    expect(phi3.eosTokenIds).toEqual([32000, 32007]);
    expect(phi3.applyChatTemplate([{ role: 'user', content: 'Hi' }])).toBe(
      '<s><|user|>\nHi<|end|>\n<|assistant|>\n',
    );
    // Control tokens in a rendered conversation are single ids.
    expect(phi3.encodeChat([{ role: 'user', content: 'Hi' }])).toEqual(
      expect.arrayContaining([1, 32010, 32007, 32001]),
    );
  });
});
