/**
 * `kiln serve`: an OpenAI-compatible HTTP server (fastify) over one engine. Requests run
 * concurrently through the engine's continuous batching, up to `maxConcurrent`; up to `maxQueue`
 * more wait, and beyond that a request gets 429 with Retry-After. Every body is validated by a JSON
 * schema; errors are OpenAI-shaped ({"error": {"message", "type", "param", "code"}}) and a 500
 * never carries a stack. A client that disconnects cancels its request, which frees its KV blocks.
 */
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import { InvalidRequestError, KilnError } from '../errors.js';
import type { ChatMessage } from '../io/tokenizer.js';
import { usage } from '../api/openai/chat.js';
import type { Engine } from '../engine/engine.js';
import type { FinishReason, GenerateOptions } from '../api/types.js';

export interface ServeOptions {
  engine: Engine;
  /** The id clients name in `model` (and /v1/models lists). */
  modelId: string;
  host?: string;
  port?: number;
  apiKey?: string;
  /** Requests generating at once (batched together). Default 16. */
  maxConcurrent?: number;
  /** Requests waiting for a slot before 429. Default 64. */
  maxQueue?: number;
  /** Largest accepted body in bytes. Default 1 MiB. */
  bodyLimit?: number;
  /** Messages about the server's life (start, shutdown). */
  log?: (line: string) => void;
}

export interface RunningServer {
  app: FastifyInstance;
  url: string;
  /** Stops accepting; in-flight requests finish, or are cancelled after `graceMs`. */
  close(graceMs?: number): Promise<void>;
}

/** An error with its HTTP status and OpenAI error fields. */
export class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly type: string,
    readonly param: string | null = null,
    readonly code: string | null = null,
  ) {
    super(message);
  }
}

const badRequest = (message: string, param: string | null = null, code: string | null = null) =>
  new HttpError(400, message, 'invalid_request_error', param, code);

const MESSAGE = {
  type: 'object',
  required: ['role', 'content'],
  additionalProperties: false,
  properties: {
    role: { type: 'string', enum: ['system', 'developer', 'user', 'assistant'] },
    content: {
      anyOf: [
        { type: 'string' },
        {
          type: 'array',
          items: {
            type: 'object',
            required: ['type', 'text'],
            additionalProperties: false,
            properties: { type: { type: 'string', enum: ['text'] }, text: { type: 'string' } },
          },
        },
      ],
    },
    name: { type: 'string' },
  },
} as const;

/** Sampling fields shared by both completion endpoints. */
const SAMPLING = {
  model: { type: 'string', minLength: 1 },
  stream: { type: 'boolean' },
  stream_options: {
    type: ['object', 'null'],
    additionalProperties: false,
    properties: { include_usage: { type: 'boolean' } },
  },
  max_tokens: { type: ['integer', 'null'], minimum: 1 },
  max_completion_tokens: { type: ['integer', 'null'], minimum: 1 },
  temperature: { type: ['number', 'null'], minimum: 0, maximum: 2 },
  top_p: { type: ['number', 'null'], exclusiveMinimum: 0, maximum: 1 },
  seed: { type: ['integer', 'null'], minimum: 0, maximum: 4294967295 },
  stop: {
    anyOf: [
      { type: 'string', minLength: 1 },
      { type: 'array', items: { type: 'string', minLength: 1 }, maxItems: 4 },
      { type: 'null' },
    ],
  },
  n: { type: ['integer', 'null'], minimum: 1, maximum: 1 },
  logprobs: { type: ['boolean', 'null'] },
  user: { type: 'string' },
} as const;

const CHAT_BODY = {
  type: 'object',
  required: ['model', 'messages'],
  additionalProperties: false,
  properties: { ...SAMPLING, messages: { type: 'array', minItems: 1, items: MESSAGE } },
} as const;

const COMPLETION_BODY = {
  type: 'object',
  required: ['model', 'prompt'],
  additionalProperties: false,
  properties: {
    ...SAMPLING,
    prompt: {
      anyOf: [{ type: 'string' }, { type: 'array', items: { type: 'string' }, minItems: 1, maxItems: 1 }],
    },
  },
} as const;

interface SamplingBody {
  model: string;
  stream?: boolean;
  stream_options?: { include_usage?: boolean } | null;
  max_tokens?: number | null;
  max_completion_tokens?: number | null;
  temperature?: number | null;
  top_p?: number | null;
  seed?: number | null;
  stop?: string | string[] | null;
  n?: number | null;
  logprobs?: boolean | null;
}
interface ChatBody extends SamplingBody {
  messages: { role: ChatMessage['role'] | 'developer'; content: string | { type: 'text'; text: string }[] }[];
}
interface CompletionBody extends SamplingBody {
  prompt: string | string[];
}

/** Holds back text that might be the start of a stop string; reports where one completes. */
export class StopMatcher {
  private pending = '';
  private readonly longest: number;
  constructor(private readonly stops: readonly string[]) {
    this.longest = Math.max(0, ...stops.map((s) => s.length));
  }

  /** Text safe to emit now, and whether a stop string was reached (the text before it is emitted). */
  push(text: string): { emit: string; stopped: boolean } {
    this.pending += text;
    let cut = -1;
    for (const s of this.stops) {
      const i = this.pending.indexOf(s);
      if (i >= 0 && (cut < 0 || i < cut)) cut = i;
    }
    if (cut >= 0) {
      const emit = this.pending.slice(0, cut);
      this.pending = '';
      return { emit, stopped: true };
    }
    const keep = Math.min(this.pending.length, this.longest - 1);
    const emit = this.pending.slice(0, this.pending.length - keep);
    this.pending = this.pending.slice(this.pending.length - keep);
    return { emit, stopped: false };
  }

  /** What is still held back, at the end. */
  flush(): string {
    const rest = this.pending;
    this.pending = '';
    return rest;
  }
}

/** Counters behind /metrics. */
class Metrics {
  requests = new Map<string, number>();
  promptTokens = 0;
  completionTokens = 0;
  active = 0;
  queued = 0;
  rejected = 0;
  cancelled = 0;
  private readonly window: { t: number; n: number }[] = [];

  count(route: string, status: number): void {
    const key = `route="${route}",status="${status}"`;
    this.requests.set(key, (this.requests.get(key) ?? 0) + 1);
  }

  tokens(n: number): void {
    this.completionTokens += n;
    this.window.push({ t: Date.now(), n });
  }

  /** Generated tokens per second over the last 10 s. */
  rate(): number {
    const now = Date.now();
    while (this.window.length > 0 && now - (this.window[0] as { t: number }).t > 10_000) this.window.shift();
    return this.window.reduce((a, w) => a + w.n, 0) / 10;
  }
}

/** A counting gate: `maxConcurrent` holders, `maxQueue` waiters, else refuse. */
class Gate {
  private active = 0;
  private readonly waiters: (() => void)[] = [];
  constructor(
    private readonly max: number,
    private readonly queue: number,
    private readonly metrics: Metrics,
  ) {}

  async enter(signal: AbortSignal): Promise<() => void> {
    if (this.active >= this.max) {
      if (this.waiters.length >= this.queue) {
        this.metrics.rejected++;
        throw new HttpError(
          429,
          `the server is busy: ${this.active} requests running and ${this.waiters.length} queued (the most it queues)`,
          'rate_limit_exceeded',
          null,
          'rate_limit_exceeded',
        );
      }
      this.metrics.queued++;
      try {
        await new Promise<void>((resolve, reject) => {
          const go = () => resolve();
          this.waiters.push(go);
          signal.addEventListener(
            'abort',
            () => {
              const i = this.waiters.indexOf(go);
              if (i >= 0) this.waiters.splice(i, 1);
              reject(new HttpError(499, 'client closed the request', 'cancelled'));
            },
            { once: true },
          );
        });
      } finally {
        this.metrics.queued--;
      }
    }
    this.active++;
    this.metrics.active = this.active;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.active--;
      this.metrics.active = this.active;
      this.waiters.shift()?.();
    };
  }
}

function sendError(reply: FastifyReply, e: HttpError): void {
  // A full queue drains within about a request's time; ask clients to come back in a second.
  if (e.status === 429) void reply.header('retry-after', '1');
  void reply
    .code(e.status)
    .header('content-type', 'application/json')
    .send({ error: { message: e.message, type: e.type, param: e.param, code: e.code } });
}

/** Maps anything thrown to an HttpError; unexpected errors become a 500 without details. */
function toHttpError(e: unknown, log: (line: string) => void): HttpError {
  if (e instanceof HttpError) return e;
  if (e instanceof InvalidRequestError) return badRequest(e.message);
  const f = e as {
    statusCode?: number;
    code?: string;
    validation?: { instancePath?: string; message?: string; params?: Record<string, unknown> }[];
    message?: string;
  };
  if (f.validation) {
    const v = f.validation[0];
    const path = (v?.instancePath ?? '').replace(/^\//, '').replace(/\//g, '.');
    const extra = v?.params?.additionalProperty;
    const param = typeof extra === 'string' ? (path ? `${path}.${extra}` : extra) : path || null;
    return badRequest(`invalid request body: ${param ?? 'body'} ${v?.message ?? 'is invalid'}`, param);
  }
  if (f.code === 'FST_ERR_CTP_BODY_TOO_LARGE')
    return new HttpError(413, 'request body too large', 'invalid_request_error', null, 'request_too_large');
  if (f.code === 'FST_ERR_CTP_EMPTY_JSON_BODY' || f.code === 'FST_ERR_CTP_INVALID_MEDIA_TYPE') {
    return badRequest(f.message ?? 'bad body');
  }
  if (f.statusCode === 400) return badRequest(f.message ?? 'malformed request');
  if (e instanceof KilnError) log(`request failed: ${e.message}`);
  else log(`internal error: ${(e as Error)?.message ?? String(e)}`);
  return new HttpError(500, 'internal server error', 'server_error');
}

export async function startServer(opts: ServeOptions): Promise<RunningServer> {
  const { engine, modelId } = opts;
  const log = opts.log ?? (() => undefined);
  const metrics = new Metrics();
  const gate = new Gate(opts.maxConcurrent ?? 16, opts.maxQueue ?? 64, metrics);
  const inflight = new Set<AbortController>();
  const app = Fastify({
    bodyLimit: opts.bodyLimit ?? 1 << 20,
    logger: false,
    return503OnClosing: true,
    // Validate, never repair: no type coercion ("5" is not a number), unknown fields are refused
    // (not silently dropped), and nulls stay nulls.
    ajv: { customOptions: { coerceTypes: false, removeAdditional: false, useDefaults: false } },
  });

  // JSON bodies must be valid UTF-8: a lenient decoder would turn bad bytes into U+FFFD silently.
  app.removeContentTypeParser('application/json');
  app.addContentTypeParser('application/json', { parseAs: 'buffer' }, (_req, body, done) => {
    let text: string;
    try {
      text = new TextDecoder('utf-8', { fatal: true }).decode(body as Buffer);
    } catch {
      done(badRequest('the request body is not valid UTF-8'), undefined);
      return;
    }
    try {
      done(null, JSON.parse(text));
    } catch (e) {
      done(badRequest(`the request body is not valid JSON: ${(e as Error).message}`), undefined);
    }
  });

  app.addHook('onRequest', async (req) => {
    if (!opts.apiKey || !req.url.startsWith('/v1/')) return;
    if (req.headers.authorization !== `Bearer ${opts.apiKey}`) {
      throw new HttpError(
        401,
        'invalid API key (send Authorization: Bearer <key>)',
        'authentication_error',
        null,
        'invalid_api_key',
      );
    }
  });
  app.addHook('onResponse', async (req, reply) => {
    metrics.count(req.routeOptions.url ?? 'unknown', reply.statusCode);
  });
  app.setErrorHandler((e, _req, reply) => sendError(reply, toHttpError(e, log)));
  app.setNotFoundHandler((req, reply) =>
    sendError(
      reply,
      new HttpError(
        404,
        `no route ${req.method} ${req.url.split('?')[0]}`,
        'invalid_request_error',
        null,
        'not_found',
      ),
    ),
  );

  app.get('/health', async () => ({ status: 'ok', model: modelId }));
  const started = Math.floor(Date.now() / 1000);
  app.get('/v1/models', async () => ({
    object: 'list',
    data: [
      {
        id: modelId,
        object: 'model',
        created: started,
        owned_by: 'kiln',
      },
    ],
  }));
  app.get('/metrics', async (_req, reply) => {
    const s = engine.stats();
    const lines = [
      '# HELP kiln_requests_total HTTP requests by route and status.',
      '# TYPE kiln_requests_total counter',
      ...[...metrics.requests].map(([k, v]) => `kiln_requests_total{${k}} ${v}`),
      '# TYPE kiln_prompt_tokens_total counter',
      `kiln_prompt_tokens_total ${metrics.promptTokens}`,
      '# TYPE kiln_completion_tokens_total counter',
      `kiln_completion_tokens_total ${metrics.completionTokens}`,
      '# TYPE kiln_requests_active gauge',
      `kiln_requests_active ${metrics.active}`,
      '# TYPE kiln_queue_depth gauge',
      `kiln_queue_depth ${metrics.queued}`,
      '# TYPE kiln_requests_rejected_total counter',
      `kiln_requests_rejected_total ${metrics.rejected}`,
      '# TYPE kiln_requests_cancelled_total counter',
      `kiln_requests_cancelled_total ${metrics.cancelled}`,
      '# TYPE kiln_scheduler_running gauge',
      `kiln_scheduler_running ${s.running}`,
      '# TYPE kiln_scheduler_waiting gauge',
      `kiln_scheduler_waiting ${s.waiting}`,
      '# TYPE kiln_kv_blocks_used gauge',
      `kiln_kv_blocks_used ${s.blocksUsed}`,
      '# TYPE kiln_kv_blocks_free gauge',
      `kiln_kv_blocks_free ${s.blocksFree}`,
      '# TYPE kiln_kv_blocks_cached gauge',
      `kiln_kv_blocks_cached ${s.blocksCached}`,
      '# TYPE kiln_prefix_cache_hit_rate gauge',
      `kiln_prefix_cache_hit_rate ${s.prefixCacheHitRate}`,
      '# TYPE kiln_generation_tokens_per_second gauge',
      `kiln_generation_tokens_per_second ${metrics.rate()}`,
    ];
    void reply.header('content-type', 'text/plain; version=0.0.4').send(lines.join('\n') + '\n');
  });

  /** Shared by both endpoints: validates, waits for a slot, generates, answers (JSON or SSE). */
  const complete = async (
    req: FastifyRequest,
    reply: FastifyReply,
    body: SamplingBody,
    promptIds: number[],
    shape: 'chat' | 'text',
  ) => {
    if (body.model !== modelId) {
      throw new HttpError(
        404,
        `model ${JSON.stringify(body.model)} is not served here (this server serves ${JSON.stringify(modelId)})`,
        'invalid_request_error',
        'model',
        'model_not_found',
      );
    }
    if (body.logprobs) throw badRequest('logprobs are not supported', 'logprobs', 'unsupported');
    const room = engine.contextLength - promptIds.length;
    if (room < 1) {
      throw badRequest(
        `the prompt is ${promptIds.length} tokens; this model's context is ${engine.contextLength} tokens, which leaves no room to generate`,
        shape === 'chat' ? 'messages' : 'prompt',
        'context_length_exceeded',
      );
    }
    const maxTokens = body.max_completion_tokens ?? body.max_tokens ?? room;
    if (maxTokens > room) {
      throw badRequest(
        `max_tokens ${maxTokens} plus the prompt's ${promptIds.length} tokens exceed the context of ${engine.contextLength} tokens (at most ${room} here)`,
        body.max_completion_tokens != null ? 'max_completion_tokens' : 'max_tokens',
        'context_length_exceeded',
      );
    }
    const abort = new AbortController();
    // The client going away (before the answer is complete) cancels the generation.
    reply.raw.on('close', () => {
      if (!reply.raw.writableFinished) {
        if (!abort.signal.aborted) metrics.cancelled++;
        abort.abort();
      }
    });
    const release = await gate.enter(abort.signal);
    inflight.add(abort);
    try {
      const gen: GenerateOptions = {
        maxTokens,
        signal: abort.signal,
        ...(body.temperature != null ? { temperature: body.temperature } : {}),
        ...(body.top_p != null ? { topP: body.top_p } : {}),
        ...(body.seed != null ? { seed: body.seed } : {}),
      };
      const stops = body.stop == null ? [] : typeof body.stop === 'string' ? [body.stop] : body.stop;
      const matcher = new StopMatcher(stops);
      const generation = engine.generate(promptIds, gen);
      metrics.promptTokens += promptIds.length;
      const id = `${shape === 'chat' ? 'chatcmpl' : 'cmpl'}-${Date.now().toString(36)}${Math.random().toString(36).slice(2, 8)}`;
      const created = Math.floor(Date.now() / 1000);
      const object = shape === 'chat' ? 'chat.completion.chunk' : 'text_completion';
      const choice = (text: string | null, finish: FinishReason | null, first = false) =>
        shape === 'chat'
          ? {
              index: 0,
              delta: text === null ? {} : first ? { role: 'assistant', content: text } : { content: text },
              finish_reason: finish,
              logprobs: null,
            }
          : { index: 0, text: text ?? '', finish_reason: finish, logprobs: null };
      let text = '';
      let completionTokens = 0;
      let finish: FinishReason = 'length';
      /** One server-sent event (streaming only). */
      const send = (data: unknown) => {
        if (!reply.raw.destroyed) reply.raw.write(`data: ${JSON.stringify(data)}\n\n`);
      };
      if (body.stream) {
        reply.hijack();
        reply.raw.writeHead(200, {
          'content-type': 'text/event-stream',
          'cache-control': 'no-cache',
          connection: 'keep-alive',
        });
        // Writes after a disconnect fail quietly: the generation is being cancelled anyway.
        reply.raw.on('error', () => undefined);
        try {
          await streamTokens();
        } catch (e) {
          // Headers are out: the error travels as an event, then the stream ends.
          const h = toHttpError(e, log);
          send({ error: { message: h.message, type: h.type, param: h.param, code: h.code } });
        }
        reply.raw.end();
        return;
      }
      async function streamTokens(): Promise<void> {
        if (shape === 'chat')
          send({ id, object, created, model: modelId, choices: [choice('', null, true)] });
        for await (const t of generation) {
          if (t.id !== null) {
            completionTokens++;
            metrics.tokens(1);
          }
          const m = matcher.push(t.text);
          if (m.emit) send({ id, object, created, model: modelId, choices: [choice(m.emit, null)] });
          if (m.stopped) {
            finish = 'stop';
            abort.abort();
            break;
          }
        }
        const r = await generation.result();
        if (finish !== 'stop') {
          finish = r.finishReason === 'abort' ? 'stop' : r.finishReason;
          const rest = matcher.flush();
          if (rest) send({ id, object, created, model: modelId, choices: [choice(rest, null)] });
        }
        if (!abort.signal.aborted || finish === 'stop') {
          send({ id, object, created, model: modelId, choices: [choice(null, finish)] });
          if (body.stream_options?.include_usage) {
            send({
              id,
              object,
              created,
              model: modelId,
              choices: [],
              usage: usage(promptIds.length, completionTokens),
            });
          }
          if (!reply.raw.destroyed) reply.raw.write('data: [DONE]\n\n');
        }
      }
      for await (const t of generation) {
        if (t.id !== null) {
          completionTokens++;
          metrics.tokens(1);
        }
        const m = matcher.push(t.text);
        text += m.emit;
        if (m.stopped) {
          finish = 'stop';
          abort.abort();
          break;
        }
      }
      if (finish !== 'stop') {
        const r = await generation.result();
        finish = r.finishReason;
        text += matcher.flush();
      }
      const u = usage(promptIds.length, completionTokens);
      return shape === 'chat'
        ? {
            id,
            object: 'chat.completion',
            created,
            model: modelId,
            choices: [
              {
                index: 0,
                message: { role: 'assistant', content: text },
                finish_reason: finish,
                logprobs: null,
              },
            ],
            usage: u,
          }
        : {
            id,
            object: 'text_completion',
            created,
            model: modelId,
            choices: [{ index: 0, text, finish_reason: finish, logprobs: null }],
            usage: u,
          };
    } finally {
      inflight.delete(abort);
      release();
    }
  };

  app.post('/v1/chat/completions', { schema: { body: CHAT_BODY } }, async (req, reply) => {
    const body = req.body as ChatBody;
    const messages: ChatMessage[] = body.messages.map((m) => ({
      role: m.role === 'developer' ? 'system' : m.role,
      content: typeof m.content === 'string' ? m.content : m.content.map((p) => p.text).join(''),
    }));
    if (messages.every((m) => m.content === '')) throw badRequest('every message is empty', 'messages');
    // Models without a chat template (e.g. base models) complete the messages' text as is.
    const ids = engine.tokenizer.hasChatTemplate
      ? engine.encodeChat(messages)
      : engine.encodePrompt(messages.map((m) => m.content).join('\n\n'));
    return complete(req, reply, body, ids, 'chat');
  });

  app.post('/v1/completions', { schema: { body: COMPLETION_BODY } }, async (req, reply) => {
    const body = req.body as CompletionBody;
    const prompt = typeof body.prompt === 'string' ? body.prompt : (body.prompt[0] as string);
    return complete(req, reply, body, engine.encodePrompt(prompt), 'text');
  });

  const address = await app.listen({ host: opts.host ?? '127.0.0.1', port: opts.port ?? 8080 });
  log(`kiln serve: ${modelId} on ${address}`);
  return {
    app,
    url: address,
    async close(graceMs = 10_000) {
      const closing = app.close();
      const timer = setTimeout(() => {
        for (const a of inflight) a.abort();
      }, graceMs);
      try {
        await closing;
      } finally {
        clearTimeout(timer);
      }
    },
  };
}
