/**
 * The soak test: `kiln serve` run as its own process for a set time under a seeded mix of requests
 * at bounded concurrency on loopback, sampled all along through /metrics. Every request must end
 * (answered, refused on purpose, or cancelled by the client) within its deadline; at the end the
 * server must be idle with every KV block returned. Reports time to first token and inter-token
 * latency percentiles, outcomes by kind, and the server's resident memory, JS heap, live GPU
 * buffers and KV blocks over time with their least-squares slopes.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { request } from 'node:http';
import { Rng } from '../../src/engine/sampling/rng.js';

export interface SoakOptions {
  /** Path of the `kiln` command (bin/kiln.js; needs `npm run build`). */
  kiln: string;
  /** The model folder to serve. */
  model: string;
  durationMs: number;
  concurrency: number;
  /** Seconds between /metrics samples. */
  sampleEveryS?: number;
  seed?: number;
  /** Extra `kiln serve` arguments (e.g. --memory-limit). */
  serveArgs?: string[];
  /** Progress lines (one per sample). */
  log?: (line: string) => void;
}

export interface Sample {
  t_s: number;
  rss_mib: number;
  heap_mib: number;
  gpu_buffers: number;
  kv_blocks_used: number;
  running: number;
  waiting: number;
}

export interface SoakReport {
  duration_s: number;
  concurrency: number;
  requests: number;
  /** Requests that never ended within their deadline (must be 0). */
  unfinished: number;
  /** By kind: "ok stream", "ok plain", "cancelled", "disconnected", "400 (intended)", or the unexpected ones. */
  outcomes: Record<string, number>;
  unexpected: number;
  ttft_ms: { p50: number; p99: number; n: number };
  itl_ms: { p50: number; p99: number; n: number };
  tokens: number;
  samples: Sample[];
  slopes_per_hour: { rss_mib: number; heap_mib: number; gpu_buffers: number };
  /** After the load stopped and the server settled. */
  final: { kv_blocks_used: number; running: number; waiting: number; gpu_buffers: number };
}

const STORY =
  'Once upon a time, there was a little girl named Lily. She loved to play outside in the sunshine. ' +
  'One day, she went to the park with her mommy and daddy. She saw a big box on the ground. ';
/**
 * A system prompt every "shared prefix" request starts with (several full 16-token KV blocks).
 * BabyLlama's tokenizer has about one token per character and a 256-token context: "long" prompts
 * are 187-237 tokens.
 */
const SHARED = 'Tom and Sue were friends. They liked to play in the garden with their dog Max every day. ';

type Kind = 'stream' | 'plain' | 'cancel' | 'disconnect' | 'long' | 'shared' | 'bad';
const MIX: [Kind, number][] = [
  ['stream', 30],
  ['plain', 20],
  ['shared', 15],
  ['long', 10],
  ['cancel', 10],
  ['disconnect', 7],
  ['bad', 8],
];

function percentile(xs: number[], p: number): number {
  if (xs.length === 0) return 0;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] as number;
}

/** Least-squares slope of y over t (per second). */
function slope(t: number[], y: number[]): number {
  const n = t.length;
  if (n < 2) return 0;
  const mt = t.reduce((a, b) => a + b, 0) / n;
  const my = y.reduce((a, b) => a + b, 0) / n;
  let num = 0;
  let den = 0;
  for (let i = 0; i < n; i++) {
    num += ((t[i] as number) - mt) * ((y[i] as number) - my);
    den += ((t[i] as number) - mt) ** 2;
  }
  return den === 0 ? 0 : num / den;
}

function parseMetrics(text: string): Map<string, number> {
  const m = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (line.startsWith('#') || !line.trim()) continue;
    const sp = line.lastIndexOf(' ');
    m.set(line.slice(0, sp), Number(line.slice(sp + 1)));
  }
  return m;
}

async function startServe(opts: SoakOptions): Promise<{ child: ChildProcess; url: string }> {
  const child = spawn(
    process.execPath,
    [
      opts.kiln,
      'serve',
      '--model',
      opts.model,
      '--served-model-name',
      'soak',
      '--port',
      '0',
      ...(opts.serveArgs ?? []),
    ],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let stderr = '';
  const url = await new Promise<string>((resolve, reject) => {
    child.stderr?.on('data', (d: Buffer) => {
      stderr += d.toString();
      const m = /kiln serve: \S+ on (http:\/\/\S+)/.exec(stderr);
      if (m) resolve(m[1] as string);
    });
    child.once('exit', (code) =>
      reject(new Error(`kiln serve exited (${code}) before listening: ${stderr}`)),
    );
  });
  return { child, url };
}

/** One request of `kind`; resolves to its outcome. Latencies go into `lat`. */
async function one(
  url: string,
  kind: Kind,
  rnd: () => number,
  lat: { ttft: number[]; itl: number[]; tokens: number },
): Promise<string> {
  const max = 8 + Math.floor(rnd() * 40);
  const story = STORY.slice(0, 20 + Math.floor(rnd() * 60));
  let path = '/v1/completions';
  let body: Record<string, unknown> = {
    model: 'soak',
    prompt: story,
    max_tokens: max,
    temperature: rnd() < 0.5 ? 0 : 0.8,
    seed: 1,
  };
  if (kind === 'stream' || kind === 'cancel' || kind === 'disconnect') body.stream = true;
  if (kind === 'long')
    body = {
      ...body,
      prompt: STORY + STORY.slice(0, Math.floor(rnd() * 50)),
      max_tokens: 8,
      stream: true,
    };
  if (kind === 'shared') {
    path = '/v1/chat/completions';
    body = {
      model: 'soak',
      messages: [
        { role: 'system', content: SHARED },
        { role: 'user', content: story },
      ],
      max_tokens: max,
      temperature: 0,
      stream: true,
    };
  }
  if (kind === 'bad') {
    const bad = [
      '{"model": "soak", "prompt": "x", "max_tokens": -1}',
      '{"model": "soak", "prompt": ',
      '{"model": "soak", "messages": [{"role": "wizard", "content": "x"}]}',
      '{"model": "soak", "prompt": "x", "temperature": "hot"}',
    ];
    const text = bad[Math.floor(rnd() * bad.length)] as string;
    const r = await fetch(`${url}${text.includes('messages') ? '/v1/chat/completions' : path}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: text,
    });
    await r.text();
    return r.status === 400 ? '400 (intended)' : `bad request got ${r.status}`;
  }
  if (kind === 'disconnect') {
    // A raw socket closed after the first event, as a client that goes away does.
    return new Promise((resolve) => {
      const req = request(
        `${url}${path}`,
        { method: 'POST', headers: { 'content-type': 'application/json' } },
        (res) => {
          res.once('data', () => {
            req.destroy();
            resolve(res.statusCode === 200 ? 'disconnected' : `disconnect got ${res.statusCode}`);
          });
          res.once('end', () => resolve('disconnect: ended before the first event'));
        },
      );
      req.on('error', () => resolve('disconnected'));
      req.end(JSON.stringify(body));
    });
  }
  const abort = new AbortController();
  const t0 = performance.now();
  const r = await fetch(`${url}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
    signal: abort.signal,
  });
  if (!body.stream) {
    const j = (await r.json()) as { usage?: { completion_tokens: number } };
    if (r.status !== 200) return `plain got ${r.status}`;
    lat.tokens += j.usage?.completion_tokens ?? 0;
    return 'ok plain';
  }
  if (r.status !== 200 || !r.body) return `${kind} got ${r.status}`;
  const cancelAfter = kind === 'cancel' ? 1 + Math.floor(rnd() * 4) : Infinity;
  let last = 0;
  let events = 0;
  let buf = '';
  const decoder = new TextDecoder();
  try {
    for await (const chunk of r.body) {
      buf += decoder.decode(chunk, { stream: true });
      let i: number;
      while ((i = buf.indexOf('\n\n')) >= 0) {
        const ev = buf.slice(0, i);
        buf = buf.slice(i + 2);
        if (!ev.startsWith('data: ') || ev === 'data: [DONE]') continue;
        if (ev.includes('"error"')) return `${kind}: error event`;
        if (!/"(text|content)":"[^"]/.test(ev)) continue;
        const now = performance.now();
        if (events === 0) lat.ttft.push(now - t0);
        else lat.itl.push(now - last);
        last = now;
        events++;
        lat.tokens++;
        if (events >= cancelAfter) {
          abort.abort();
          return 'cancelled';
        }
      }
    }
  } catch (e) {
    if (abort.signal.aborted) return 'cancelled';
    return `${kind}: ${(e as Error).name}`;
  }
  return kind === 'cancel' ? 'cancel: finished first' : `ok ${kind}`;
}

async function metrics(url: string): Promise<Map<string, number>> {
  return parseMetrics(await (await fetch(`${url}/metrics`)).text());
}

function sampleOf(m: Map<string, number>, t: number): Sample {
  return {
    t_s: Math.round(t),
    rss_mib: +((m.get('process_resident_memory_bytes') ?? 0) / 2 ** 20).toFixed(1),
    heap_mib: +((m.get('nodejs_heap_used_bytes') ?? 0) / 2 ** 20).toFixed(1),
    gpu_buffers: m.get('kiln_gpu_buffers') ?? -1,
    kv_blocks_used: m.get('kiln_kv_blocks_used') ?? -1,
    running: m.get('kiln_scheduler_running') ?? -1,
    waiting: m.get('kiln_scheduler_waiting') ?? -1,
  };
}

/** Runs the soak; the server is stopped (SIGTERM) before it returns. */
export async function runSoak(opts: SoakOptions): Promise<SoakReport> {
  const { child, url } = await startServe(opts);
  const rng = new Rng(opts.seed ?? 1);
  const rnd = () => rng.next();
  const lat = { ttft: [] as number[], itl: [] as number[], tokens: 0 };
  const outcomes: Record<string, number> = {};
  const samples: Sample[] = [];
  let started = 0;
  let ended = 0;
  const t0 = performance.now();
  const deadline = t0 + opts.durationMs;
  const total = MIX.reduce((s, [, w]) => s + w, 0);
  const pick = (): Kind => {
    let x = rnd() * total;
    for (const [k, w] of MIX) if ((x -= w) < 0) return k;
    return 'plain';
  };
  // A request that takes over a minute on this tiny model counts as never ending.
  const REQUEST_DEADLINE_MS = 60_000;
  const worker = async () => {
    while (performance.now() < deadline) {
      const kind = pick();
      started++;
      let timer: ReturnType<typeof setTimeout> | undefined;
      const outcome = await Promise.race([
        one(url, kind, rnd, lat).catch((e: Error) => `${kind}: ${e.name}: ${e.message}`),
        new Promise<string>((r) => (timer = setTimeout(() => r('unfinished'), REQUEST_DEADLINE_MS))),
      ]);
      clearTimeout(timer);
      if (outcome !== 'unfinished') ended++;
      outcomes[outcome] = (outcomes[outcome] ?? 0) + 1;
    }
  };
  const every = (opts.sampleEveryS ?? 10) * 1000;
  const sampler = setInterval(() => {
    void metrics(url)
      .then((m) => {
        const s = sampleOf(m, (performance.now() - t0) / 1000);
        samples.push(s);
        opts.log?.(JSON.stringify(s));
      })
      .catch(() => undefined);
  }, every);
  try {
    await Promise.all(Array.from({ length: opts.concurrency }, worker));
    clearInterval(sampler);
    // Cancelled requests free their blocks between steps: give the server a moment to settle.
    let m = await metrics(url);
    for (
      let i = 0;
      i < 50 && (m.get('kiln_kv_blocks_used') !== 0 || m.get('kiln_scheduler_running') !== 0);
      i++
    ) {
      await new Promise((r) => setTimeout(r, 200));
      m = await metrics(url);
    }
    const fin = sampleOf(m, (performance.now() - t0) / 1000);
    samples.push(fin);
    const expected = /^(ok |cancelled$|disconnected$|400 \(intended\)$)/;
    const unexpected = Object.entries(outcomes)
      .filter(([k]) => !expected.test(k))
      .reduce((s, [, n]) => s + n, 0);
    // Slopes after the first fifth (allocator and JIT warm-up).
    const steady = samples.filter((s) => s.t_s >= (opts.durationMs / 1000) * 0.2);
    const perHour = (key: 'rss_mib' | 'heap_mib' | 'gpu_buffers') =>
      +(
        slope(
          steady.map((s) => s.t_s),
          steady.map((s) => s[key]),
        ) * 3600
      ).toFixed(2);
    return {
      duration_s: Math.round((performance.now() - t0) / 1000),
      concurrency: opts.concurrency,
      requests: started,
      unfinished: started - ended,
      outcomes,
      unexpected,
      ttft_ms: {
        p50: Math.round(percentile(lat.ttft, 50)),
        p99: Math.round(percentile(lat.ttft, 99)),
        n: lat.ttft.length,
      },
      itl_ms: {
        p50: Math.round(percentile(lat.itl, 50)),
        p99: Math.round(percentile(lat.itl, 99)),
        n: lat.itl.length,
      },
      tokens: lat.tokens,
      samples,
      slopes_per_hour: {
        rss_mib: perHour('rss_mib'),
        heap_mib: perHour('heap_mib'),
        gpu_buffers: perHour('gpu_buffers'),
      },
      final: {
        kv_blocks_used: fin.kv_blocks_used,
        running: fin.running,
        waiting: fin.waiting,
        gpu_buffers: fin.gpu_buffers,
      },
    };
  } finally {
    clearInterval(sampler);
    child.kill('SIGTERM');
    await new Promise((r) => child.once('exit', r));
  }
}
