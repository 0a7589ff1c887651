/**
 * The OpenAI API over any KilnEngine, written once: the library's `engine.chat.completions` and
 * `engine.completions`, the browser's worker engine and `kiln serve` (which adds only HTTP) all
 * run this code. It checks the request (validate.ts), renders and measures the prompt, maps the
 * fields onto `generate` (stop strings included), and shapes the answer or the chunk stream with
 * OpenAI's ids, objects and usage.
 */
import { InvalidRequestError, UnsupportedModelError } from '../../errors.js';
import type { ChatMessage } from '../../io/tokenizer.js';
import type { KilnEngine } from '../engine-api.js';
import type { GenerateOptions, GenerateResult, GrammarSpec, TokenLogprobs } from '../types.js';
import { toolFormatOf, toToolCalls, type ToolFormat } from './tools.js';
import type {
  ChatCompletion,
  ChatCompletionChunk,
  ChatCompletionRequest,
  ChatFinishReason,
  Completion,
  CompletionChunk,
  CompletionFields,
  CompletionLogprobs,
  CompletionObserver,
  CompletionRequest,
  CompletionUsage,
  OpenAiChatApi,
  OpenAiCompletionsApi,
  ResponseFormat,
  TokenLogprob,
  ToolParam,
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

function parseArguments(text: string): unknown {
  // Validated as a JSON object by validate.ts.
  return JSON.parse(text) as unknown;
}

/**
 * The messages as chat templates read them: developer is system, text parts joined, a tool
 * message named after the call it answers, tool-call arguments as objects.
 */
function chatMessages(req: ChatCompletionRequest): ChatMessage[] {
  const callNames = new Map<string, string>();
  return req.messages.map((m) => {
    const content =
      m.content === null
        ? ''
        : typeof m.content === 'string'
          ? m.content
          : m.content.map((p) => p.text).join('');
    const out: ChatMessage = { role: m.role === 'developer' ? 'system' : m.role, content };
    if (m.tool_calls) {
      out.tool_calls = m.tool_calls.map((c) => {
        callNames.set(c.id, c.function.name);
        return {
          id: c.id,
          type: 'function',
          function: { name: c.function.name, arguments: parseArguments(c.function.arguments) },
        };
      });
    }
    if (m.tool_call_id !== undefined) {
      out.tool_call_id = m.tool_call_id;
      const name = callNames.get(m.tool_call_id);
      if (name !== undefined) out.name = name;
    } else if (m.name !== undefined) out.name = m.name;
    return out;
  });
}

/** The grammar behind response_format (null: free text). */
function formatGrammar(rf: ResponseFormat | null | undefined): GrammarSpec | null {
  if (!rf || rf.type === 'text') return null;
  if (rf.type === 'json_object') return { type: 'json' };
  const schema = rf.json_schema.schema;
  return schema === undefined ? { type: 'json' } : { type: 'json_schema', schema };
}

/** The request's sampling and logit fields as generate() options (everything but the prompt). */
function generateOptions(req: CompletionFields, maxTokens: number): GenerateOptions {
  const stop = req.stop == null ? [] : typeof req.stop === 'string' ? [req.stop] : req.stop;
  const bias = req.logit_bias ? Object.entries(req.logit_bias) : [];
  return {
    maxTokens,
    ...(req.temperature != null ? { temperature: req.temperature } : {}),
    ...(req.top_p != null ? { topP: req.top_p } : {}),
    ...(req.top_k != null ? { topK: req.top_k } : {}),
    ...(req.repetition_penalty != null ? { repetitionPenalty: req.repetition_penalty } : {}),
    ...(req.min_p ? { minP: req.min_p } : {}),
    ...(req.presence_penalty ? { presencePenalty: req.presence_penalty } : {}),
    ...(req.frequency_penalty ? { frequencyPenalty: req.frequency_penalty } : {}),
    ...(bias.length > 0 ? { logitBias: Object.fromEntries(bias.map(([k, v]) => [Number(k), v])) } : {}),
    ...(req.seed != null ? { seed: req.seed } : {}),
    ...(stop.length > 0 ? { stop } : {}),
    ...(req.signal ? { signal: req.signal } : {}),
  };
}

/** Checks that the prompt leaves room and returns the token budget of each choice. */
function budget(
  engine: KilnEngine,
  ids: readonly number[],
  req: CompletionFields,
  promptParam: string,
): number {
  const room = engine.contextLength - ids.length;
  if (room < 1) {
    throw new OpenAiRequestError(
      `the prompt is ${ids.length} tokens; this model's context is ${engine.contextLength} tokens, which leaves no room to generate`,
      promptParam,
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
  return maxTokens;
}

/** One choice being generated: its stream of tokens and its result. */
interface Choice {
  index: number;
  ids: readonly number[];
  opts: GenerateOptions;
}

/** A token as a choice yields it (text may be "" while a character is partial). */
interface ChoiceToken {
  text: string;
  logprob?: TokenLogprobs;
}

type ChoiceItem = { index: number; token: ChoiceToken } | { index: number; result: GenerateResult };

/**
 * Runs the choices and merges their token streams: each item is one choice's token or its end.
 * Choices of one prompt share its KV blocks: the first of a prompt runs alone until its first token
 * (its prefill is then in the prefix cache), then the others start and reuse those blocks.
 */
async function* runChoices(
  engine: KilnEngine,
  choices: readonly Choice[],
  observe: CompletionObserver,
): AsyncGenerator<ChoiceItem> {
  const queue: ChoiceItem[] = [];
  let wake: (() => void) | null = null;
  let failure: unknown = null;
  let running = 0;
  const signal = () => {
    const w = wake;
    wake = null;
    w?.();
  };
  // Ends every choice when the consumer stops reading or one choice fails.
  const stopAll = new AbortController();
  const outer = choices[0]?.opts.signal;
  const onOuter = () => stopAll.abort();
  outer?.addEventListener('abort', onOuter, { once: true });
  if (outer?.aborted) stopAll.abort();
  const firstOfPrompt = new Map<string, Promise<void>>();
  for (const c of choices) {
    const key = c.ids.join(',');
    const after = firstOfPrompt.get(key) ?? null;
    let firstToken: () => void = () => undefined;
    if (!after) firstOfPrompt.set(key, new Promise<void>((r) => (firstToken = r)));
    running++;
    void (async () => {
      try {
        if (after) await after;
        const gen = engine.generate(c.ids, { ...c.opts, signal: stopAll.signal });
        for await (const t of gen) {
          firstToken();
          if (t.id !== null) observe.onToken?.();
          queue.push({
            index: c.index,
            token: { text: t.text, ...(t.logprob ? { logprob: t.logprob } : {}) },
          });
          signal();
        }
        queue.push({ index: c.index, result: await gen.result() });
      } catch (e) {
        failure ??= e;
      } finally {
        firstToken();
        running--;
        signal();
      }
    })();
  }
  try {
    for (;;) {
      const item = queue.shift();
      if (item) {
        yield item;
        continue;
      }
      if (failure !== null) throw failure;
      if (running === 0) return;
      await new Promise<void>((r) => (wake = r));
    }
  } finally {
    outer?.removeEventListener('abort', onOuter);
    if (running > 0) stopAll.abort();
  }
}

/** Choice i of n draws with seed + i, so a seeded request gives n different, reproducible answers. */
function choiceOptions(opts: GenerateOptions, i: number): GenerateOptions {
  return opts.seed === undefined || i === 0 ? opts : { ...opts, seed: (opts.seed + i) >>> 0 };
}

function utf8Bytes(s: string): number[] {
  return [...new TextEncoder().encode(s)];
}

/** Chat's logprobs entry of one token. */
function chatLogprob(l: TokenLogprobs): TokenLogprob {
  return {
    token: l.token,
    logprob: l.logprob,
    bytes: utf8Bytes(l.token),
    top_logprobs: l.top.map((t) => ({ token: t.token, logprob: t.logprob, bytes: utf8Bytes(t.token) })),
  };
}

/** Completions' logprobs block of tokens starting at text offset `offset`. */
function completionLogprobs(list: readonly TokenLogprobs[], offset: number, top: number): CompletionLogprobs {
  const text_offset: number[] = [];
  let at = offset;
  for (const l of list) {
    text_offset.push(at);
    at += l.token.length;
  }
  return {
    tokens: list.map((l) => l.token),
    token_logprobs: list.map((l) => l.logprob),
    top_logprobs:
      top > 0 ? list.map((l) => Object.fromEntries(l.top.map((t) => [t.token, t.logprob]))) : null,
    text_offset,
  };
}

/**
 * Streamed text of a reply that may hold tool calls: text is passed on until it may be the start
 * of a call (the format's opener, or for a bare-JSON format a reply opening with "{"); from there
 * it is kept, and at the end parsed into calls (or released as text if it holds none).
 */
class ToolStream {
  private held = '';
  private inCall = false;
  private sent = false;

  constructor(
    private readonly format: ToolFormat,
    private readonly tools: readonly ToolParam[],
  ) {}

  /** Text safe to stream now. */
  push(text: string): string {
    if (this.inCall) {
      this.held += text;
      return '';
    }
    const all = this.held + text;
    const opener = this.format.opener;
    if (opener === null) {
      // A bare JSON call can only be the whole reply.
      if (this.sent) return text;
      const lead = all.trimStart();
      if (
        lead === '' ||
        '<|python_tag|>'.startsWith(lead) ||
        lead.startsWith('{') ||
        lead.startsWith('<|python_tag|>')
      ) {
        this.held = all;
        this.inCall = lead.length > 0 && (lead.startsWith('{') || lead.startsWith('<|python_tag|>'));
        return '';
      }
      this.held = '';
      this.sent = true;
      return all;
    }
    const at = all.indexOf(opener);
    if (at >= 0) {
      this.inCall = true;
      this.held = all.slice(at);
      this.sent ||= at > 0;
      return all.slice(0, at);
    }
    // Keep back a tail that could begin the opener.
    let keep = 0;
    for (let k = Math.min(opener.length - 1, all.length); k > 0; k--) {
      if (opener.startsWith(all.slice(all.length - k))) {
        keep = k;
        break;
      }
    }
    this.held = all.slice(all.length - keep);
    const out = all.slice(0, all.length - keep);
    this.sent ||= out.length > 0;
    return out;
  }

  /** At the end: the calls, or the held text released. */
  end(): { text: string; calls: ReturnType<typeof toToolCalls> } {
    const parsed = this.inCall ? this.format.parse(this.held, this.tools) : null;
    if (parsed) return { text: parsed.content, calls: toToolCalls(parsed.calls) };
    return { text: this.held, calls: [] };
  }
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
      const texts = choices.map(() => '');
      const logprobs: TokenLogprobs[][] = choices.map(() => []);
      const results: GenerateResult[] = [];
      for await (const item of runChoices(engine, choices, observe)) {
        if ('token' in item) {
          texts[item.index] += item.token.text;
          if (item.token.logprob) logprobs[item.index]?.push(item.token.logprob);
        } else results[item.index] = item.result;
      }
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

/** Compiles the request's grammar up front: one the engine refuses is a 400 naming its field. */
async function checkGrammar(engine: KilnEngine, grammar: GrammarSpec, param: string): Promise<void> {
  try {
    await engine.checkGrammar(grammar);
  } catch (e) {
    if (e instanceof InvalidRequestError) {
      throw new OpenAiRequestError(`${param}: ${e.message}`, param);
    }
    throw e;
  }
}

/** The field a grammar came from, for a grammar the engine cannot compile. */
function grammarParam(req: ChatCompletionRequest | CompletionRequest, fromTools: boolean): string {
  if (fromTools) return 'tools';
  return req.response_format?.type === 'json_schema'
    ? 'response_format.json_schema.schema'
    : 'response_format';
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
      const texts = choices.map(() => '');
      const logprobs: TokenLogprobs[][] = choices.map(() => []);
      const results: GenerateResult[] = [];
      for await (const item of runChoices(engine, choices, observe)) {
        if ('token' in item) {
          texts[item.index] += item.token.text;
          if (item.token.logprob) logprobs[item.index]?.push(item.token.logprob);
        } else results[item.index] = item.result;
      }
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
