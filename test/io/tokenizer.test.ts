import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { InvalidModelFileError, InvalidRequestError, UnsupportedModelError } from '../../src/errors.js';
import type { ByteSource, ModelDir } from '../../src/io/byte-source.js';
import { convertSentencePiece } from '../../src/io/sentencepiece.js';
import { IncrementalDecoder, KilnTokenizer, type ChatMessage } from '../../src/io/tokenizer.js';
import { sharedModel } from '../helpers/shared.js';

const llamaModelBytes = new Uint8Array(readFileSync(sharedModel('llama2-tokenizer-32k', 'tokenizer.model')));
const llamaConverted = convertSentencePiece(llamaModelBytes);
const llama = KilnTokenizer.fromJson(llamaConverted.tokenizerJson, llamaConverted.tokenizerConfig);
const tok105Converted = convertSentencePiece(
  new Uint8Array(readFileSync(sharedModel('babyllama-tok105', 'tok105.model'))),
);
const tok105 = KilnTokenizer.fromJson(tok105Converted.tokenizerJson, tok105Converted.tokenizerConfig);

const MIXED =
  ' Leading space. Hello, world!\nThe café was naïve about it.\n\n日本語の文章です。\tTabbed\t\tcolumns   and  multiple   spaces. ' +
  'Emoji: 🦙🔥 done.\nLast line ends with a space ';

/** A model folder held in memory. */
function memoryDir(files: Record<string, string | Uint8Array>): ModelDir {
  const bytesOf = (file: string): Uint8Array => {
    const v = files[file];
    if (v === undefined) throw new InvalidModelFileError(`${file} not found in memory://test`);
    return typeof v === 'string' ? new TextEncoder().encode(v) : v;
  };
  return {
    location: 'memory://test',
    exists: (file) => Promise.resolve(file in files),
    readText: (file) => Promise.resolve(new TextDecoder().decode(bytesOf(file))),
    open: (file): Promise<ByteSource> => {
      const bytes = bytesOf(file);
      return Promise.resolve({
        name: file,
        size: bytes.length,
        read: (offset, length) => Promise.resolve(bytes.slice(offset, offset + length)),
        close: () => Promise.resolve(),
      });
    },
  };
}

/**
 * llama2.c's encode(), as an independent reference: read tokenizer.bin; dummy prefix " ", one token
 * per code point (bytes + 3 when the code point is not in the vocabulary), then repeatedly merge the
 * adjacent pair whose concatenation has the highest score (the leftmost on ties).
 */
function llama2cReference(): (text: string) => number[] {
  const bytes = new Uint8Array(readFileSync(sharedModel('llama2-tokenizer-32k', 'tokenizer.bin')));
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const dec = new TextDecoder('utf-8', { ignoreBOM: true });
  const vocab: string[] = [];
  const scores: number[] = [];
  const lookup = new Map<string, number>();
  let pos = 4;
  for (let i = 0; i < 32000; i++) {
    scores.push(view.getFloat32(pos, true));
    const len = view.getInt32(pos + 4, true);
    const piece = dec.decode(bytes.subarray(pos + 8, pos + 8 + len));
    vocab.push(piece);
    if (!lookup.has(piece)) lookup.set(piece, i);
    pos += 8 + len;
  }
  const enc = new TextEncoder();
  return (text) => {
    const tokens: number[] = [];
    if (text !== '') tokens.push(lookup.get(' ')!);
    for (const ch of text) {
      const id = lookup.get(ch);
      if (id !== undefined) tokens.push(id);
      else for (const b of enc.encode(ch)) tokens.push(b + 3);
    }
    for (;;) {
      let bestScore = -1e10;
      let bestId = -1;
      let bestIdx = -1;
      for (let i = 0; i < tokens.length - 1; i++) {
        const id = lookup.get(vocab[tokens[i]!]! + vocab[tokens[i + 1]!]!);
        if (id !== undefined && scores[id]! > bestScore) {
          bestScore = scores[id]!;
          bestId = id;
          bestIdx = i;
        }
      }
      if (bestIdx === -1) break;
      tokens.splice(bestIdx, 2, bestId);
    }
    return tokens;
  };
}

describe('KilnTokenizer over the converted Llama 2 tokenizer', () => {
  it('round-trips mixed text: accents, CJK, emoji, spaces, tabs, newlines', () => {
    const ids = llama.encode(MIXED);
    expect(ids[0]).toBe(1);
    expect(ids[1]).not.toBe(1);
    // 🦙 is not in the vocabulary: four byte-fallback pieces.
    expect(ids.map((id) => llama.idToToken(id))).toEqual(
      expect.arrayContaining(['<0xF0>', '<0x9F>', '<0xA6>', '<0x99>']),
    );
    expect(llama.decode(ids, { skipSpecialTokens: true })).toBe(MIXED);
    expect(llama.decode(llama.encode(MIXED, { addSpecialTokens: false }))).toBe(MIXED);
    // As HF decodes: the Strip step only removes a space at the very start, so "<s>" keeps its own.
    expect(llama.decode(ids)).toBe('<s> ' + MIXED);
  });

  it("encodes exactly as llama2.c's BPE over tokenizer.bin", () => {
    const reference = llama2cReference();
    const texts = [
      MIXED,
      'Hello world',
      'Once upon a time, there was a little girl named Lily.',
      '  two leading spaces and trailing  ',
      'café naïve façade résumé',
      '日本語の文章',
      '🦙🔥',
      'x = f(a, b) * 3.14159; // comment\n\tindent()',
      'supercalifragilisticexpialidocious antidisestablishmentarianism',
      '',
    ];
    for (const text of texts) {
      expect({ text, ids: llama.encode(text, { addSpecialTokens: false }) }).toEqual({
        text,
        ids: reference(text),
      });
    }
  });

  it('exposes vocabulary and special ids', () => {
    expect(llama.vocabSize).toBe(32000);
    expect(llama.bosTokenId).toBe(1);
    expect(llama.eosTokenIds).toEqual([2]);
    expect(llama.bosToken).toBe('<s>');
    expect(llama.idToToken(13)).toBe('<0x0A>');
    expect(llama.idToToken(15043)).toBe('\u2581Hello');
    expect(llama.tokenToId('</s>')).toBe(2);
    expect(llama.decode([])).toBe('');
    expect(() => llama.decode([1.5])).toThrow(InvalidRequestError);
  });

  it('adds BOS once: post-processor, add_bos_token, or text that already starts with it', () => {
    expect(llama.encode('<s> Hi').filter((id) => id === 1)).toHaveLength(1);
    expect(llama.encode('<s> Hi')[0]).toBe(1);
    // A tokenizer.json without the post-processor relies on add_bos_token.
    const noPost = KilnTokenizer.fromJson(
      { ...llamaConverted.tokenizerJson, post_processor: null },
      llamaConverted.tokenizerConfig,
    );
    expect(noPost.encode('Hi')).toEqual(llama.encode('Hi'));
    expect(noPost.encode('Hi')[0]).toBe(1);
    expect(noPost.encode('Hi', { addSpecialTokens: false })[0]).not.toBe(1);
    const neither = KilnTokenizer.fromJson(
      { ...llamaConverted.tokenizerJson, post_processor: null },
      { ...llamaConverted.tokenizerConfig, add_bos_token: false },
    );
    expect(neither.encode('Hi')[0]).not.toBe(1);
  });
});

describe('KilnTokenizer over tok105 (BabyLlama)', () => {
  it("decodes llama2.c run.c's greedy ids to run.c's text", () => {
    const ref = JSON.parse(
      readFileSync(sharedModel('babyllama-tok105', 'reference_greedy.json'), 'utf8'),
    ) as {
      bos: number;
      greedy_ids_after_bos: number[];
    };
    const text = readFileSync(sharedModel('babyllama-tok105', 'greedy_t0_n256.runc.txt'), 'utf8');
    const ids = [ref.bos, ...ref.greedy_ids_after_bos];
    // run.c ends its output with a newline.
    expect(tok105.decode(ids, { skipSpecialTokens: true }) + '\n').toBe(text);
    const stream = new IncrementalDecoder(tok105, { skipSpecialTokens: true });
    expect(ids.map((id) => stream.push(id)).join('') + stream.flush() + '\n').toBe(text);
  });

  it('round-trips a plain ASCII story sentence', () => {
    const s =
      'One day, Tim and his dog Max went to the park. "Look!" said Tim, and they both ran to the big tree.';
    const ids = tok105.encode(s);
    expect(ids[0]).toBe(1);
    expect(ids).not.toContain(0);
    expect(tok105.decode(ids, { skipSpecialTokens: true })).toBe(s);
    expect(tok105.vocabSize).toBe(105);
  });
});

describe('IncrementalDecoder', () => {
  it('streams the mixed text id by id into exactly the decoded text, never emitting U+FFFD', () => {
    for (const skipSpecialTokens of [false, true]) {
      const ids = [...llama.encode(MIXED), 2];
      const dec = new IncrementalDecoder(llama, { skipSpecialTokens });
      const chunks = ids.map((id) => dec.push(id));
      chunks.push(dec.flush());
      expect(chunks.join('')).toBe(llama.decode(ids, { skipSpecialTokens }));
      for (const c of chunks) expect(c).not.toContain('\uFFFD');
    }
  });

  it('holds back byte-fallback pieces until the character completes', () => {
    const dec = new IncrementalDecoder(llama);
    const ids = llama.encode('a🦙b', { addSpecialTokens: false });
    const tokens = ids.map((id) => llama.idToToken(id));
    const first = tokens.indexOf('<0xF0>');
    expect(tokens.slice(first, first + 4)).toEqual(['<0xF0>', '<0x9F>', '<0xA6>', '<0x99>']);
    const out = ids.map((id) => dec.push(id));
    expect(out.slice(first, first + 3)).toEqual(['', '', '']);
    expect(out[first + 3]).toBe('🦙');
    expect(out.join('') + dec.flush()).toBe('a🦙b');
  });

  it('keeps the spaces between streamed words and after skipped special tokens', () => {
    const ids = [
      ...llama.encode('Hello world'),
      2,
      ...llama.encode('Again here', { addSpecialTokens: false }),
    ];
    const dec = new IncrementalDecoder(llama, { skipSpecialTokens: true });
    const out = ids.map((id) => dec.push(id));
    expect(out.join('') + dec.flush()).toBe('Hello world Again here');
    expect(out).toContain(' world');
  });

  it('flush returns an incomplete trailing character (as U+FFFD) and resets', () => {
    const dec = new IncrementalDecoder(llama);
    const ids = llama.encode('ok 🔥', { addSpecialTokens: false });
    const out = ids.slice(0, -1).map((id) => dec.push(id));
    expect(out.join('')).toBe('ok ');
    expect(dec.flush()).toBe('\uFFFD');
    expect(dec.flush()).toBe('');
    expect(
      llama
        .encode('hi', { addSpecialTokens: false })
        .map((id) => dec.push(id))
        .join(''),
    ).toBe('hi');
  });
});

const LLAMA2_CHAT_TEMPLATE =
  "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}" +
  '{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}' +
  "{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}" +
  "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}" +
  "{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}" +
  "{% else %}{% set content = message['content'] %}{% endif %}" +
  "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}" +
  "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}";

const CHATML_TEMPLATE =
  "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}" +
  "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

describe('chat templates', () => {
  const conversation: ChatMessage[] = [
    { role: 'system', content: 'You are terse.' },
    { role: 'user', content: 'Hi there' },
    { role: 'assistant', content: 'Hello.' },
    { role: 'user', content: 'Name a llama.' },
  ];

  it('renders a Llama-2-chat template and encodes the BOS tokens it writes, and no other', () => {
    const tok = KilnTokenizer.fromJson(llamaConverted.tokenizerJson, {
      ...llamaConverted.tokenizerConfig,
      chat_template: LLAMA2_CHAT_TEMPLATE,
    });
    expect(tok.hasChatTemplate).toBe(true);
    const text = tok.applyChatTemplate(conversation);
    expect(text).toBe(
      '<s>[INST] <<SYS>>\nYou are terse.\n<</SYS>>\n\nHi there [/INST] Hello. </s><s>[INST] Name a llama. [/INST]',
    );
    const ids = tok.encodeChat(conversation);
    expect(ids.slice(0, 2)).toEqual([1, 518]); // "<s>", "▁["
    expect(ids.filter((id) => id === 1)).toHaveLength(2); // one per user turn, as the template writes
    expect(tok.encode(text, { addSpecialTokens: false })).toEqual(ids);
    expect(tok.decode(ids)).toBe(
      '<s> [INST] <<SYS>>\nYou are terse.\n<</SYS>>\n\nHi there [/INST] Hello. </s><s> [INST] Name a llama. [/INST]',
    );
  });

  it('renders ChatML, with and without the generation prompt, from the list-of-templates form', () => {
    const tok = KilnTokenizer.fromJson(llamaConverted.tokenizerJson, {
      ...llamaConverted.tokenizerConfig,
      chat_template: [
        { name: 'default', template: CHATML_TEMPLATE },
        { name: 'tool_use', template: 'tools!' },
      ],
    });
    const msgs: ChatMessage[] = [{ role: 'user', content: 'Hi' }];
    expect(tok.applyChatTemplate(msgs)).toBe('<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n');
    expect(tok.applyChatTemplate(msgs, { addGenerationPrompt: false })).toBe(
      '<|im_start|>user\nHi<|im_end|>\n',
    );
    expect(tok.applyChatTemplate(msgs, { templateName: 'tool_use' })).toBe('tools!');
    expect(() => tok.applyChatTemplate(msgs, { templateName: 'rag' })).toThrow(
      /no template named "rag" \(it has: default, tool_use\)/,
    );
    // As apply_chat_template(tokenize=True): the rendered text is encoded without special tokens, so
    // a template that writes no BOS gets none (this tokenizer's plain encode would add one).
    const ids = tok.encodeChat(msgs);
    expect(ids).not.toContain(1);
    expect(ids).toEqual(tok.encode(tok.applyChatTemplate(msgs), { addSpecialTokens: false }));
    expect(tok.encode(tok.applyChatTemplate(msgs))[0]).toBe(1);
  });

  it('reports a conversation the template rejects, a broken template, and a model without one', () => {
    const tok = KilnTokenizer.fromJson(llamaConverted.tokenizerJson, {
      ...llamaConverted.tokenizerConfig,
      chat_template: LLAMA2_CHAT_TEMPLATE,
    });
    const bad: ChatMessage[] = [
      { role: 'user', content: 'a' },
      { role: 'user', content: 'b' },
    ];
    expect(() => tok.applyChatTemplate(bad)).toThrow(InvalidRequestError);
    expect(() => tok.applyChatTemplate(bad)).toThrow(/roles must alternate/);

    const broken = KilnTokenizer.fromJson(llamaConverted.tokenizerJson, {
      chat_template: '{% for m in messages %}{{ m',
    });
    expect(() => broken.applyChatTemplate([{ role: 'user', content: 'x' }])).toThrow(InvalidModelFileError);

    expect(llama.hasChatTemplate).toBe(false);
    expect(() => llama.applyChatTemplate([{ role: 'user', content: 'x' }])).toThrow(UnsupportedModelError);
    expect(() => llama.applyChatTemplate([{ role: 'user', content: 'x' }])).toThrow(/no chat template/);
  });
});

describe('KilnTokenizer.load', () => {
  const json = JSON.stringify(llamaConverted.tokenizerJson);

  it('loads tokenizer.json + tokenizer_config.json, and chat_template.jinja beside them', async () => {
    const tok = await KilnTokenizer.load(
      memoryDir({
        'tokenizer.json': json,
        'tokenizer_config.json': JSON.stringify({
          ...llamaConverted.tokenizerConfig,
          eos_token: { content: '</s>' },
        }),
        'chat_template.jinja': CHATML_TEMPLATE,
      }),
    );
    expect(tok.encode(MIXED)).toEqual(llama.encode(MIXED));
    expect(tok.eosTokenIds).toEqual([2]);
    expect(tok.applyChatTemplate([{ role: 'user', content: 'Hi' }], { addGenerationPrompt: false })).toBe(
      '<|im_start|>user\nHi<|im_end|>\n',
    );
  });

  it('converts a folder that has only tokenizer.model', async () => {
    const tok = await KilnTokenizer.load(memoryDir({ 'tokenizer.model': llamaModelBytes }));
    expect(tok.encode(MIXED)).toEqual(llama.encode(MIXED));
    expect(tok.bosTokenId).toBe(1);
  });

  it('names the missing or malformed file', async () => {
    await expect(KilnTokenizer.load(memoryDir({ 'tokenizer_config.json': '{}' }))).rejects.toThrow(
      /^tokenizer\.json not found in memory:\/\/test/,
    );
    await expect(KilnTokenizer.load(memoryDir({ 'tokenizer.json': '{"model": ' }))).rejects.toThrow(
      /tokenizer\.json in memory:\/\/test is not valid JSON/,
    );
    await expect(KilnTokenizer.load(memoryDir({ 'tokenizer.json': '{"added_tokens": []}' }))).rejects.toThrow(
      /tokenizer\.json in memory:\/\/test has no "model"/,
    );
    await expect(
      KilnTokenizer.load(
        memoryDir({ 'tokenizer.json': JSON.stringify({ added_tokens: [], model: { type: 'Nope' } }) }),
      ),
    ).rejects.toThrow(
      /tokenizer\.json in memory:\/\/test could not be loaded: Unknown TokenizerModel type: Nope/,
    );
    await expect(
      KilnTokenizer.load(memoryDir({ 'tokenizer.json': json, 'tokenizer_config.json': '{"eos_token": 7}' })),
    ).rejects.toThrow(/tokenizer_config\.json in memory:\/\/test: eos_token must be a string/);
    await expect(
      KilnTokenizer.load(memoryDir({ 'tokenizer.model': new Uint8Array([1, 2, 3]) })),
    ).rejects.toThrow(/^tokenizer\.model in memory:\/\/test is not a valid SentencePiece model/);
  });
});
