/**
 * The tokenizer of a model folder: @huggingface/tokenizers over tokenizer.json + tokenizer_config.json
 * (or over a converted tokenizer.model when that is all the folder has), chat templates rendered with
 * @huggingface/jinja. The incremental decoder for streaming generated text is
 * incremental-decoder.ts (re-exported here).
 */
import { Tokenizer } from '@huggingface/tokenizers';
import { InvalidModelFileError, InvalidRequestError, UnsupportedModelError } from '../errors.js';
import { readJson, type ModelDir } from './byte-source.js';
import { ChatTemplate, TemplateLimitError, withToolsInSystemMessage } from './chat-template.js';
import { isJsonObject } from './json.js';
import { convertSentencePiece } from './sentencepiece.js';

export { IncrementalDecoder, type IncrementalDecoderOptions } from './incremental-decoder.js';

/** One turn of a conversation. */
export interface ChatMessage {
  role: 'system' | 'user' | 'assistant' | 'tool';
  content: string;
  /** An assistant's tool calls, as chat templates read them (`arguments` parsed to an object). */
  tool_calls?: readonly { id: string; type: 'function'; function: { name: string; arguments: unknown } }[];
  /** A tool message: the call it answers, and the tool's name. */
  tool_call_id?: string;
  name?: string;
}

/** Options of {@link KilnTokenizer.encode}. */
export interface EncodeOptions {
  /** Add the model's special tokens (BOS for Llama-family models). Default true. */
  addSpecialTokens?: boolean;
}

/** Options of {@link KilnTokenizer.decode}. */
export interface DecodeOptions {
  /** Leave out special tokens (BOS, EOS, ...). Default false. */
  skipSpecialTokens?: boolean;
}

/** Options of {@link KilnTokenizer.applyChatTemplate}. */
export interface ChatTemplateOptions {
  /** End with the header that opens the assistant's turn. Default true. */
  addGenerationPrompt?: boolean;
  /** Which template of a list-of-named-templates chat_template; default "default". */
  templateName?: string;
  /**
   * Extra variables for the template, as transformers' apply_chat_template(**kwargs) passes them
   * (Qwen3's `enable_thinking`, for one). They cannot replace the variables Kiln sets itself.
   */
  templateKwargs?: Readonly<Record<string, unknown>>;
  /**
   * Functions the model may call, in OpenAI's shape ({type: "function", function: {name,
   * description, parameters}}), passed to the template as `tools` (as transformers does).
   */
  tools?: readonly unknown[];
}

/**
 * Tokens that end an assistant turn in the chat formats Kiln knows (Gemma, ChatML/Qwen/SmolLM,
 * Llama 3, Phi-3). Models often name only the pretraining EOS in tokenizer_config.json, so these
 * become stop ids too when the model has one as a token and its chat template writes it.
 */
const END_OF_TURN_TOKENS = ['<end_of_turn>', '<|im_end|>', '<|eot_id|>', '<|eom_id|>', '<|end|>'];

/** Variables every render sets (see applyChatTemplate); templateKwargs may not use these names. */
const RESERVED_TEMPLATE_VARS = [
  'messages',
  'tools',
  'documents',
  'add_generation_prompt',
  'bos_token',
  'eos_token',
  'unk_token',
  'pad_token',
];

/** tokenizer_config.json, as far as Kiln reads it. */
interface ParsedConfig {
  bosToken: string | null;
  eosToken: string | null;
  unkToken: string | null;
  padToken: string | null;
  addBosToken: boolean;
  /** A single template, or named templates (the list form); null when the model has none. */
  chatTemplate: string | Map<string, string> | null;
  /** Where chatTemplate came from, for messages. */
  chatTemplateSource: string;
}

/** A special token in tokenizer_config.json: a string, an AddedToken object ({content}), or null. */
function tokenField(config: Record<string, unknown>, field: string, source: string): string | null {
  const v = config[field];
  if (v === undefined || v === null) return null;
  if (typeof v === 'string') return v;
  if (isJsonObject(v) && typeof v['content'] === 'string') return v['content'];
  throw new InvalidModelFileError(
    `${source}: ${field} must be a string or an object with "content", got ${JSON.stringify(v)}`,
  );
}

function parseChatTemplate(v: unknown, source: string): string | Map<string, string> | null {
  if (v === undefined || v === null) return null;
  if (typeof v === 'string') return v;
  if (Array.isArray(v)) {
    const named = new Map<string, string>();
    for (const entry of v) {
      if (
        !isJsonObject(entry) ||
        typeof entry['name'] !== 'string' ||
        typeof entry['template'] !== 'string'
      ) {
        throw new InvalidModelFileError(
          `${source}: chat_template list entries must be {name, template} strings`,
        );
      }
      named.set(entry['name'], entry['template']);
    }
    return named;
  }
  throw new InvalidModelFileError(`${source}: chat_template must be a string or a list of {name, template}`);
}

function parseConfig(config: Record<string, unknown>, source: string): ParsedConfig {
  const addBos = config['add_bos_token'];
  if (addBos !== undefined && addBos !== null && typeof addBos !== 'boolean') {
    throw new InvalidModelFileError(
      `${source}: add_bos_token must be a boolean, got ${JSON.stringify(addBos)}`,
    );
  }
  return {
    bosToken: tokenField(config, 'bos_token', source),
    eosToken: tokenField(config, 'eos_token', source),
    unkToken: tokenField(config, 'unk_token', source),
    padToken: tokenField(config, 'pad_token', source),
    addBosToken: addBos === true,
    chatTemplate: parseChatTemplate(config['chat_template'], source),
    chatTemplateSource: `${source} chat_template`,
  };
}

async function readBytes(dir: ModelDir, file: string): Promise<Uint8Array> {
  const src = await dir.open(file);
  try {
    return await src.read(0, src.size);
  } finally {
    await src.close();
  }
}

/**
 * A model's tokenizer. Encoding and decoding are @huggingface/tokenizers' (the same components as
 * Hugging Face's Rust tokenizers); this class adds Kiln's rules around BOS, chat templates and errors.
 */
export class KilnTokenizer {
  /** The id of the BOS token named by tokenizer_config.json, or null when the model has none. */
  readonly bosTokenId: number | null;
  /**
   * The ids that end generation: tokenizer_config.json's eos_token, then the end-of-turn tokens
   * (`<end_of_turn>`, `<|im_end|>`, `<|eot_id|>`, `<|eom_id|>`, `<|end|>`) that the model has and
   * its chat template writes.
   */
  readonly eosTokenIds: readonly number[];
  /** Number of token ids (the largest id + 1, added tokens included). */
  readonly vocabSize: number;

  /**
   * How vocabulary entries encode bytes, for grammar engines that match token text: 'byte_level'
   * (GPT-2 byte-to-unicode, Llama 3 and Qwen), 'byte_fallback' (SentencePiece pieces with <0xNN>
   * byte tokens and ▁ for space) or 'raw'; `prependSpace` when the tokenizer adds a space before
   * the text (SentencePiece's dummy prefix).
   */
  readonly vocabEncoding: { type: 'byte_level' | 'byte_fallback' | 'raw'; prependSpace: boolean };

  private readonly tok: Tokenizer;
  private readonly config: ParsedConfig;
  private readonly templates = new Map<string, ChatTemplate>();

  private constructor(tok: Tokenizer, config: ParsedConfig, decoder: unknown) {
    this.vocabEncoding = vocabEncodingOf(decoder);
    this.tok = tok;
    this.config = config;
    let maxId = -1;
    for (const id of tok.get_vocab(true).values()) if (id > maxId) maxId = id;
    this.vocabSize = maxId + 1;
    this.bosTokenId = config.bosToken === null ? null : (tok.token_to_id(config.bosToken) ?? null);
    const eos = config.eosToken === null ? undefined : tok.token_to_id(config.eosToken);
    const stops = eos === undefined ? [] : [eos];
    const templates = config.chatTemplate;
    const texts =
      templates === null ? [] : typeof templates === 'string' ? [templates] : [...templates.values()];
    for (const marker of END_OF_TURN_TOKENS) {
      const id = tok.token_to_id(marker);
      if (id !== undefined && texts.some((t) => t.includes(marker)) && !stops.includes(id)) stops.push(id);
    }
    this.eosTokenIds = stops;
  }

  /**
   * Loads the tokenizer of a model folder: tokenizer.json with tokenizer_config.json (optional) and
   * the chat template (tokenizer_config.json's chat_template, or chat_template.jinja /
   * chat_template.json beside it). A folder with only a SentencePiece tokenizer.model is converted.
   */
  static async load(dir: ModelDir): Promise<KilnTokenizer> {
    let tokenizerJson: unknown;
    let config: unknown = {};
    let configSource = `tokenizer_config.json in ${dir.location}`;
    if (await dir.exists('tokenizer_config.json')) config = await readJson(dir, 'tokenizer_config.json');
    if (await dir.exists('tokenizer.json')) {
      tokenizerJson = await readJson(dir, 'tokenizer.json');
    } else if (await dir.exists('tokenizer.model')) {
      const converted = convertSentencePiece(
        await readBytes(dir, 'tokenizer.model'),
        `tokenizer.model in ${dir.location}`,
      );
      tokenizerJson = converted.tokenizerJson;
      if (!(await dir.exists('tokenizer_config.json'))) {
        config = converted.tokenizerConfig;
        configSource = `tokenizer.model in ${dir.location} (converted)`;
      }
    } else {
      throw new InvalidModelFileError(
        `tokenizer.json not found in ${dir.location} (nor a tokenizer.model to convert)`,
      );
    }
    if (!isJsonObject(config)) throw new InvalidModelFileError(`${configSource} must be a JSON object`);
    const parsed = parseConfig(config, configSource);
    if (parsed.chatTemplate === null) {
      // Newer transformers save the template beside the config instead of inside it.
      if (await dir.exists('chat_template.jinja')) {
        parsed.chatTemplate = await dir.readText('chat_template.jinja');
        parsed.chatTemplateSource = `chat_template.jinja in ${dir.location}`;
      } else if (await dir.exists('chat_template.json')) {
        const source = `chat_template.json in ${dir.location}`;
        const ct = await readJson(dir, 'chat_template.json');
        parsed.chatTemplate = parseChatTemplate(isJsonObject(ct) ? ct['chat_template'] : undefined, source);
        parsed.chatTemplateSource = source;
      }
    }
    return KilnTokenizer.build(tokenizerJson, config, parsed, `tokenizer.json in ${dir.location}`);
  }

  /**
   * Builds a tokenizer from already-parsed tokenizer.json and tokenizer_config.json contents.
   * @param source names the files in error messages.
   */
  static fromJson(tokenizerJson: object, tokenizerConfig: object, source = 'tokenizer.json'): KilnTokenizer {
    if (!isJsonObject(tokenizerConfig))
      throw new InvalidModelFileError(`tokenizer_config.json for ${source} must be a JSON object`);
    return KilnTokenizer.build(
      tokenizerJson,
      tokenizerConfig,
      parseConfig(tokenizerConfig, `tokenizer_config.json for ${source}`),
      source,
    );
  }

  private static build(
    tokenizerJson: unknown,
    config: Record<string, unknown>,
    parsed: ParsedConfig,
    source: string,
  ): KilnTokenizer {
    if (!isJsonObject(tokenizerJson)) throw new InvalidModelFileError(`${source} must be a JSON object`);
    for (const key of ['model', 'added_tokens']) {
      if (!(key in tokenizerJson)) throw new InvalidModelFileError(`${source} has no "${key}"`);
    }
    if (!Array.isArray(tokenizerJson['added_tokens']))
      throw new InvalidModelFileError(`${source}: added_tokens must be a list`);
    // The library wants every component key present; tokenizer.json files may omit null ones.
    const json = {
      normalizer: null,
      pre_tokenizer: null,
      post_processor: null,
      decoder: null,
      ...tokenizerJson,
    };
    // Special tokens as plain strings (the library does not unwrap AddedToken objects), and no
    // "clean up" of spaces before punctuation unless the model asks: it changes text on decode.
    const libConfig = {
      ...config,
      bos_token: parsed.bosToken,
      eos_token: parsed.eosToken,
      unk_token: parsed.unkToken,
      pad_token: parsed.padToken,
      clean_up_tokenization_spaces: config['clean_up_tokenization_spaces'] === true,
    };
    let tok: Tokenizer;
    try {
      tok = new Tokenizer(json, libConfig);
    } catch (e) {
      const why = e instanceof Error ? e.message : String(e);
      throw new InvalidModelFileError(`${source} could not be loaded: ${why}`, { cause: e });
    }
    return new KilnTokenizer(tok, parsed, json.decoder);
  }

  /** The BOS token's text (e.g. "<s>"), or null. */
  get bosToken(): string | null {
    return this.config.bosToken;
  }

  /** The EOS token's text (e.g. "</s>"), or null. */
  get eosToken(): string | null {
    return this.config.eosToken;
  }

  /**
   * Token ids of `text`. With addSpecialTokens, BOS comes from the tokenizer's post-processor, or
   * from tokenizer_config.json's add_bos_token when the post-processor does not add it; never twice,
   * and not when the text already starts with the BOS token's text. (Conversations go through
   * {@link encodeChat}, which adds no special tokens at all.)
   */
  encode(text: string, { addSpecialTokens = true }: EncodeOptions = {}): number[] {
    const bos = this.bosTokenId;
    const startsWithBos =
      this.config.bosToken !== null && this.config.bosToken !== '' && text.startsWith(this.config.bosToken);
    const add = addSpecialTokens && !startsWithBos;
    const ids = this.tok.encode(text, { add_special_tokens: add }).ids;
    if (add && this.config.addBosToken && bos !== null && ids[0] !== bos) ids.unshift(bos);
    return ids;
  }

  /** The text of token ids; [] decodes to "". */
  decode(ids: readonly number[], { skipSpecialTokens = false }: DecodeOptions = {}): string {
    if (ids.length === 0) return '';
    for (const id of ids) {
      if (!Number.isInteger(id) || id < 0)
        throw new InvalidRequestError(`token id ${id} is not a non-negative integer`);
    }
    return this.tok.decode([...ids], { skip_special_tokens: skipSpecialTokens });
  }

  /** The vocabulary entry of an id ("▁Hello", "<0x0A>", "<s>"), or undefined. */
  idToToken(id: number): string | undefined {
    return this.tok.id_to_token(id);
  }

  /** The id of a vocabulary entry, or undefined. */
  tokenToId(token: string): number | undefined {
    return this.tok.token_to_id(token);
  }

  /** The text of the default chat template, or null (tool-call formats are read off it). */
  get chatTemplateText(): string | null {
    const ct = this.config.chatTemplate;
    if (ct === null) return null;
    return typeof ct === 'string' ? ct : (ct.get('tool_use') ?? ct.get('default') ?? null);
  }

  /** Whether the model has a chat template (base models usually do not). */
  get hasChatTemplate(): boolean {
    return this.config.chatTemplate !== null;
  }

  private template(name: string | undefined): ChatTemplate {
    const ct = this.config.chatTemplate;
    const where = this.config.chatTemplateSource;
    if (ct === null) {
      throw new UnsupportedModelError(
        `this model has no chat template (${where} is missing); it is likely a base model: use plain prompts`,
      );
    }
    let text: string;
    let key: string;
    if (typeof ct === 'string') {
      if (name !== undefined && name !== 'default') {
        throw new InvalidRequestError(`${where} is a single template; there is no template named "${name}"`);
      }
      text = ct;
      key = 'default';
    } else {
      key = name ?? 'default';
      const t = ct.get(key);
      if (t === undefined) {
        throw new InvalidRequestError(
          `${where} has no template named "${key}" (it has: ${[...ct.keys()].join(', ')})`,
        );
      }
      text = t;
    }
    let compiled = this.templates.get(key);
    if (!compiled) {
      try {
        compiled = new ChatTemplate(text);
      } catch (e) {
        const why = e instanceof Error ? e.message : String(e);
        throw new InvalidModelFileError(
          `${where} (template "${key}") is not a valid Jinja template: ${why}`,
          { cause: e },
        );
      }
      this.templates.set(key, compiled);
    }
    return compiled;
  }

  /**
   * Renders a conversation with the model's chat template (Jinja, as transformers'
   * apply_chat_template does: messages, bos_token, eos_token, add_generation_prompt, and the
   * caller's templateKwargs).
   * @throws UnsupportedModelError when the model has no chat template; the caller picks a fallback.
   */
  applyChatTemplate(messages: readonly ChatMessage[], options: ChatTemplateOptions = {}): string {
    const template = this.template(options.templateName);
    const kwargs = options.templateKwargs ?? {};
    if (!isJsonObject(kwargs)) throw new InvalidRequestError('chat template kwargs must be an object');
    for (const name of Object.keys(kwargs)) {
      if (RESERVED_TEMPLATE_VARS.includes(name)) {
        throw new InvalidRequestError(
          `chat template kwargs: "${name}" is set by Kiln itself and cannot be passed as a kwarg`,
        );
      }
    }
    try {
      return template.render({
        ...kwargs,
        messages:
          template.readsMessageTools && options.tools && options.tools.length > 0
            ? withToolsInSystemMessage(messages, options.tools)
            : messages.map((m) => ({ ...m })),
        ...(options.tools && options.tools.length > 0 ? { tools: options.tools } : {}),
        add_generation_prompt: options.addGenerationPrompt ?? true,
        bos_token: this.config.bosToken ?? '',
        eos_token: this.config.eosToken ?? '',
        unk_token: this.config.unkToken ?? '',
        pad_token: this.config.padToken ?? '',
      });
    } catch (e) {
      const why = e instanceof Error ? e.message : String(e);
      if (e instanceof TemplateLimitError) {
        throw new InvalidModelFileError(
          `the chat template (${this.config.chatTemplateSource}) was stopped: ${why}`,
          {
            cause: e,
          },
        );
      }
      // Templates reject conversations they cannot format (raise_exception on role order, ...).
      throw new InvalidRequestError(
        `the chat template (${this.config.chatTemplateSource}) rejected the conversation: ${why}`,
        {
          cause: e,
        },
      );
    }
  }

  /**
   * Renders and encodes a conversation as transformers' apply_chat_template(tokenize=True) does:
   * the rendered text is encoded without special tokens, so the template alone decides where BOS
   * goes, and a template that writes no BOS gets none.
   */
  encodeChat(messages: readonly ChatMessage[], options: ChatTemplateOptions = {}): number[] {
    return this.encode(this.applyChatTemplate(messages, options), { addSpecialTokens: false });
  }
}

/** Reads a tokenizer.json decoder: which byte encoding its vocabulary uses (see vocabEncoding). */
function vocabEncodingOf(decoder: unknown): KilnTokenizer['vocabEncoding'] {
  const parts: Record<string, unknown>[] = [];
  const walk = (d: unknown) => {
    if (!isJsonObject(d)) return;
    parts.push(d);
    if (Array.isArray(d['decoders'])) for (const x of d['decoders']) walk(x);
  };
  walk(decoder);
  const types = parts.map((p) => p['type']);
  if (types.includes('ByteLevel')) return { type: 'byte_level', prependSpace: false };
  const prependSpace =
    parts.some((p) => p['type'] === 'Strip' && p['start'] === 1) ||
    parts.some((p) => p['type'] === 'Metaspace' && p['prepend_scheme'] !== 'never');
  if (types.includes('ByteFallback')) return { type: 'byte_fallback', prependSpace };
  return { type: 'raw', prependSpace };
}
