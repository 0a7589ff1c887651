import { readdirSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseGgufHeader, type GgufValue } from '../../src/io/gguf.js';
import { encodeGguf, gv } from '../../src/io/gguf-writer.js';
import { KilnTokenizer } from '../../src/io/tokenizer.js';
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
    it(`${file}: every fixture string encodes to llama.cpp's ids`, async () => {
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

/**
 * A GGUF vocabulary written from a tokenizer.json the way llama.cpp's converter writes one: every
 * id's token, added special tokens as control and other added tokens as user-defined, the merges
 * as "left right" strings, and the pre-tokenizer's name.
 */
function ggufFromTokenizerJson(folder: string, pre: string): Uint8Array {
  const json = JSON.parse(readFileSync(join(folder, 'tokenizer.json'), 'utf8')) as {
    model: { vocab: Record<string, number>; merges: (string | [string, string])[] };
    added_tokens: { id: number; content: string; special: boolean }[];
  };
  const config = JSON.parse(readFileSync(join(folder, 'tokenizer_config.json'), 'utf8')) as Record<
    string,
    unknown
  >;
  const n =
    [...Object.values(json.model.vocab), ...json.added_tokens.map((t) => t.id)].reduce(
      (a, b) => Math.max(a, b),
      0,
    ) + 1;
  const tokens = new Array<string>(n).fill('');
  const types = new Array<number>(n).fill(1);
  for (const [t, id] of Object.entries(json.model.vocab)) tokens[id] = t;
  for (const t of json.added_tokens) {
    tokens[t.id] = t.content;
    types[t.id] = t.special ? 3 : 4;
  }
  // Ids no entry names (gaps) are llama.cpp's "[PAD<id>]" unused tokens.
  tokens.forEach((t, i) => {
    if (t === '') {
      tokens[i] = `[PAD${i}]`;
      types[i] = 5;
    }
  });
  const token = (f: string) => {
    const v = config[f];
    return typeof v === 'string' ? v : null;
  };
  const idOf = (t: string | null) => (t === null ? undefined : tokens.indexOf(t));
  const metadata: [string, GgufValue][] = [
    ['general.architecture', gv.str('llama')],
    ['tokenizer.ggml.model', gv.str('gpt2')],
    ['tokenizer.ggml.pre', gv.str(pre)],
    ['tokenizer.ggml.tokens', gv.strs(tokens)],
    ['tokenizer.ggml.token_type', gv.i32s(types)],
    [
      'tokenizer.ggml.merges',
      gv.strs(json.model.merges.map((m) => (typeof m === 'string' ? m : m.join(' ')))),
    ],
  ];
  const bos = idOf(token('bos_token'));
  const eos = idOf(token('eos_token'));
  if (bos !== undefined && bos >= 0) metadata.push(['tokenizer.ggml.bos_token_id', gv.u32(bos)]);
  if (eos !== undefined && eos >= 0) metadata.push(['tokenizer.ggml.eos_token_id', gv.u32(eos)]);
  metadata.push(['tokenizer.ggml.add_bos_token', gv.bool(config['add_bos_token'] === true)]);
  return encodeGguf({ metadata, tensors: [] });
}

describe('gpt2-type GGUF vocabularies with other pre-tokenizers', () => {
  const shared = resolve(repoRoot, '..', 'shared', 'tokenizers');
  for (const [folder, pre, fixture] of [
    ['llama3', 'llama-bpe', 'ggml-vocab-llama-bpe.gguf'],
    ['qwen3', 'qwen2', 'ggml-vocab-qwen2.gguf'],
  ] as const) {
    it(`${folder} as a GGUF vocab (pre ${pre}): llama.cpp's ${fixture} fixture ids, and the same ids as its tokenizer.json`, async () => {
      const bytes = ggufFromTokenizerJson(join(shared, folder), pre);
      const src = {
        name: `${folder}.gguf`,
        size: bytes.length,
        read: (o: number, l: number) => Promise.resolve(bytes.slice(o, o + l)),
        close: () => Promise.resolve(),
      };
      const tok = ggufTokenizer((await parseGgufHeader(src)).metadata);
      const hf = await KilnTokenizer.load(openLocalModelDir(join(shared, folder)));
      const texts = readFileSync(join(shared, 'fixtures-llamacpp', `${fixture}.inp`), 'utf8').split(
        '\n__ggml_vocab_test__\n',
      );
      texts.pop();
      const lines = readFileSync(join(shared, 'fixtures-llamacpp', `${fixture}.out`), 'utf8').split('\n');
      expect(texts.length).toBeGreaterThan(40);
      texts.forEach((text, i) => {
        const line = (lines[i] ?? '').trim();
        const ids = line === '' ? [] : line.split(/\s+/).map(Number);
        expect({ text, ids: tok.encode(text, { addSpecialTokens: false }) }).toEqual({ text, ids });
        expect(tok.encode(text)).toEqual(hf.encode(text));
      });
      expect(tok.bosTokenId).toBe(hf.bosTokenId);
    }, 60_000);
  }
});
