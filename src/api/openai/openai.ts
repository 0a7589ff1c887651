/**
 * The OpenAI API over any KilnEngine, written once: the library's `engine.chat.completions` and
 * `engine.completions`, the browser's worker engine and `kiln serve` (which adds only HTTP) all
 * run this code. It checks the request (validate.ts), renders and measures the prompt, maps the
 * fields onto `generate` (request.ts, stop strings included), runs the n choices (choices.ts), and
 * shapes the answer or the chunk stream with OpenAI's ids, objects and usage (shape.ts; streamed
 * tool calls: tool-stream.ts).
 */
import { UnsupportedModelError } from '../../errors.js';
import type { KilnEngine } from '../engine-api.js';
import type { GenerateOptions, GenerateResult } from '../types.js';
import { collectChoices, runChoices, type Choice } from './choices.js';
import {
  budget,
  chatMessages,
  checkGrammar,
  choiceOptions,
  formatGrammar,
  generateOptions,
  grammarParam,
} from './request.js';
import { chatLogprob, completionLogprobs, requestId, usage } from './shape.js';
import { ToolStream } from './tool-stream.js';
import { toolFormatOf, toToolCalls } from './tools.js';
import type {
  ChatCompletion,
  ChatCompletionChunk,
  ChatCompletionRequest,
  ChatFinishReason,
  Completion,
  CompletionChunk,
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
    if (messages.every((m) => m.content === '' && !m.tool_calls)) {
      throw new OpenAiRequestError('every message is empty', 'messages');
    }
    const tools = req.tools ?? [];
    const toolChoice = req.tool_choice ?? 'auto';
    const useTools = tools.length > 0 && toolChoice !== 'none';
    const format = toolFormatOf(engine.toolCallFormat);
    let ids: number[];
    if (engine.hasChatTemplate) {
      const kwargs = req.chat_template_kwargs;
      ids = await engine.tokenize({
        messages,
        ...(useTools ? { tools } : {}),
        ...(kwargs ? { chatTemplateKwargs: kwargs } : {}),
      });
    } else if (this.opts.withoutTemplate === 'plain-text') {
      ids = await engine.tokenize(messages.map((m) => m.content).join('\n\n'));
    } else {
      throw new UnsupportedModelError(
        `${engine.modelName} has no chat template (its tokenizer_config.json names none): use completions, which continue plain text`,
      );
    }
    // A forced call (required, or a named function) is enforced by the call format's grammar.
    const forced =
      toolChoice === 'required'
        ? tools
        : typeof toolChoice === 'object'
          ? tools.filter((t) => t.function.name === toolChoice.function.name)
          : null;
    const grammar = forced && useTools ? format.grammar(forced) : formatGrammar(req.response_format);
    const maxTokens = budget(engine, ids, req, 'messages');
    const top = req.logprobs ? (req.top_logprobs ?? 0) : null;
    const opts: GenerateOptions = {
      ...generateOptions(req, maxTokens),
      ...(grammar ? { grammar } : {}),
      ...(top !== null ? { logprobs: top } : {}),
    };
    if (grammar) await checkGrammar(engine, grammar, grammarParam(req, forced !== null && useTools));
    const n = req.n ?? 1;
    const choices: Choice[] = Array.from({ length: n }, (_, i) => ({
      index: i,
      ids,
      opts: choiceOptions(opts, i),
    }));
    observe.onPrompt?.(ids.length);
    const id = requestId('chatcmpl');
    const created = Math.floor(Date.now() / 1000);
    const model = this.opts.modelName ?? engine.modelName;
    const finishOf = (r: GenerateResult, calls: number): ChatFinishReason =>
      calls > 0 && r.finishReason !== 'abort' ? 'tool_calls' : r.finishReason;

    if (!req.stream) {
      const { texts, logprobs, results } = await collectChoices(engine, choices, observe);
      let completion = 0;
      const out: ChatCompletion['choices'] = choices.map((c) => {
        const r = results[c.index] as GenerateResult;
        completion += r.tokenIds.length;
        const text = texts[c.index] as string;
        const parsed = useTools ? format.parse(text, tools) : null;
        const calls = parsed ? toToolCalls(parsed.calls) : [];
        return {
          index: c.index,
          message: {
            role: 'assistant',
            content: parsed ? parsed.content || null : text,
            refusal: null,
            ...(calls.length > 0 ? { tool_calls: calls } : {}),
          },
          finish_reason: finishOf(r, calls.length),
          logprobs: top !== null ? { content: (logprobs[c.index] ?? []).map(chatLogprob) } : null,
        };
      });
      return {
        id,
        object: 'chat.completion',
        created,
        model,
        choices: out,
        usage: usage(ids.length, completion),
      };
    }

    const chunk = (choices: ChatCompletionChunk['choices'], extra: { usage?: CompletionUsage } = {}) => ({
      id,
      object: 'chat.completion.chunk' as const,
      created,
      model,
      choices,
      ...extra,
    });
    const includeUsage = req.stream_options?.include_usage === true;
    return (async function* () {
      for (const c of choices) {
        yield chunk([
          { index: c.index, delta: { role: 'assistant', content: '' }, finish_reason: null, logprobs: null },
        ]);
      }
      const streams = choices.map(() => (useTools ? new ToolStream(format, tools) : null));
      let completion = 0;
      for await (const item of runChoices(engine, choices, observe)) {
        const index = item.index;
        const ts = streams[index] ?? null;
        if ('token' in item) {
          const text = ts ? ts.push(item.token.text) : item.token.text;
          const lp = item.token.logprob ? { content: [chatLogprob(item.token.logprob)] } : null;
          if (text || lp)
            yield chunk([{ index, delta: { content: text }, finish_reason: null, logprobs: lp }]);
          continue;
        }
        completion += item.result.tokenIds.length;
        let calls = 0;
        if (ts) {
          const end = ts.end();
          if (end.text)
            yield chunk([{ index, delta: { content: end.text }, finish_reason: null, logprobs: null }]);
          calls = end.calls.length;
          for (const [i, call] of end.calls.entries()) {
            yield chunk([
              {
                index,
                delta: {
                  tool_calls: [
                    {
                      index: i,
                      id: call.id,
                      type: 'function',
                      function: { name: call.function.name, arguments: '' },
                    },
                  ],
                },
                finish_reason: null,
                logprobs: null,
              },
            ]);
            yield chunk([
              {
                index,
                delta: { tool_calls: [{ index: i, function: { arguments: call.function.arguments } }] },
                finish_reason: null,
                logprobs: null,
              },
            ]);
          }
        }
        yield chunk([{ index, delta: {}, finish_reason: finishOf(item.result, calls), logprobs: null }]);
      }
      if (includeUsage) yield chunk([], { usage: usage(ids.length, completion) });
    })();
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
    const engine = this.engine;
    const prompts = typeof req.prompt === 'string' ? [req.prompt] : req.prompt;
    const n = req.n ?? 1;
    const grammar = formatGrammar(req.response_format);
    if (grammar) await checkGrammar(engine, grammar, grammarParam(req, false));
    const top = req.logprobs ?? null;
    const choices: Choice[] = [];
    let promptTokens = 0;
    for (const [p, prompt] of prompts.entries()) {
      const ids = await engine.tokenize(prompt);
      const param = prompts.length > 1 ? `prompt.${p}` : 'prompt';
      const opts: GenerateOptions = {
        ...generateOptions(req, budget(engine, ids, req, param)),
        ...(grammar ? { grammar } : {}),
        ...(top !== null ? { logprobs: top } : {}),
      };
      promptTokens += ids.length;
      for (let i = 0; i < n; i++) choices.push({ index: p * n + i, ids, opts: choiceOptions(opts, i) });
    }
    observe.onPrompt?.(promptTokens);
    const id = requestId('cmpl');
    const created = Math.floor(Date.now() / 1000);
    const model = this.opts.modelName ?? engine.modelName;
    const base = { id, object: 'text_completion' as const, created, model };

    if (!req.stream) {
      const { texts, logprobs, results } = await collectChoices(engine, choices, observe);
      let completion = 0;
      return {
        ...base,
        choices: choices.map((c) => {
          const r = results[c.index] as GenerateResult;
          completion += r.tokenIds.length;
          return {
            index: c.index,
            text: texts[c.index] as string,
            finish_reason: r.finishReason,
            logprobs: top !== null ? completionLogprobs(logprobs[c.index] ?? [], 0, top) : null,
          };
        }),
        usage: usage(promptTokens, completion),
      };
    }
    const includeUsage = req.stream_options?.include_usage === true;
    return (async function* (): AsyncGenerator<CompletionChunk> {
      const offsets = choices.map(() => 0);
      let completion = 0;
      for await (const item of runChoices(engine, choices, observe)) {
        const index = item.index;
        if ('token' in item) {
          const lp = item.token.logprob
            ? completionLogprobs([item.token.logprob], offsets[index] as number, top ?? 0)
            : null;
          offsets[index] = (offsets[index] as number) + item.token.text.length;
          if (item.token.text || lp)
            yield { ...base, choices: [{ index, text: item.token.text, finish_reason: null, logprobs: lp }] };
          continue;
        }
        completion += item.result.tokenIds.length;
        yield {
          ...base,
          choices: [{ index, text: '', finish_reason: item.result.finishReason, logprobs: null }],
        };
      }
      if (includeUsage) yield { ...base, choices: [], usage: usage(promptTokens, completion) };
    })();
  }
}
