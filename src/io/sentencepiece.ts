/**
 * SentencePiece `.model` files (a protobuf ModelProto) converted to the Hugging Face tokenizer.json +
 * tokenizer_config.json pair, the way transformers' LlamaConverter does it, so that checkpoints that
 * ship only tokenizer.model (llama2.c, early Llama repos) go through the same tokenizer code as
 * everything else. The protobuf is read with @bufbuild/protobuf's wire reader; only the fields the
 * conversion needs are interpreted, the rest are skipped.
 *
 * One algorithm in one file, past 500 lines: the reader takes exactly the fields the conversion
 * consumes, so the two change together.
 */
import { BinaryReader, WireType, base64Encode } from '@bufbuild/protobuf/wire';
import { InvalidModelFileError, UnsupportedModelError } from '../errors.js';
import { describeValue } from './json.js';

/** SentencePiece's piece types (sentencepiece_model.proto, SentencePiece.Type). */
export const PieceType = {
  normal: 1,
  unknown: 2,
  control: 3,
  userDefined: 4,
  unused: 5,
  byte: 6,
} as const;

/** One entry of the model's vocabulary. */
export interface SentencePiecePiece {
  piece: string;
  score: number;
  /** One of {@link PieceType}. */
  type: number;
}

/** The parts of a SentencePiece ModelProto that the conversion uses. */
export interface SentencePieceModel {
  pieces: SentencePiecePiece[];
  trainerSpec: {
    /** 1 UNIGRAM, 2 BPE, 3 WORD, 4 CHAR. */
    modelType: number;
    vocabSize: number | null;
    byteFallback: boolean;
    treatWhitespaceAsSuffix: boolean;
    unkId: number;
    bosId: number;
    eosId: number;
    padId: number;
  };
  normalizerSpec: {
    name: string;
    precompiledCharsmap: Uint8Array;
    addDummyPrefix: boolean;
    removeExtraWhitespaces: boolean;
    escapeWhitespaces: boolean;
  };
}

/** Token ids of the special pieces; null where the model has none (SentencePiece's id -1). */
export interface SentencePieceSpecialIds {
  bos: number | null;
  eos: number | null;
  unk: number | null;
  pad: number | null;
}

/** An entry of tokenizer.json's `added_tokens`. */
export interface AddedTokenJson {
  id: number;
  content: string;
  single_word: boolean;
  lstrip: boolean;
  rstrip: boolean;
  normalized: boolean;
  special: boolean;
}

/** tokenizer.json's `model` for a SentencePiece BPE model. */
export interface BpeModelJson {
  type: 'BPE';
  dropout: null;
  unk_token: string;
  continuing_subword_prefix: null;
  end_of_word_suffix: null;
  fuse_unk: boolean;
  byte_fallback: boolean;
  ignore_merges: boolean;
  vocab: Record<string, number>;
  merges: [string, string][];
}

/** tokenizer.json's `model` for a SentencePiece Unigram model. */
export interface UnigramModelJson {
  type: 'Unigram';
  unk_id: number;
  vocab: [string, number][];
  byte_fallback: boolean;
}

/** The tokenizer.json produced from a SentencePiece model (components are HF's JSON forms). */
export interface SentencePieceTokenizerJson {
  version: '1.0';
  truncation: null;
  padding: null;
  added_tokens: AddedTokenJson[];
  normalizer: Record<string, unknown> | null;
  pre_tokenizer: null;
  post_processor: Record<string, unknown> | null;
  decoder: Record<string, unknown>;
  model: BpeModelJson | UnigramModelJson;
}

/** The tokenizer_config.json produced from a SentencePiece model. */
export interface SentencePieceTokenizerConfig {
  add_bos_token: boolean;
  add_eos_token: boolean;
  bos_token: string | null;
  eos_token: string | null;
  unk_token: string;
  pad_token: string | null;
  tokenizer_class: 'LlamaTokenizer';
  clean_up_tokenization_spaces: false;
  /** The "legacy" Llama normalization (Prepend + Replace), which is what sentencepiece itself does. */
  legacy: true;
  added_tokens_decoder: Record<string, Omit<AddedTokenJson, 'id'>>;
}

/** What {@link convertSentencePiece} returns. */
export interface ConvertedSentencePiece {
  tokenizerJson: SentencePieceTokenizerJson;
  tokenizerConfig: SentencePieceTokenizerConfig;
  specialIds: SentencePieceSpecialIds;
}

const SPACE_SYMBOL = '\u2581';
const MODEL_TYPE_NAMES: Record<number, string> = { 1: 'UNIGRAM', 2: 'BPE', 3: 'WORD', 4: 'CHAR' };

/** Signals a structural problem; turned into an InvalidModelFileError naming the file at the top. */
class ProtoError extends Error {}

function expectWire(actual: WireType, expected: WireType, field: string): void {
  if (actual !== expected)
    throw new ProtoError(`field ${field} has wire type ${actual}, expected ${expected}`);
}

function readFloat(r: BinaryReader, field: string): number {
  // BinaryReader.float() reads through a DataView without its own bounds check on the 4 bytes.
  if (r.pos + 4 > r.len) throw new ProtoError(`field ${field} runs past the end of its message`);
  return r.float();
}

/** Reads one message's fields, skipping unknown ones (protobuf's forward compatibility). */
function readFields(
  bytes: Uint8Array,
  onField: (r: BinaryReader, no: number, wt: WireType) => boolean,
): void {
  const r = new BinaryReader(bytes);
  while (r.pos < r.len) {
    const [no, wt] = r.tag();
    if (no === 0) throw new ProtoError(`field number 0 at byte ${r.pos}`);
    if (!onField(r, no, wt)) r.skip(wt, no);
  }
  if (r.pos !== r.len) throw new ProtoError('a field runs past the end of its message');
}

function parsePiece(bytes: Uint8Array, index: number): SentencePiecePiece {
  const out: SentencePiecePiece = { piece: '', score: 0, type: PieceType.normal };
  let sawPiece = false;
  readFields(bytes, (r, no, wt) => {
    switch (no) {
      case 1:
        expectWire(wt, WireType.LengthDelimited, `pieces[${index}].piece`);
        out.piece = r.string(true);
        sawPiece = true;
        return true;
      case 2:
        expectWire(wt, WireType.Bit32, `pieces[${index}].score`);
        out.score = readFloat(r, `pieces[${index}].score`);
        return true;
      case 3:
        expectWire(wt, WireType.Varint, `pieces[${index}].type`);
        out.type = r.int32();
        return true;
      default:
        return false;
    }
  });
  if (!sawPiece || out.piece === '') throw new ProtoError(`pieces[${index}] has no piece text`);
  return out;
}

function parseTrainerSpec(bytes: Uint8Array): SentencePieceModel['trainerSpec'] {
  // Defaults are the proto2 defaults of sentencepiece_model.proto.
  const t: SentencePieceModel['trainerSpec'] = {
    modelType: 1,
    vocabSize: null,
    byteFallback: false,
    treatWhitespaceAsSuffix: false,
    unkId: 0,
    bosId: 1,
    eosId: 2,
    padId: -1,
  };
  const varints: Record<number, (v: number) => void> = {
    3: (v) => (t.modelType = v),
    4: (v) => (t.vocabSize = v),
    24: (v) => (t.treatWhitespaceAsSuffix = v !== 0),
    35: (v) => (t.byteFallback = v !== 0),
    40: (v) => (t.unkId = v),
    41: (v) => (t.bosId = v),
    42: (v) => (t.eosId = v),
    43: (v) => (t.padId = v),
  };
  readFields(bytes, (r, no, wt) => {
    const set = varints[no];
    if (!set) return false;
    expectWire(wt, WireType.Varint, `trainer_spec field ${no}`);
    set(r.int32());
    return true;
  });
  return t;
}

function parseNormalizerSpec(bytes: Uint8Array | null): SentencePieceModel['normalizerSpec'] {
  const n: SentencePieceModel['normalizerSpec'] = {
    name: '',
    precompiledCharsmap: new Uint8Array(0),
    addDummyPrefix: true,
    removeExtraWhitespaces: true,
    escapeWhitespaces: true,
  };
  if (bytes === null) return n;
  readFields(bytes, (r, no, wt) => {
    switch (no) {
      case 1:
        expectWire(wt, WireType.LengthDelimited, 'normalizer_spec.name');
        n.name = r.string();
        return true;
      case 2:
        expectWire(wt, WireType.LengthDelimited, 'normalizer_spec.precompiled_charsmap');
        n.precompiledCharsmap = r.bytes();
        return true;
      case 3:
      case 4:
      case 5: {
        expectWire(wt, WireType.Varint, `normalizer_spec field ${no}`);
        const v = r.bool();
        if (no === 3) n.addDummyPrefix = v;
        else if (no === 4) n.removeExtraWhitespaces = v;
        else n.escapeWhitespaces = v;
        return true;
      }
      default:
        return false;
    }
  });
  return n;
}

/**
 * Parses a SentencePiece ModelProto. Throws InvalidModelFileError (naming `fileName`) when the bytes
 * are not a well-formed ModelProto: truncated, not protobuf, or without pieces.
 */
export function parseSentencePieceModel(
  modelBytes: Uint8Array,
  fileName = 'tokenizer.model',
): SentencePieceModel {
  // A holder object, because TypeScript does not track assignments made inside the callback.
  const parts: { pieces: Uint8Array[]; trainer: Uint8Array | null; normalizer: Uint8Array | null } = {
    pieces: [],
    trainer: null,
    normalizer: null,
  };
  try {
    readFields(modelBytes, (r, no, wt) => {
      if (no < 1 || no > 3) return false;
      expectWire(wt, WireType.LengthDelimited, ['pieces', 'trainer_spec', 'normalizer_spec'][no - 1] ?? '');
      const b = r.bytes();
      if (no === 1) parts.pieces.push(b);
      else if (no === 2) parts.trainer = b;
      else parts.normalizer = b;
      return true;
    });
    if (parts.pieces.length === 0) throw new ProtoError('it has no pieces');
    if (parts.trainer === null) throw new ProtoError('it has no trainer_spec');
    return {
      pieces: parts.pieces.map((b, i) => parsePiece(b, i)),
      trainerSpec: parseTrainerSpec(parts.trainer),
      normalizerSpec: parseNormalizerSpec(parts.normalizer),
    };
  } catch (e) {
    const why = e instanceof Error ? e.message : String(e);
    throw new InvalidModelFileError(
      `${fileName} is not a valid SentencePiece model (${modelBytes.length} bytes; truncated or not a ModelProto): ${why}`,
      { cause: e },
    );
  }
}

/** A piece id from the trainer spec, or null for -1; out-of-range ids are file errors. */
function specialId(id: number, field: string, n: number, fileName: string): number | null {
  if (id < 0) return null;
  if (id >= n)
    throw new InvalidModelFileError(
      `${fileName}: trainer_spec.${field} is ${id} but the model has ${n} pieces`,
    );
  return id;
}

/**
 * The longest BPE piece, in code points, that {@link convertSentencePiece} accepts. Deriving merges
 * tries every split of a piece and looks both halves up, which costs O(length²) per piece; real
 * vocabularies' longest pieces are tens of characters (sentencepiece's trainer defaults to at most 16),
 * so this bound only stops a hostile file from making the conversion run for hours.
 */
export const MAX_BPE_PIECE_LENGTH = 512;

/**
 * HF's SentencePieceExtractor: every split of a piece into two pieces is a merge, merges ordered by
 * the merged piece's score (highest first; ties keep vocabulary order), the splits of one piece by
 * the ids of their left then right halves. Splits are at code points, as Python's str slicing does.
 */
function bpeMerges(
  pieces: SentencePiecePiece[],
  vocab: Map<string, number>,
  fileName: string,
): [string, string][] {
  const merges: { l: string; r: string; score: number }[] = [];
  pieces.forEach(({ piece, score }, id) => {
    // UTF-16 offsets of the code point boundaries, so each split is one native slice.
    const bounds: number[] = [];
    for (let i = 0; i < piece.length; i += (piece.codePointAt(i) ?? 0) > 0xffff ? 2 : 1) bounds.push(i);
    if (bounds.length > MAX_BPE_PIECE_LENGTH) {
      throw new UnsupportedModelError(
        `${fileName}: piece ${id} (${describeValue(piece)}) is ${bounds.length} characters long; ` +
          `BPE pieces of at most ${MAX_BPE_PIECE_LENGTH} are supported`,
      );
    }
    const local: { l: string; r: string; score: number; li: number; ri: number }[] = [];
    for (let k = 1; k < bounds.length; k++) {
      const l = piece.slice(0, bounds[k]);
      const r = piece.slice(bounds[k]);
      const li = vocab.get(l);
      const ri = vocab.get(r);
      if (li !== undefined && ri !== undefined) local.push({ l, r, score, li, ri });
    }
    local.sort((a, b) => a.li - b.li || a.ri - b.ri);
    merges.push(...local);
  });
  // Array.prototype.sort is stable, like Python's sorted().
  merges.sort((a, b) => b.score - a.score);
  return merges.map((m) => [m.l, m.r]);
}

/**
 * The normalizer sentencepiece applies, in HF's components: the dummy prefix and whitespace escaping
 * as LlamaConverter writes them, plus, where the model asks for remove_extra_whitespaces (Llama does
 * not; small custom models often do), sentencepiece's trimming and collapsing of ASCII spaces.
 */
function normalizerJson(spec: SentencePieceModel['normalizerSpec']): Record<string, unknown> | null {
  const seq: Record<string, unknown>[] = [];
  if (spec.precompiledCharsmap.length > 0) {
    seq.push({ type: 'Precompiled', precompiled_charsmap: base64Encode(spec.precompiledCharsmap) });
  }
  if (spec.removeExtraWhitespaces) {
    // \A and \z rather than ^ and $: Oniguruma's ^/$ are line anchors, sentencepiece trims the text.
    seq.push({ type: 'Replace', pattern: { Regex: '\\A +| +\\z' }, content: '' });
    seq.push({ type: 'Replace', pattern: { Regex: ' {2,}' }, content: ' ' });
  }
  if (spec.addDummyPrefix) seq.push({ type: 'Prepend', prepend: SPACE_SYMBOL });
  if (spec.escapeWhitespaces) seq.push({ type: 'Replace', pattern: { String: ' ' }, content: SPACE_SYMBOL });
  return seq.length === 0 ? null : { type: 'Sequence', normalizers: seq };
}

/**
 * Converts a SentencePiece model (the bytes of tokenizer.model) to the tokenizer.json and
 * tokenizer_config.json that transformers' LlamaTokenizerFast would save for it: a BPE model (merges
 * derived from the vocabulary by score) or a Unigram model, byte fallback as the trainer spec says,
 * the legacy Llama normalizer and decoder, control and unknown pieces as special added tokens, and a
 * post-processor that prepends BOS. No chat template: SentencePiece files are base models.
 *
 * @param fileName used in error messages.
 * @throws InvalidModelFileError for malformed files, UnsupportedModelError for WORD/CHAR models and
 *   whitespace-as-suffix models, which Hugging Face's converter does not handle either.
 */
export function convertSentencePiece(
  modelBytes: Uint8Array,
  fileName = 'tokenizer.model',
): ConvertedSentencePiece {
  return sentencePieceToJson(parseSentencePieceModel(modelBytes, fileName), fileName);
}

/**
 * The conversion of {@link convertSentencePiece} from an already-read model: the same vocabulary
 * can come from a ModelProto or from a GGUF file's `tokenizer.ggml.*` arrays (gguf-tokenizer.ts).
 */
export function sentencePieceToJson(model: SentencePieceModel, fileName: string): ConvertedSentencePiece {
  const { pieces, trainerSpec: ts, normalizerSpec: ns } = model;
  const n = pieces.length;
  if (ts.modelType !== 1 && ts.modelType !== 2) {
    const name = MODEL_TYPE_NAMES[ts.modelType] ?? `unknown (${ts.modelType})`;
    throw new UnsupportedModelError(
      `${fileName}: SentencePiece model_type ${name} is not supported (only BPE and UNIGRAM have Hugging Face equivalents)`,
    );
  }
  if (ts.treatWhitespaceAsSuffix) {
    throw new UnsupportedModelError(`${fileName}: trainer_spec.treat_whitespace_as_suffix is not supported`);
  }

  const vocab = new Map<string, number>();
  pieces.forEach((p, id) => {
    const prev = vocab.get(p.piece);
    if (prev !== undefined) {
      throw new InvalidModelFileError(
        `${fileName}: piece ${JSON.stringify(p.piece)} appears twice (ids ${prev} and ${id})`,
      );
    }
    vocab.set(p.piece, id);
  });

  const unk = specialId(ts.unkId, 'unk_id', n, fileName);
  if (unk === null)
    throw new InvalidModelFileError(
      `${fileName}: trainer_spec.unk_id is ${ts.unkId}; an unknown piece is required`,
    );
  const specialIds: SentencePieceSpecialIds = {
    unk,
    bos: specialId(ts.bosId, 'bos_id', n, fileName),
    eos: specialId(ts.eosId, 'eos_id', n, fileName),
    pad: specialId(ts.padId, 'pad_id', n, fileName),
  };
  const pieceAt = (id: number | null): string | null => (id === null ? null : (pieces[id]?.piece ?? null));
  const unkToken = pieceAt(unk) ?? '<unk>';
  const bosToken = pieceAt(specialIds.bos);
  const eosToken = pieceAt(specialIds.eos);
  const padToken = pieceAt(specialIds.pad);

  // Control pieces are special, user-defined ones are not (HF SpmConverter); the unknown piece is
  // special because LlamaTokenizerFast registers it as unk_token.
  const addedTokens: AddedTokenJson[] = [];
  pieces.forEach((p, id) => {
    const special = p.type === PieceType.control || p.type === PieceType.unknown || id === unk;
    if (!special && p.type !== PieceType.userDefined) return;
    addedTokens.push({
      id,
      content: p.piece,
      single_word: false,
      lstrip: false,
      rstrip: false,
      normalized: false,
      special,
    });
  });

  const modelJson: BpeModelJson | UnigramModelJson =
    ts.modelType === 2
      ? {
          type: 'BPE',
          dropout: null,
          unk_token: unkToken,
          continuing_subword_prefix: null,
          end_of_word_suffix: null,
          fuse_unk: true,
          byte_fallback: ts.byteFallback,
          ignore_merges: false,
          // fromEntries defines own properties, so a piece named "__proto__" stays a vocabulary entry.
          vocab: Object.fromEntries(pieces.map((p, id) => [p.piece, id])),
          merges: bpeMerges(pieces, vocab, fileName),
        }
      : {
          type: 'Unigram',
          unk_id: unk,
          vocab: pieces.map((p) => [p.piece, p.score]),
          byte_fallback: ts.byteFallback,
        };

  const decoders: Record<string, unknown>[] = [
    { type: 'Replace', pattern: { String: SPACE_SYMBOL }, content: ' ' },
    { type: 'ByteFallback' },
    { type: 'Fuse' },
  ];
  // The dummy prefix becomes a leading space on decode; sentencepiece drops it, so does HF's Strip.
  if (ns.addDummyPrefix) decoders.push({ type: 'Strip', content: ' ', start: 1, stop: 0 });

  const postProcessor =
    bosToken === null || specialIds.bos === null
      ? null
      : {
          type: 'TemplateProcessing',
          single: [{ SpecialToken: { id: bosToken, type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
          pair: [
            { SpecialToken: { id: bosToken, type_id: 0 } },
            { Sequence: { id: 'A', type_id: 0 } },
            { SpecialToken: { id: bosToken, type_id: 1 } },
            { Sequence: { id: 'B', type_id: 1 } },
          ],
          special_tokens: { [bosToken]: { id: bosToken, ids: [specialIds.bos], tokens: [bosToken] } },
        };

  const tokenizerJson: SentencePieceTokenizerJson = {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: addedTokens,
    normalizer: normalizerJson(ns),
    pre_tokenizer: null,
    post_processor: postProcessor,
    decoder: { type: 'Sequence', decoders },
    model: modelJson,
  };

  const tokenizerConfig: SentencePieceTokenizerConfig = {
    add_bos_token: postProcessor !== null,
    add_eos_token: false,
    bos_token: bosToken,
    eos_token: eosToken,
    unk_token: unkToken,
    pad_token: padToken,
    tokenizer_class: 'LlamaTokenizer',
    clean_up_tokenization_spaces: false,
    legacy: true,
    added_tokens_decoder: Object.fromEntries(addedTokens.map(({ id, ...rest }) => [String(id), rest])),
  };
  return { tokenizerJson, tokenizerConfig, specialIds };
}
