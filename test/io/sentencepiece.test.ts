import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BinaryWriter, WireType } from '@bufbuild/protobuf/wire';
import { describe, expect, it } from 'vitest';
import { InvalidModelFileError, UnsupportedModelError } from '../../src/errors.js';
import {
  MAX_BPE_PIECE_LENGTH,
  PieceType,
  convertSentencePiece,
  parseSentencePieceModel,
  type BpeModelJson,
} from '../../src/io/sentencepiece.js';
import { KilnTokenizer } from '../../src/io/tokenizer.js';
import { writeTokenizerFiles } from '../../src/node/tokenizer-files.js';
import { sharedModel } from '../helpers/shared.js';

const llamaModel = new Uint8Array(readFileSync(sharedModel('llama2-tokenizer-32k', 'tokenizer.model')));
const tok105Model = new Uint8Array(readFileSync(sharedModel('babyllama-tok105', 'tok105.model')));

/** llama2.c's tokenizer.bin: int32 max_token_length, then per token float32 score, int32 length, bytes. */
function readLlama2cTokenizer(
  bytes: Uint8Array,
  vocabSize: number,
): { maxLen: number; pieces: string[]; scores: number[] } {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  // ignoreBOM keeps piece 30143 (U+FEFF) instead of dropping it as a byte-order mark.
  const dec = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });
  const maxLen = view.getInt32(0, true);
  let pos = 4;
  const pieces: string[] = [];
  const scores: number[] = [];
  for (let i = 0; i < vocabSize; i++) {
    scores.push(view.getFloat32(pos, true));
    const len = view.getInt32(pos + 4, true);
    pieces.push(dec.decode(bytes.subarray(pos + 8, pos + 8 + len)));
    pos += 8 + len;
  }
  expect(pos).toBe(bytes.length);
  return { maxLen, pieces, scores };
}

type TestPiece = [piece: string, score: number, type: number];

/** A SentencePiece ModelProto written field by field, for model types no shared file has. */
function buildModelProto(
  pieces: TestPiece[],
  trainer: { modelType: number; byteFallback?: boolean },
): Uint8Array {
  const w = new BinaryWriter();
  for (const [piece, score, type] of pieces) {
    w.tag(1, WireType.LengthDelimited).fork();
    w.tag(1, WireType.LengthDelimited).string(piece);
    w.tag(2, WireType.Bit32).float(score);
    w.tag(3, WireType.Varint).int32(type);
    w.join();
  }
  w.tag(2, WireType.LengthDelimited).fork();
  w.tag(3, WireType.Varint).int32(trainer.modelType);
  w.tag(35, WireType.Varint).bool(trainer.byteFallback ?? false);
  w.join();
  w.tag(3, WireType.LengthDelimited).fork();
  w.tag(1, WireType.LengthDelimited).string('identity');
  w.tag(4, WireType.Varint).bool(false);
  w.join();
  return w.finish();
}

const SPECIALS: TestPiece[] = [
  ['<unk>', 0, PieceType.unknown],
  ['<s>', 0, PieceType.control],
  ['</s>', 0, PieceType.control],
];

describe('convertSentencePiece: Llama 2 tokenizer.model', () => {
  const converted = convertSentencePiece(llamaModel);
  const model = converted.tokenizerJson.model as BpeModelJson;
  const proto = parseSentencePieceModel(llamaModel);

  it('reads the ModelProto: BPE, 32000 pieces, byte fallback, 256 byte pieces', () => {
    expect(proto.trainerSpec).toMatchObject({
      modelType: 2,
      vocabSize: 32000,
      byteFallback: true,
      unkId: 0,
      bosId: 1,
      eosId: 2,
      padId: -1,
    });
    expect(proto.normalizerSpec).toMatchObject({
      name: 'identity',
      addDummyPrefix: true,
      removeExtraWhitespaces: false,
    });
    expect(proto.pieces).toHaveLength(32000);
    expect(proto.pieces.filter((p) => p.type === PieceType.byte)).toHaveLength(256);
    expect(proto.pieces[3]).toEqual({ piece: '<0x00>', score: 0, type: PieceType.byte });
    expect(converted.specialIds).toEqual({ bos: 1, eos: 2, unk: 0, pad: null });
  });

  it("has every piece and score of llama2.c's tokenizer.bin (after llama2.c's export transform)", () => {
    const bin = readLlama2cTokenizer(
      new Uint8Array(readFileSync(sharedModel('llama2-tokenizer-32k', 'tokenizer.bin'))),
      32000,
    );
    const vocabById: string[] = [];
    for (const [piece, id] of Object.entries(model.vocab)) vocabById[id] = piece;
    expect(vocabById).toHaveLength(32000);
    let maxBytes = 0;
    for (let id = 0; id < 32000; id++) {
      const piece = vocabById[id] ?? '';
      // llama2.c's exporter: BOS/EOS wrapped in newlines, "▁" written as a space.
      const exported = id === 1 ? '\n<s>\n' : id === 2 ? '\n</s>\n' : piece.replaceAll('\u2581', ' ');
      if (exported !== bin.pieces[id]) expect({ id, piece: exported }).toEqual({ id, piece: bin.pieces[id] });
      const score = proto.pieces[id]?.score;
      if (score !== bin.scores[id]) expect({ id, score }).toEqual({ id, score: bin.scores[id] });
      maxBytes = Math.max(maxBytes, new TextEncoder().encode(exported).length);
    }
    expect(bin.maxLen).toBe(maxBytes);
  });

  it('writes the components of HF LlamaTokenizerFast', () => {
    const j = converted.tokenizerJson;
    expect(j.normalizer).toEqual({
      type: 'Sequence',
      normalizers: [
        { type: 'Prepend', prepend: '\u2581' },
        { type: 'Replace', pattern: { String: ' ' }, content: '\u2581' },
      ],
    });
    expect(j.pre_tokenizer).toBeNull();
    expect(j.decoder).toEqual({
      type: 'Sequence',
      decoders: [
        { type: 'Replace', pattern: { String: '\u2581' }, content: ' ' },
        { type: 'ByteFallback' },
        { type: 'Fuse' },
        { type: 'Strip', content: ' ', start: 1, stop: 0 },
      ],
    });
    expect(j.post_processor).toMatchObject({
      type: 'TemplateProcessing',
      single: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
      special_tokens: { '<s>': { id: '<s>', ids: [1], tokens: ['<s>'] } },
    });
    expect(j.added_tokens.map((t) => [t.id, t.content, t.special, t.normalized])).toEqual([
      [0, '<unk>', true, false],
      [1, '<s>', true, false],
      [2, '</s>', true, false],
    ]);
    expect(model).toMatchObject({ type: 'BPE', unk_token: '<unk>', fuse_unk: true, byte_fallback: true });
    expect(converted.tokenizerConfig).toMatchObject({
      add_bos_token: true,
      add_eos_token: false,
      bos_token: '<s>',
      eos_token: '</s>',
      unk_token: '<unk>',
      tokenizer_class: 'LlamaTokenizer',
      clean_up_tokenization_spaces: false,
    });
    expect(converted.tokenizerConfig).not.toHaveProperty('chat_template');
  });

  it('derives merges from the vocabulary, ordered by the score of the merged piece', () => {
    // HF's Llama-2 tokenizer.json has 61249 merges, the first being "▁ t".
    expect(model.merges).toHaveLength(61249);
    expect(model.merges.slice(0, 3)).toEqual([
      ['\u2581', 't'],
      ['e', 'r'],
      ['i', 'n'],
    ]);
    const score = new Map(proto.pieces.map((p) => [p.piece, p.score]));
    let prev = Infinity;
    const bad: string[] = [];
    for (const [l, r] of model.merges) {
      const s = score.get(l + r) ?? NaN;
      if (!(s <= prev)) bad.push(`${l} ${r}`);
      prev = s;
    }
    expect(bad).toEqual([]);
  });
});

describe('convertSentencePiece: tok105 (BabyLlama)', () => {
  it('is a character-level BPE model without byte fallback: no merges, pieces as in tok105.vocab', () => {
    const proto = parseSentencePieceModel(tok105Model, 'tok105.model');
    expect(proto.trainerSpec).toMatchObject({ modelType: 2, vocabSize: 105, byteFallback: false });
    expect(proto.normalizerSpec).toMatchObject({ addDummyPrefix: true, removeExtraWhitespaces: true });
    const vocabLines = readFileSync(sharedModel('babyllama-tok105', 'tok105.vocab'), 'utf8').split('\n');
    vocabLines.pop();
    expect(vocabLines.map((l) => l.split('\t'))).toEqual(
      proto.pieces.map((p) => [p.piece, Object.is(p.score, -0) ? '-0' : String(p.score)]),
    );

    const { tokenizerJson, specialIds } = convertSentencePiece(tok105Model, 'tok105.model');
    const model = tokenizerJson.model as BpeModelJson;
    expect(model.byte_fallback).toBe(false);
    expect(model.merges).toEqual([]);
    expect(Object.keys(model.vocab)).toHaveLength(105);
    expect(specialIds).toEqual({ bos: 1, eos: 2, unk: 0, pad: null });
  });

  it("applies sentencepiece's remove_extra_whitespaces", () => {
    const { tokenizerJson, tokenizerConfig } = convertSentencePiece(tok105Model);
    const tok = KilnTokenizer.fromJson(tokenizerJson, tokenizerConfig);
    const plain = tok.encode('Once upon a time.');
    expect(tok.encode('  Once   upon a  time.  ')).toEqual(plain);
    // Only ASCII spaces collapse; a newline is an unknown character here, kept as <unk>.
    expect(tok.encode('a\nb', { addSpecialTokens: false })).toEqual([3, 5, 0, 23]);
  });
});

describe('convertSentencePiece: other model types', () => {
  it('converts a Unigram model to an HF Unigram tokenizer that picks the best segmentation', () => {
    const bytes = buildModelProto(
      [
        ...SPECIALS,
        ['\u2581', -1, PieceType.normal],
        ['a', -2, PieceType.normal],
        ['b', -2, PieceType.normal],
        ['ab', -3, PieceType.normal],
        ['\u2581ab', -3.5, PieceType.normal],
        ['<user>', 0, PieceType.userDefined],
      ],
      { modelType: 1 },
    );
    const { tokenizerJson, tokenizerConfig } = convertSentencePiece(bytes);
    expect(tokenizerJson.model).toMatchObject({ type: 'Unigram', unk_id: 0, byte_fallback: false });
    expect(tokenizerJson.added_tokens.map((t) => [t.content, t.special])).toEqual([
      ['<unk>', true],
      ['<s>', true],
      ['</s>', true],
      ['<user>', false],
    ]);
    const tok = KilnTokenizer.fromJson(tokenizerJson, tokenizerConfig);
    // "▁ab" (-3.5) beats "▁"+"ab" (-4) and "▁"+"a"+"b" (-5).
    expect(tok.encode('ab ab')).toEqual([1, 7, 7]);
    expect(tok.decode(tok.encode('ab ab'), { skipSpecialTokens: true })).toBe('ab ab');
  });

  it('rejects WORD and CHAR models and an unknown model type', () => {
    for (const modelType of [3, 4, 9]) {
      const bytes = buildModelProto([...SPECIALS, ['a', -1, PieceType.normal]], { modelType });
      expect(() => convertSentencePiece(bytes, 'x.model')).toThrow(UnsupportedModelError);
      expect(() => convertSentencePiece(bytes, 'x.model')).toThrow(/x\.model: SentencePiece model_type/);
    }
  });

  it('rejects duplicate pieces and special ids past the vocabulary', () => {
    const dup = buildModelProto([...SPECIALS, ['a', -1, PieceType.normal], ['a', -2, PieceType.normal]], {
      modelType: 2,
    });
    expect(() => convertSentencePiece(dup)).toThrow(/piece "a" appears twice \(ids 3 and 4\)/);
    const short = buildModelProto([['<unk>', 0, PieceType.unknown]], { modelType: 2 });
    expect(() => convertSentencePiece(short)).toThrow(/trainer_spec\.bos_id is 1 but the model has 1 pieces/);
  });
});

describe('convertSentencePiece: BPE merges', () => {
  it('splits at code points, never inside a surrogate pair', () => {
    const [n, smile] = [PieceType.normal, '\u{1F600}'];
    const pieces: TestPiece[] = [
      ['a', -1, n],
      [smile, -2, n],
      [smile + 'a', -3, n],
    ];
    const bytes = buildModelProto([...SPECIALS, ...pieces], { modelType: 2 });
    const model = convertSentencePiece(bytes).tokenizerJson.model as BpeModelJson;
    expect(model.merges).toEqual([['\u{1F600}', 'a']]);
  });

  it(`rejects a piece longer than ${MAX_BPE_PIECE_LENGTH} code points, naming the file and piece id`, () => {
    // Astral characters: two UTF-16 units each, one code point.
    const ok = '\u{1F600}'.repeat(MAX_BPE_PIECE_LENGTH);
    const model = (long: string) =>
      buildModelProto([...SPECIALS, ['a', -1, PieceType.normal], [long, -2, PieceType.userDefined]], {
        modelType: 2,
      });
    expect(() => convertSentencePiece(model(ok), 'big.model')).not.toThrow();
    const err = (() => {
      try {
        convertSentencePiece(model(ok + 'a'), 'big.model');
      } catch (e) {
        return e;
      }
    })();
    expect(err).toBeInstanceOf(UnsupportedModelError);
    expect((err as Error).message).toMatch(
      /^big\.model: piece 4 \(".*\.\.\.\) is 513 characters long; BPE pieces of at most 512 are supported$/u,
    );
  });
});

describe('convertSentencePiece: hostile bytes', () => {
  it('names the file and says why for truncated models', () => {
    for (const n of [1, 5, 1000, llamaModel.length >> 1, llamaModel.length - 1]) {
      const cut = llamaModel.subarray(0, n);
      expect(() => convertSentencePiece(cut, 'tokenizer.model')).toThrow(InvalidModelFileError);
      expect(() => convertSentencePiece(cut, 'tokenizer.model')).toThrow(
        new RegExp(
          `^tokenizer\\.model is not a valid SentencePiece model \\(${n} bytes; truncated or not a ModelProto\\)`,
        ),
      );
    }
  });

  it('rejects empty input, text, JSON and random bytes', () => {
    let x = 12345;
    const random = Uint8Array.from({ length: 4096 }, () => {
      x = (x * 1103515245 + 12345) & 0x7fffffff;
      return x >> 16;
    });
    const inputs = [
      new Uint8Array(0),
      new TextEncoder().encode('hello, this is not protobuf'),
      new TextEncoder().encode('{"model":{}}'),
      random,
    ];
    for (const bytes of inputs) {
      expect(() => convertSentencePiece(bytes, 'tok.model')).toThrow(InvalidModelFileError);
      expect(() => convertSentencePiece(bytes, 'tok.model')).toThrow(
        /^tok\.model is not a valid SentencePiece model/,
      );
    }
  });
});

describe('writeTokenizerFiles', () => {
  it('writes tokenizer.json and tokenizer_config.json that load back', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'kiln-tok-'));
    try {
      const converted = convertSentencePiece(tok105Model);
      expect(converted.specialIds).toEqual({ bos: 1, eos: 2, unk: 0, pad: null });
      expect(await writeTokenizerFiles(dir, converted)).toEqual(['tokenizer.json', 'tokenizer_config.json']);
      const json = JSON.parse(await readFile(join(dir, 'tokenizer.json'), 'utf8')) as object;
      const config = JSON.parse(await readFile(join(dir, 'tokenizer_config.json'), 'utf8')) as object;
      const tok = KilnTokenizer.fromJson(json, config);
      expect(tok.decode(tok.encode('Lily saw a cat.'), { skipSpecialTokens: true })).toBe('Lily saw a cat.');
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
