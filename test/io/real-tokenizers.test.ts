/**
 * The real tokenizers of Llama 3, Qwen3, Gemma 3 and Mistral (../shared/tokenizers, never copied
 * here): llama.cpp's expected ids, the chat templates' own output for a system + multi-turn
 * conversation, end-of-turn stop ids, Qwen3's thinking switch and Gemma's system folding.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { KilnTokenizer, type ChatMessage } from '../../src/io/tokenizer.js';
import { openLocalModelDir } from '../../src/node/fs-model-dir.js';
import { repoRoot } from '../helpers/shared.js';

function sharedTokenizers(...parts: string[]): string {
  const p = join(repoRoot, '..', 'shared', 'tokenizers', ...parts);
  if (!existsSync(p)) throw new Error(`missing ${p}: the shared/ folder must sit beside the project`);
  return p;
}

const loaded = new Map<string, Promise<KilnTokenizer>>();
function tokenizer(name: 'llama3' | 'qwen3' | 'gemma3' | 'mistral-v0.1'): Promise<KilnTokenizer> {
  let t = loaded.get(name);
  if (!t) {
    t = KilnTokenizer.load(openLocalModelDir(sharedTokenizers(name)));
    loaded.set(name, t);
  }
  return t;
}

/** llama.cpp's fixture pair: the test strings and the ids expected for each (no BOS). */
function fixtures(name: string): { text: string; ids: number[] }[] {
  const dir = sharedTokenizers('fixtures-llamacpp');
  const texts = readFileSync(join(dir, `${name}.inp`), 'utf8').split('\n__ggml_vocab_test__\n');
  texts.pop(); // the empty piece after the last separator
  const lines = readFileSync(join(dir, `${name}.out`), 'utf8').split('\n');
  return texts.map((text, i) => {
    const line = (lines[i] ?? '').trim();
    return { text, ids: line === '' ? [] : line.split(/\s+/).map(Number) };
  });
}

const conversation: ChatMessage[] = [
  { role: 'system', content: 'You are terse.' },
  { role: 'user', content: 'Hi there' },
  { role: 'assistant', content: 'Hello!' },
  { role: 'user', content: 'What is 2+2?' },
];

describe("real tokenizers encode llama.cpp's fixtures to its ids", () => {
  for (const [name, fixture] of [
    ['llama3', 'ggml-vocab-llama-bpe.gguf'],
    ['qwen3', 'ggml-vocab-qwen2.gguf'],
  ] as const) {
    it(`${name} (${fixture})`, async () => {
      const tok = await tokenizer(name);
      const cases = fixtures(fixture);
      expect(cases.length).toBeGreaterThan(40);
      for (const { text, ids } of cases) {
        expect({ text, ids: tok.encode(text, { addSpecialTokens: false }) }).toEqual({ text, ids });
        // Llama 3's tokenizer_config.json asks for clean_up_tokenization_spaces (" ?" -> "?" on
        // decode, as transformers does), so only Qwen's decode is the exact inverse.
        if (name === 'qwen3') expect(tok.decode(ids)).toBe(text);
      }
    });
  }

  it('mistral-v0.1: the ids of mistral-tokenizer-js (BOS, the U+2581 prefix, newlines as <0x0A>)', async () => {
    const tok = await tokenizer('mistral-v0.1');
    expect(tok.encode('grabbed')).toEqual([1, 13300]);
    expect(tok.encode(' grabbed')).toEqual([1, 28705, 13300]);
    expect(tok.encode('ax\n####\nboo')).toEqual([1, 6056, 13, 2000, 13, 1798, 28709]);
    expect(tok.hasChatTemplate).toBe(false);
    expect(tok.eosTokenIds).toEqual([2]);
  });
});

describe('chat templates of the real models: system + multi-turn, stop ids', () => {
  it('Llama 3 Instruct: header blocks, BOS once, <|eot_id|> a stop id beside <|end_of_text|>', async () => {
    const tok = await tokenizer('llama3');
    // The template trims each message and ends every turn with <|eot_id|>.
    expect(tok.applyChatTemplate(conversation)).toBe(
      '<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>' +
        '<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>' +
        '<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>' +
        '<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>' +
        '<|start_header_id|>assistant<|end_header_id|>\n\n',
    );
    const ids = tok.encodeChat(conversation);
    expect(ids.filter((i) => i === 128000)).toEqual([128000]);
    expect(ids.slice(0, 2)).toEqual([128000, 128006]);
    // tokenizer_config.json names <|end_of_text|> (128001); the turn ends with <|eot_id|> (128009).
    expect(tok.eosTokenIds).toEqual([128001, 128009]);
  });

  it('Qwen3: ChatML, thinking on by default, enable_thinking false writes the empty think block', async () => {
    const tok = await tokenizer('qwen3');
    const body =
      '<|im_start|>system\nYou are terse.<|im_end|>\n' +
      '<|im_start|>user\nHi there<|im_end|>\n' +
      '<|im_start|>assistant\nHello!<|im_end|>\n' +
      '<|im_start|>user\nWhat is 2+2?<|im_end|>\n' +
      '<|im_start|>assistant\n';
    expect(tok.applyChatTemplate(conversation)).toBe(body);
    expect(tok.applyChatTemplate(conversation, { templateKwargs: { enable_thinking: true } })).toBe(body);
    expect(tok.applyChatTemplate(conversation, { templateKwargs: { enable_thinking: false } })).toBe(
      body + '<think>\n\n</think>\n\n',
    );
    // The template drops the reasoning of turns before the last user query.
    const withThoughts = conversation.map((m) =>
      m.role === 'assistant' ? { ...m, content: '<think>\nsay hello\n</think>\n\nHello!' } : m,
    );
    expect(tok.applyChatTemplate(withThoughts)).toBe(body);
    expect(tok.eosTokenIds).toEqual([tok.tokenToId('<|im_end|>')]);
    expect(tok.tokenToId('<|im_end|>')).toBe(151645);
    const ids = tok.encodeChat(conversation, { templateKwargs: { enable_thinking: false } });
    expect(ids[0]).toBe(151644); // <|im_start|>, no BOS
    expect(ids).toContain(151645);
  });

  it('Gemma 3: the system prompt folds into the first user turn; <end_of_turn> ends generation', async () => {
    const tok = await tokenizer('gemma3');
    // As Google's Gemma docs show it: system text, a blank line, then the first user message.
    expect(tok.applyChatTemplate(conversation)).toBe(
      '<bos><start_of_turn>user\nYou are terse.\n\nHi there<end_of_turn>\n' +
        '<start_of_turn>model\nHello!<end_of_turn>\n' +
        '<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n' +
        '<start_of_turn>model\n',
    );
    const ids = tok.encodeChat(conversation);
    // <bos> 2, <start_of_turn> 105, <end_of_turn> 106: one id each, BOS once.
    expect(ids.slice(0, 2)).toEqual([2, 105]);
    expect(ids.filter((i) => i === 2)).toEqual([2]);
    expect(ids.filter((i) => i === 106)).toHaveLength(3);
    expect(tok.eosTokenIds).toEqual([106]);
    // Roles that do not alternate are the template's own error.
    expect(() =>
      tok.applyChatTemplate([
        { role: 'user', content: 'a' },
        { role: 'user', content: 'b' },
      ]),
    ).toThrow(/rejected the conversation: .*alternate/);
    expect(tok.decode(tok.encode('Héllo, wörld! 你好 🙂'), { skipSpecialTokens: true })).toBe(
      'Héllo, wörld! 你好 🙂',
    );
  });

  it('template kwargs cannot replace the variables Kiln sets', async () => {
    const tok = await tokenizer('qwen3');
    expect(() => tok.applyChatTemplate(conversation, { templateKwargs: { messages: [] } })).toThrow(
      /"messages" is set by Kiln itself/,
    );
    expect(() =>
      tok.applyChatTemplate(conversation, { templateKwargs: { add_generation_prompt: false } }),
    ).toThrow(/"add_generation_prompt"/);
  });
});
