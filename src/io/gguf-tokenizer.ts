/**
 * The tokenizer stored in a GGUF file's `tokenizer.ggml.*` metadata, turned into the tokenizer.json
 * + tokenizer_config.json pair that Hugging Face would ship for the same vocabulary, so GGUF models
 * tokenize through the same KilnTokenizer (@huggingface/tokenizers) as model folders:
 * - `llama`: a SentencePiece vocabulary (pieces, scores, piece types): converted exactly as a
 *   tokenizer.model is (sentencepiece.ts), BPE merges derived from the scores, byte fallback;
 * - `gpt2`: byte-level BPE with its merge list, split first by the pre-tokenizer that
 *   `tokenizer.ggml.pre` names (the regexes llama.cpp and the models' tokenizer.json files use).
 * Special ids, add_bos_token and the chat template come from the same metadata.
 */
import { InvalidModelFileError, UnsupportedModelError } from '../errors.js';
import type { ModelDir } from './byte-source.js';
import type { GgufMetadata } from './gguf.js';
import { openGguf } from './gguf-split.js';
import { isGgufModelDir } from './gguf-model-dir.js';
import {
  PieceType,
  sentencePieceToJson,
  type AddedTokenJson,
  type SentencePieceModel,
} from './sentencepiece.js';
import { KilnTokenizer } from './tokenizer.js';

/** GGUF's token types (llama.cpp's llama_token_type), which are SentencePiece's numbering. */
export const GGUF_TOKEN_TYPE = PieceType;

const LLAMA3_REGEX =
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const QWEN2_REGEX =
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const TEKKEN_REGEX =
  '[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]*[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]+|[^\\r\\n\\p{L}\\p{N}]?[\\p{Lu}\\p{Lt}\\p{Lm}\\p{Lo}\\p{M}]+[\\p{Ll}\\p{Lm}\\p{Lo}\\p{M}]*|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+';

const byteLevel = (useRegex: boolean) => ({
  type: 'ByteLevel',
  add_prefix_space: false,
  trim_offsets: false,
  use_regex: useRegex,
});
const split = (regex: string) => ({
  type: 'Sequence',
  pretokenizers: [
    { type: 'Split', pattern: { Regex: regex }, behavior: 'Isolated', invert: false },
    byteLevel(false),
  ],
});

interface BpePre {
  preTokenizer: Record<string, unknown>;
  normalizer: Record<string, unknown> | null;
  /** Words that are whole tokens skip the merges (Llama 3's tokenizer.json sets ignore_merges). */
  ignoreMerges: boolean;
}

/**
 * The byte-level BPE pre-tokenizers, by the name llama.cpp's converter stores in
 * `tokenizer.ggml.pre` (it names the regex, not the model: several models share one).
 */
const BPE_PRE: Readonly<Record<string, BpePre>> = {
  // ByteLevel's own regex is GPT-2's.
  default: { preTokenizer: byteLevel(true), normalizer: null, ignoreMerges: false },
  'gpt-2': { preTokenizer: byteLevel(true), normalizer: null, ignoreMerges: false },
  'llama-bpe': { preTokenizer: split(LLAMA3_REGEX), normalizer: null, ignoreMerges: true },
  llama3: { preTokenizer: split(LLAMA3_REGEX), normalizer: null, ignoreMerges: true },
  qwen2: { preTokenizer: split(QWEN2_REGEX), normalizer: { type: 'NFC' }, ignoreMerges: false },
  smollm: {
    preTokenizer: {
      type: 'Sequence',
      pretokenizers: [{ type: 'Digits', individual_digits: true }, byteLevel(true)],
    },
    normalizer: null,
    ignoreMerges: false,
  },
  tekken: { preTokenizer: split(TEKKEN_REGEX), normalizer: null, ignoreMerges: true },
};

/** What the GGUF tokenizer converts to: the two files a Hugging Face folder would hold. */
export interface GgufTokenizerFiles {
  tokenizerJson: Record<string, unknown>;
  tokenizerConfig: Record<string, unknown>;
}

function fail(file: string, what: string): never {
  throw new InvalidModelFileError(`${file}: ${what}`);
}

/** A special id from the metadata, checked against the vocabulary; undefined when absent. */
function specialId(meta: GgufMetadata, key: string, n: number): number | undefined {
  const id = meta.optionalUint(`tokenizer.ggml.${key}`, 2 ** 32 - 1);
  // llama.cpp writes -1 as u32 for "none" in some files; ids past the vocabulary mean none too
  // only for that value.
  if (id === undefined || id === 2 ** 32 - 1) return undefined;
  if (id >= n) fail(meta.file, `metadata tokenizer.ggml.${key} is ${id} but the vocabulary has ${n} tokens`);
  return id;
}

/**
 * Converts the tokenizer of a GGUF file (its metadata) to tokenizer.json + tokenizer_config.json.
 * @throws InvalidModelFileError when the arrays are missing or inconsistent, UnsupportedModelError
 *   for tokenizer models or pre-tokenizers Kiln does not implement.
 */
export function ggufTokenizerFiles(meta: GgufMetadata): GgufTokenizerFiles {
  const file = meta.file;
  const model = meta.optionalString('tokenizer.ggml.model');
  if (model === undefined) {
    fail(file, 'has no tokenizer (metadata tokenizer.ggml.model is missing)');
  }
  const tokens = meta.optionalStringArray('tokenizer.ggml.tokens');
  if (tokens === undefined || tokens.length === 0) {
    fail(file, 'metadata tokenizer.ggml.tokens is missing or empty');
  }
  const n = tokens.length;
  const types = meta.optionalNumberArray('tokenizer.ggml.token_type');
  if (types !== undefined && types.length !== n) {
    fail(file, `metadata tokenizer.ggml.token_type has ${types.length} entries for ${n} tokens`);
  }
  const typeOf = (i: number): number => types?.[i] ?? GGUF_TOKEN_TYPE.normal;
  const ids = {
    bos: specialId(meta, 'bos_token_id', n),
    eos: specialId(meta, 'eos_token_id', n),
    unk: specialId(meta, 'unknown_token_id', n),
    pad: specialId(meta, 'padding_token_id', n),
  };
  const chatTemplate = meta.optionalString('tokenizer.chat_template');
  const tokenAt = (id: number | undefined): string | null => (id === undefined ? null : (tokens[id] ?? null));

  if (model === 'llama') {
    const scores = meta.optionalNumberArray('tokenizer.ggml.scores');
    if (scores !== undefined && scores.length !== n) {
      fail(file, `metadata tokenizer.ggml.scores has ${scores.length} entries for ${n} tokens`);
    }
    const pieces = tokens.map((piece, i) => ({ piece, score: scores?.[i] ?? 0, type: typeOf(i) }));
    const unk = ids.unk ?? pieces.findIndex((p) => p.type === GGUF_TOKEN_TYPE.unknown);
    const sp: SentencePieceModel = {
      pieces,
      trainerSpec: {
        // llama.cpp's SPM tokenizer merges by score, which is SentencePiece's BPE.
        modelType: 2,
        vocabSize: n,
        byteFallback: pieces.some((p) => p.type === GGUF_TOKEN_TYPE.byte),
        treatWhitespaceAsSuffix: false,
        unkId: unk < 0 ? 0 : unk,
        bosId: ids.bos ?? -1,
        eosId: ids.eos ?? -1,
        padId: ids.pad ?? -1,
      },
      normalizerSpec: {
        name: 'gguf',
        precompiledCharsmap: new Uint8Array(0),
        addDummyPrefix: meta.optionalBool('tokenizer.ggml.add_space_prefix') ?? true,
        removeExtraWhitespaces: meta.optionalBool('tokenizer.ggml.remove_extra_whitespaces') ?? false,
        escapeWhitespaces: true,
      },
    };
    const { tokenizerJson, tokenizerConfig } = sentencePieceToJson(sp, `${file} (tokenizer.ggml.*)`);
    const addBos = meta.optionalBool('tokenizer.ggml.add_bos_token') ?? true;
    return {
      // BOS is KilnTokenizer's to add, from add_bos_token, so the post-processor is dropped.
      tokenizerJson: { ...tokenizerJson, post_processor: null },
      tokenizerConfig: {
        ...tokenizerConfig,
        add_bos_token: addBos && ids.bos !== undefined,
        ...(chatTemplate === undefined ? {} : { chat_template: chatTemplate }),
      },
    };
  }

  if (model === 'gpt2') {
    const preName = meta.optionalString('tokenizer.ggml.pre') ?? 'default';
    const pre = Object.hasOwn(BPE_PRE, preName) ? BPE_PRE[preName] : undefined;
    if (pre === undefined) {
      throw new UnsupportedModelError(
        `${file}: tokenizer.ggml.pre ${JSON.stringify(preName)} is not supported (supported: ${Object.keys(BPE_PRE).join(', ')})`,
      );
    }
    const merges = meta.optionalStringArray('tokenizer.ggml.merges');
    if (merges === undefined)
      fail(file, 'metadata tokenizer.ggml.merges is missing (a gpt2 tokenizer needs it)');
    const pairs = merges.map((m, i) => {
      // Byte-level tokens never hold a space (it is "Ġ"), so the one space separates the halves.
      const sp = m.indexOf(' ');
      if (sp <= 0 || sp === m.length - 1 || m.indexOf(' ', sp + 1) >= 0) {
        fail(
          file,
          `metadata tokenizer.ggml.merges[${i}] is ${JSON.stringify(m)}, expected two tokens split by one space`,
        );
      }
      return [m.slice(0, sp), m.slice(sp + 1)];
    });
    const vocab: [string, number][] = [];
    const seen = new Set<string>();
    const added: AddedTokenJson[] = [];
    tokens.forEach((t, id) => {
      const type = typeOf(id);
      if (type === GGUF_TOKEN_TYPE.control || type === GGUF_TOKEN_TYPE.userDefined) {
        added.push({
          id,
          content: t,
          single_word: false,
          lstrip: false,
          rstrip: false,
          normalized: type !== GGUF_TOKEN_TYPE.control,
          special: type === GGUF_TOKEN_TYPE.control,
        });
      }
      // A repeated token string (padding entries) keeps its first id, as llama.cpp's lookup does.
      if (!seen.has(t)) {
        seen.add(t);
        vocab.push([t, id]);
      }
    });
    const tokenizerJson = {
      version: '1.0',
      truncation: null,
      padding: null,
      added_tokens: added,
      normalizer: pre.normalizer,
      pre_tokenizer: pre.preTokenizer,
      post_processor: null,
      decoder: byteLevel(true),
      model: {
        type: 'BPE',
        dropout: null,
        unk_token: tokenAt(ids.unk),
        continuing_subword_prefix: null,
        end_of_word_suffix: null,
        fuse_unk: false,
        byte_fallback: false,
        ignore_merges: pre.ignoreMerges,
        vocab: Object.fromEntries(vocab),
        merges: pairs,
      },
    };
    return {
      tokenizerJson,
      tokenizerConfig: {
        add_bos_token: (meta.optionalBool('tokenizer.ggml.add_bos_token') ?? false) && ids.bos !== undefined,
        add_eos_token: false,
        bos_token: tokenAt(ids.bos),
        eos_token: tokenAt(ids.eos),
        unk_token: tokenAt(ids.unk),
        pad_token: tokenAt(ids.pad),
        clean_up_tokenization_spaces: false,
        ...(chatTemplate === undefined ? {} : { chat_template: chatTemplate }),
      },
    };
  }
  throw new UnsupportedModelError(
    `${file}: tokenizer.ggml.model ${JSON.stringify(model)} is not supported (supported: llama, gpt2)`,
  );
}

/** The KilnTokenizer of a GGUF file. */
export function ggufTokenizer(meta: GgufMetadata): KilnTokenizer {
  const { tokenizerJson, tokenizerConfig } = ggufTokenizerFiles(meta);
  return KilnTokenizer.fromJson(tokenizerJson, tokenizerConfig, `the tokenizer of ${meta.file}`);
}

/**
 * The tokenizer of any model: a GGUF model dir's from its metadata, a folder's from
 * tokenizer.json (KilnTokenizer.load). Reads only the tokenizer, not the weights or the config.
 */
export async function loadModelTokenizer(dir: ModelDir): Promise<KilnTokenizer> {
  if (!isGgufModelDir(dir)) return KilnTokenizer.load(dir);
  // The first shard of a split model holds the metadata; openGguf checks the shards agree.
  const { header, source } = await openGguf(dir, dir.ggufFile);
  try {
    return ggufTokenizer(header.metadata);
  } finally {
    await source.close();
  }
}
