/**
 * `kiln serve`: the OpenAI API over HTTP (fastify) for one engine. The API itself (validation,
 * prompts, stop strings, ids, chunks, usage) is src/api/openai, the same code the library and the
 * browser run; this file is transport: JSON bodies, authentication, routing, server-sent events,
 * a concurrency gate (up to `maxConcurrent` requests generate at once, batched by the engine; up to
 * `maxQueue` more wait; beyond that 429 with Retry-After), metrics and shutdown. Errors are
 * OpenAI-shaped ({"error": {"message", "type", "param", "code"}}) and a 500 never carries a stack.
 * A client that disconnects cancels its request, which frees its KV blocks. The errors and their
 * mapping are http-errors.ts.
 */
import { timingSafeEqual } from 'node:crypto';
import { isIP } from 'node:net';
import Fastify, { type FastifyInstance, type FastifyReply } from 'fastify';
import type { KilnEngine } from '../api/engine-api.js';
import { OpenAiChat, OpenAiCompletions } from '../api/openai/openai.js';
import type { CompletionObserver } from '../api/openai/types.js';
import { validateChatRequest, validateCompletionRequest } from '../api/openai/validate.js';
import type { SchedulerStats } from '../engine/scheduler.js';
import { badRequest, HttpError, recoveringError, sendError, toHttpError } from './http-errors.js';

export { HttpError } from './http-errors.js';

export interface ServeOptions {
  /** The engine, and its scheduler's (and, if it has them, its GPU's) figures for /metrics. */
  engine: KilnEngine & {
    stats(): SchedulerStats;
    gpuStats?(): { liveBuffers: number; allocatedBytes: number };
    /** True while the engine rebuilds its GPU state after a device loss (requests get 503). */
    readonly recovering?: boolean;
  };
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
  /**
   * Host header names (without port) the server answers; others get 403, which defeats DNS
   * rebinding. Default: the loopback names when bound to a loopback address, anything otherwise
   * (a server bound to a public address is reached by names the server cannot know).
   */
  allowedHosts?: readonly string[];
  /** Origins allowed to call from a browser (CORS); none by default. "*" allows any. */
  corsOrigins?: readonly string[];
}

export interface RunningServer {
  app: FastifyInstance;
  url: string;
  /** Stops accepting; in-flight requests finish, or are cancelled after `graceMs`. */
  close(graceMs?: number): Promise<void>;
}

/** True for loopback addresses and names. */
function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || (isIP(host) === 4 && host.startsWith('127.'));
}

/** The name of a Host header without its port ("[::1]:8080" -> "[::1]"); null when absent. */
function hostName(header: string | undefined): string | null {
  if (!header) return null;
  const h = header.toLowerCase();
  if (h.startsWith('[')) {
    const end = h.indexOf(']');
    return end < 0 ? null : h.slice(0, end + 1);
  }
  const colon = h.indexOf(':');
  return colon < 0 ? h : h.slice(0, colon);
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

/** Memory gauges of the server process and its GPU device, for spotting leaks over time. */
function processGauges(gpu: { liveBuffers: number; allocatedBytes: number } | undefined): string[] {
  const mem = process.memoryUsage();
  return [
    '# TYPE process_resident_memory_bytes gauge',
    `process_resident_memory_bytes ${mem.rss}`,
    '# TYPE nodejs_heap_used_bytes gauge',
    `nodejs_heap_used_bytes ${mem.heapUsed}`,
    ...(gpu
      ? [
          '# TYPE kiln_gpu_buffers gauge',
          `kiln_gpu_buffers ${gpu.liveBuffers}`,
          '# TYPE kiln_gpu_allocated_bytes gauge',
          `kiln_gpu_allocated_bytes ${gpu.allocatedBytes}`,
        ]
      : []),
  ];
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
  });

  // JSON bodies must be valid UTF-8: a lenient decoder would turn bad bytes into U+FFFD silently.
  // JSON only: every other media type (fastify's text/plain included) is a 415.
  app.removeAllContentTypeParsers();
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

  const host = opts.host ?? '127.0.0.1';
  const allowedHosts =
    opts.allowedHosts ?? (isLoopback(host) ? ['localhost', '127.0.0.1', '[::1]', '::1'] : null);
  const cors = opts.corsOrigins ?? [];
  const expectedAuth = opts.apiKey ? Buffer.from(`Bearer ${opts.apiKey}`) : null;
  app.addHook('onRequest', async (req, reply) => {
    if (allowedHosts) {
      const name = hostName(req.headers.host);
      if (name === null || !allowedHosts.includes(name)) {
        throw new HttpError(
          403,
          `Host ${JSON.stringify(req.headers.host ?? '')} is not served here (allowed: ${allowedHosts.join(', ')}; see --allowed-host)`,
          'permission_error',
          null,
          'host_not_allowed',
        );
      }
    }
    const origin = req.headers.origin;
    if (origin !== undefined && (cors.includes('*') || cors.includes(origin))) {
      void reply.header('access-control-allow-origin', cors.includes('*') ? '*' : origin);
      void reply.header('vary', 'Origin');
      if (req.method === 'OPTIONS') {
        void reply
          .header('access-control-allow-methods', 'GET, POST, OPTIONS')
          .header('access-control-allow-headers', 'authorization, content-type')
          .header('access-control-max-age', '600')
          .code(204)
          .send();
        return reply;
      }
    }
    if (!req.url.startsWith('/v1/')) return;
    if (expectedAuth) {
      const given = Buffer.from(req.headers.authorization ?? '');
      // Constant time: how much of the key matched must not show in the response time.
      const ok = given.length === expectedAuth.length && timingSafeEqual(given, expectedAuth);
      if (!ok) {
        throw new HttpError(
          401,
          'invalid API key (send Authorization: Bearer <key>)',
          'authentication_error',
          null,
          'invalid_api_key',
        );
      }
    }
    // While the device is rebuilt nothing can generate: say so at once rather than hold the client.
    if (req.method === 'POST' && engine.recovering) {
      throw recoveringError(
        'the GPU device was lost and the server is recovering it; retry after the Retry-After seconds',
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

  app.get('/health', async () => ({
    status: engine.recovering ? 'recovering' : 'ok',
    model: modelId,
    memory_plan: engine.memoryPlan,
  }));
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
  app.get<{ Params: { id: string } }>('/v1/models/:id', async (req) => {
    if (req.params.id !== modelId) {
      throw new HttpError(
        404,
        `model ${JSON.stringify(req.params.id)} is not served here (this server serves ${JSON.stringify(modelId)})`,
        'invalid_request_error',
        'model',
        'model_not_found',
      );
    }
    return { id: modelId, object: 'model', created: started, owned_by: 'kiln' };
  });
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
      ...processGauges(engine.gpuStats?.()),
    ];
    void reply.header('content-type', 'text/plain; version=0.0.4').send(lines.join('\n') + '\n');
  });

  // The one OpenAI implementation; a model without a chat template completes the messages' text,
  // since most clients only speak chat.
  const api = { withoutTemplate: 'plain-text' as const, requireModel: true, modelName: modelId };
  const chat = new OpenAiChat(engine, api);
  const completions = new OpenAiCompletions(engine, api);
  const observe: CompletionObserver = {
    onPrompt: (n) => (metrics.promptTokens += n),
    onToken: () => metrics.tokens(1),
  };

  /**
   * One request of either endpoint: refuses a model this server does not serve, waits for a slot,
   * runs `create`, and answers with JSON or, streaming, with server-sent events.
   */
  const serve = async <Done>(
    reply: FastifyReply,
    body: { model?: string; stream?: boolean | null },
    create: (signal: AbortSignal) => Promise<Done | AsyncIterable<unknown>>,
  ): Promise<Done | undefined> => {
    if (body.model !== modelId) {
      throw new HttpError(
        404,
        `model ${JSON.stringify(body.model)} is not served here (this server serves ${JSON.stringify(modelId)})`,
        'invalid_request_error',
        'model',
        'model_not_found',
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
      const answer = await create(abort.signal);
      if (!body.stream) return answer as Done;
      /** One server-sent event; writes after a disconnect are dropped (the request is cancelled). */
      const send = (data: unknown) => {
        if (!reply.raw.destroyed) reply.raw.write(`data: ${JSON.stringify(data)}\n\n`);
      };
      reply.hijack();
      // A hijacked reply skips fastify's onResponse: it is counted here, a dropped stream as 499.
      const route = reply.request.routeOptions.url ?? 'unknown';
      reply.raw.once('close', () => metrics.count(route, reply.raw.writableFinished ? 200 : 499));
      reply.raw.writeHead(200, {
        ...(reply.getHeaders() as Record<string, string>),
        'content-type': 'text/event-stream',
        'cache-control': 'no-cache',
        connection: 'keep-alive',
      });
      reply.raw.on('error', () => undefined);
      try {
        for await (const chunk of answer as AsyncIterable<unknown>) send(chunk);
        if (!reply.raw.destroyed) reply.raw.write('data: [DONE]\n\n');
      } catch (e) {
        // Headers are out: the error travels as an event, then the stream ends.
        const h = toHttpError(e, log);
        send({ error: { message: h.message, type: h.type, param: h.param, code: h.code } });
      }
      reply.raw.end();
      return undefined;
    } finally {
      inflight.delete(abort);
      release();
    }
  };

  app.post('/v1/chat/completions', async (req, reply) => {
    const body = validateChatRequest(req.body, { requireModel: true });
    return serve(reply, body, (signal) => chat.respond({ ...body, signal }, observe));
  });

  app.post('/v1/completions', async (req, reply) => {
    const body = validateCompletionRequest(req.body, { requireModel: true });
    return serve(reply, body, (signal) => completions.respond({ ...body, signal }, observe));
  });

  const address = await app.listen({ host, port: opts.port ?? 8080 });
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
