/**
 * The OpenAI API over any KilnEngine, written once: the library's `engine.chat.completions` and
 * `engine.completions`, the browser's worker engine and `kiln serve` (which adds only HTTP) all
 * run this code. It checks the request (validate.ts), renders and measures the prompt, maps the
 * fields onto `generate` (stop strings included), and shapes the answer or the chunk stream with
 * OpenAI's ids, objects and usage.
 */
import { UnsupportedModelError } from '../../errors.js';
import type { ChatMessage } from '../../io/tokenizer.js';
import type { KilnEngine } from '../engine-api.js';
import type { FinishReason, GenerateOptions } from '../types.js';
import type {
  ChatCompletion,
  ChatCompletionChunk,
  ChatCompletionRequest,
  Completion,
  CompletionChunk,
  CompletionFields,
  CompletionObserver,
  CompletionRequest,
  CompletionUsage,
  OpenAiChatApi,
  OpenAiCompletionsApi,
} from './types.js';
import { OpenAiRequestError, validateChatRequest, validateCompletionRequest } from './validate.js';

export interface OpenAiOptions {
  /**
   * Chat requests to a model without a chat template: 'refuse' (default, UnsupportedModelError),
   * or 'plain-text': complete the messages' contents joined by blank lines, as a base model reads
   * text (the HTTP server, whose clients often speak only chat).
   */
  withoutTemplate?: 'refuse' | 'plain-text';
  /** Requests must name a model (the HTTP server checks which). */
  requireModel?: boolean;
  /** The `model` of responses (default: the engine's modelName). */
  modelName?: string;
}

/** OpenAI's usage block. */
function usage(prompt: number, completion: number): CompletionUsage {
  return { prompt_tokens: prompt, completion_tokens: completion, total_tokens: prompt + completion };
}

let counter = 0;
function requestId(prefix: string): string {
  return `${prefix}-${Date.now().toString(36)}${(counter++).toString(36)}${Math.random().toString(36).slice(2, 6)}`;
}

/** The messages as the chat template reads them: developer is system, text parts joined. */
function chatMessages(req: ChatCompletionRequest): ChatMessage[] {
  return req.messages.map((m) => ({
    role: m.role === 'developer' ? 'system' : m.role,
    content: typeof m.content === 'string' ? m.content : m.content.map((p) => p.text).join(''),
  }));
}

/** What one request generates, and how its pieces are shaped. */
interface Shape<Chunk, Done> {
  /** The prompt's field, for errors about its length. */
  promptParam: string;
  /** The first chunk of a stream (chat: the assistant's role), if any. */
  opening(): Chunk | null;
  piece(text: string): Chunk;
  closing(finish: FinishReason): Chunk;
  usageChunk(u: CompletionUsage): Chunk;
  done(text: string, finish: FinishReason, u: CompletionUsage): Done;
}

/**
 * Generates for `ids` under the request's fields: the whole answer, or (streaming) an async
 * iterable of chunks ending with the finish reason and, when asked, the usage. Requests that
 * cannot fit the context are refused here, before anything runs.
 */
async function complete<Chunk, Done>(
  engine: KilnEngine,
  ids: number[],
  req: CompletionFields,
  shape: Shape<Chunk, Done>,
  observe: CompletionObserver,
): Promise<Done | AsyncIterable<Chunk>> {
  const room = engine.contextLength - ids.length;
  if (room < 1) {
    throw new OpenAiRequestError(
      `the prompt is ${ids.length} tokens; this model's context is ${engine.contextLength} tokens, which leaves no room to generate`,
      shape.promptParam,
      'context_length_exceeded',
    );
  }
  const maxTokens = req.max_completion_tokens ?? req.max_tokens ?? room;
  if (maxTokens > room) {
    throw new OpenAiRequestError(
      `max_tokens ${maxTokens} plus the prompt's ${ids.length} tokens exceed the context of ${engine.contextLength} tokens (at most ${room} here)`,
      req.max_completion_tokens != null ? 'max_completion_tokens' : 'max_tokens',
      'context_length_exceeded',
    );
  }
  const stop = req.stop == null ? [] : typeof req.stop === 'string' ? [req.stop] : req.stop;
  const opts: GenerateOptions = {
    maxTokens,
    ...(req.temperature != null ? { temperature: req.temperature } : {}),
    ...(req.top_p != null ? { topP: req.top_p } : {}),
    ...(req.top_k != null ? { topK: req.top_k } : {}),
    ...(req.repetition_penalty != null ? { repetitionPenalty: req.repetition_penalty } : {}),
    ...(req.seed != null ? { seed: req.seed } : {}),
    ...(stop.length > 0 ? { stop } : {}),
    ...(req.signal ? { signal: req.signal } : {}),
  };
  const gen = engine.generate(ids, opts);
  observe.onPrompt?.(ids.length);
  if (!req.stream) {
    for await (const t of gen) if (t.id !== null) observe.onToken?.();
    const r = await gen.result();
    return shape.done(r.text, r.finishReason, usage(ids.length, r.tokenIds.length));
  }
  const includeUsage = req.stream_options?.include_usage === true;
  return (async function* () {
    const opening = shape.opening();
    if (opening) yield opening;
    for await (const t of gen) {
      if (t.id !== null) observe.onToken?.();
      if (t.text) yield shape.piece(t.text);
    }
    const r = await gen.result();
    yield shape.closing(r.finishReason);
    if (includeUsage) yield shape.usageChunk(usage(ids.length, r.tokenIds.length));
  })();
}

/** `chat.completions`: the conversation through the model's chat template. */
export class OpenAiChat implements OpenAiChatApi {
  constructor(
    private readonly engine: KilnEngine,
    private readonly opts: OpenAiOptions = {},
  ) {}

  create(
    req: ChatCompletionRequest & { stream: true },
    observe?: CompletionObserver,
  ): Promise<AsyncIterable<ChatCompletionChunk>>;
  create(
    req: ChatCompletionRequest & { stream?: false | null },
    observe?: CompletionObserver,
  ): Promise<ChatCompletion>;
  create(
    req: ChatCompletionRequest,
    observe?: CompletionObserver,
  ): Promise<ChatCompletion | AsyncIterable<ChatCompletionChunk>> {
    return this.respond(req, observe);
  }

  /** `create` for a request whose `stream` is known only at run time (the HTTP server's). */
  async respond(
    body: ChatCompletionRequest,
    observe: CompletionObserver = {},
  ): Promise<ChatCompletion | AsyncIterable<ChatCompletionChunk>> {
    const req = validateChatRequest(body, { requireModel: this.opts.requireModel ?? false });
    const engine = this.engine;
    const messages = chatMessages(req);
    if (messages.every((m) => m.content === '')) {
      throw new OpenAiRequestError('every message is empty', 'messages');
    }
    let ids: number[];
    if (engine.hasChatTemplate) ids = await engine.tokenize({ messages });
    else if (this.opts.withoutTemplate === 'plain-text') {
      ids = await engine.tokenize(messages.map((m) => m.content).join('\n\n'));
    } else {
      throw new UnsupportedModelError(
        `${engine.modelName} has no chat template (its tokenizer_config.json names none): use completions, which continue plain text`,
      );
    }
    const id = requestId('chatcmpl');
    const created = Math.floor(Date.now() / 1000);
    const model = this.opts.modelName ?? engine.modelName;
    const chunk = (choices: ChatCompletionChunk['choices'], extra: { usage?: CompletionUsage } = {}) => ({
      id,
      object: 'chat.completion.chunk' as const,
      created,
      model,
      choices,
      ...extra,
    });
    return complete<ChatCompletionChunk, ChatCompletion>(
      engine,
      ids,
      req,
      {
        promptParam: 'messages',
        opening: () =>
          chunk([
            { index: 0, delta: { role: 'assistant', content: '' }, finish_reason: null, logprobs: null },
          ]),
        piece: (text) => chunk([{ index: 0, delta: { content: text }, finish_reason: null, logprobs: null }]),
        closing: (finish) => chunk([{ index: 0, delta: {}, finish_reason: finish, logprobs: null }]),
        usageChunk: (u) => chunk([], { usage: u }),
        done: (text, finish, u) => ({
          id,
          object: 'chat.completion',
          created,
          model,
          choices: [
            {
              index: 0,
              message: { role: 'assistant', content: text },
              finish_reason: finish,
              logprobs: null,
            },
          ],
          usage: u,
        }),
      },
      observe,
    );
  }
}

/** `completions`: plain text continued. */
export class OpenAiCompletions implements OpenAiCompletionsApi {
  constructor(
    private readonly engine: KilnEngine,
    private readonly opts: OpenAiOptions = {},
  ) {}

  create(
    req: CompletionRequest & { stream: true },
    observe?: CompletionObserver,
  ): Promise<AsyncIterable<CompletionChunk>>;
  create(
    req: CompletionRequest & { stream?: false | null },
    observe?: CompletionObserver,
  ): Promise<Completion>;
  create(
    req: CompletionRequest,
    observe?: CompletionObserver,
  ): Promise<Completion | AsyncIterable<CompletionChunk>> {
    return this.respond(req, observe);
  }

  /** `create` for a request whose `stream` is known only at run time (the HTTP server's). */
  async respond(
    body: CompletionRequest,
    observe: CompletionObserver = {},
  ): Promise<Completion | AsyncIterable<CompletionChunk>> {
    const req = validateCompletionRequest(body, { requireModel: this.opts.requireModel ?? false });
    const prompt = typeof req.prompt === 'string' ? req.prompt : (req.prompt[0] as string);
    const ids = await this.engine.tokenize(prompt);
    const id = requestId('cmpl');
    const created = Math.floor(Date.now() / 1000);
    const model = this.opts.modelName ?? this.engine.modelName;
    const chunk = (text: string, finish: FinishReason | null, extra: { usage?: CompletionUsage } = {}) => ({
      id,
      object: 'text_completion' as const,
      created,
      model,
      choices: [{ index: 0 as const, text, finish_reason: finish, logprobs: null }],
      ...extra,
    });
    return complete<CompletionChunk, Completion>(
      this.engine,
      ids,
      req,
      {
        promptParam: 'prompt',
        opening: () => null,
        piece: (text) => chunk(text, null),
        closing: (finish) => chunk('', finish),
        usageChunk: (u) => ({ ...chunk('', null, { usage: u }), choices: [] }),
        done: (text, finish, u) => ({
          id,
          object: 'text_completion',
          created,
          model,
          choices: [{ index: 0, text, finish_reason: finish, logprobs: null }],
          usage: u,
        }),
      },
      observe,
    );
  }
}
