/**
 * `kiln serve` for real: the server listens on a loopback port and the official `openai` client
 * (and plain fetch, for what a client would never send) talks to it. BabyLlama (a real trained
 * model, converted at test time) at temperature 0 must continue its golden text.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { convertLlama2cToFolder } from '../../src/node/convert.js';
import { createEngine } from '../../src/node/index.js';
import { StopMatcher } from '../../src/engine/stop.js';
import { startServer, type RunningServer } from '../../src/node/serve.js';
import type { Engine } from '../../src/engine/engine.js';
import { sharedModel } from '../helpers/shared.js';

const MODEL = 'babyllama';
const KEY = 'test-key';
const PROMPT = 'Once upon a time';
let dir = '';
let engine: Engine;
let server: RunningServer;
let client: OpenAI;
/** The reference text's continuation after PROMPT (it is greedy output from BOS). */
let golden = '';

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'kiln-serve-'));
  await convertLlama2cToFolder(sharedModel('babyllama-tok105', 'model5000.bin'), {
    outDir: dir,
    tokenizer: sharedModel('babyllama-tok105', 'tok105.model'),
  });
  const text = readFileSync(sharedModel('babyllama-tok105', 'greedy_t0_n256.runc.txt'), 'utf8');
  expect(text.startsWith(PROMPT)).toBe(true);
  golden = text.slice(PROMPT.length);
  engine = await createEngine({ model: dir });
  server = await startServer({
    engine,
    modelId: MODEL,
    port: 0,
    apiKey: KEY,
    maxConcurrent: 16,
    maxQueue: 8,
    bodyLimit: 65536,
  });
  client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: KEY, maxRetries: 0 });
}, 120_000);

afterAll(async () => {
  await server?.close(1000);
  engine?.dispose();
  rmSync(dir, { recursive: true, force: true });
});

async function metric(name: string): Promise<number> {
  const text = await (await fetch(`${server.url}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name} `));
  if (!line) throw new Error(`no metric ${name}`);
  return Number(line.split(' ')[1]);
}

async function post(
  path: string,
  body: string | Uint8Array<ArrayBuffer>,
  headers: Record<string, string> = {},
) {
  const r = await fetch(`${server.url}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${KEY}`, ...headers },
    body,
  });
  return {
    status: r.status,
    headers: r.headers,
    json: (await r.json()) as {
      error?: { message: string; type: string; param: string | null; code: string | null };
    },
  };
}

describe('OpenAI API with the official client', () => {
  test('chat completion, non-streaming: the golden continuation, usage from the tokenizer', async () => {
    const r = await client.chat.completions.create({
      model: MODEL,
      messages: [{ role: 'user', content: PROMPT }],
      max_tokens: 60,
      temperature: 0,
    });
    const text = r.choices[0]?.message.content ?? '';
    expect(text.length).toBeGreaterThan(30);
    expect(golden.startsWith(text)).toBe(true);
    expect(r.choices[0]?.finish_reason).toBe('length');
    expect(r.usage?.prompt_tokens).toBe(engine.encodePrompt(PROMPT).length);
    expect(r.usage?.completion_tokens).toBe(60);
    expect(r.usage?.total_tokens).toBe((r.usage?.prompt_tokens ?? 0) + 60);
  });

  test('chat completion, streaming: the same text in chunks, usage at the end', async () => {
    const stream = await client.chat.completions.create({
      model: MODEL,
      messages: [{ role: 'user', content: PROMPT }],
      max_tokens: 60,
      temperature: 0,
      stream: true,
      stream_options: { include_usage: true },
    });
    let text = '';
    let chunks = 0;
    let finish: string | null = null;
    let completionTokens = -1;
    for await (const c of stream) {
      chunks++;
      text += c.choices[0]?.delta.content ?? '';
      finish = c.choices[0]?.finish_reason ?? finish;
      if (c.usage) completionTokens = c.usage.completion_tokens;
    }
    expect(chunks).toBeGreaterThan(10);
    expect(golden.startsWith(text)).toBe(true);
    expect(text.length).toBeGreaterThan(30);
    expect(finish).toBe('length');
    expect(completionTokens).toBe(60);
  });

  test('completions, models, stop strings', async () => {
    const r = await client.completions.create({
      model: MODEL,
      prompt: PROMPT,
      max_tokens: 40,
      temperature: 0,
    });
    const text = r.choices[0]?.text ?? '';
    expect(golden.startsWith(text)).toBe(true);
    // A stop string cuts the text right before it, finish_reason "stop".
    const stopAt = golden.indexOf(' ', 10);
    const stopWord = golden.slice(stopAt, stopAt + 3);
    const s = await client.completions.create({
      model: MODEL,
      prompt: PROMPT,
      max_tokens: 40,
      temperature: 0,
      stop: [stopWord],
    });
    expect(s.choices[0]?.text).toBe(golden.slice(0, golden.indexOf(stopWord)));
    expect(s.choices[0]?.finish_reason).toBe('stop');
    const models = await client.models.list();
    expect(models.data.map((m) => m.id)).toEqual([MODEL]);
  });

  test('16 concurrent streaming clients: each output equals its single-request output', async () => {
    const prompts = Array.from(
      { length: 16 },
      (_, i) => `${['Once', 'The', 'A', 'One day'][i % 4]} ${['cat', 'girl', 'boy', 'dog'][(i >> 2) % 4]}`,
    );
    const one = async (p: string) => {
      const stream = await client.chat.completions.create({
        model: MODEL,
        messages: [{ role: 'user', content: p }],
        max_tokens: 24,
        temperature: 0,
        stream: true,
      });
      let text = '';
      for await (const c of stream) text += c.choices[0]?.delta.content ?? '';
      return text;
    };
    const solo: string[] = [];
    for (const p of prompts) solo.push(await one(p));
    const together = await Promise.all(prompts.map(one));
    together.forEach((t, i) => expect(t).toBe(solo[i]));
    expect(new Set(together).size).toBeGreaterThan(8);
    expect(together.every((t) => t.length > 0)).toBe(true);
  }, 300_000);
});

describe('bad input', () => {
  const chat = (over: Record<string, unknown>) =>
    JSON.stringify({ model: MODEL, messages: [{ role: 'user', content: 'hi' }], max_tokens: 4, ...over });

  test('malformed JSON, wrong types, bad numbers, unknown fields, empty messages: 400 with the param', async () => {
    const cases: [string, string, string | null][] = [
      ['{"model": "babyllama", "messages": [', 'not valid JSON', null],
      [chat({ max_tokens: '4' }), 'max_tokens', 'max_tokens'],
      [chat({ max_tokens: -3 }), 'max_tokens', 'max_tokens'],
      [chat({ temperature: 'hot' }), 'temperature', 'temperature'],
      [chat({ messages: [] }), 'messages', 'messages'],
      [chat({ messages: [{ role: 'user', content: '' }] }), 'empty', 'messages'],
      [chat({ messages: [{ role: 'wizard', content: 'x' }] }), 'role', 'messages.0.role'],
      [chat({ frobnicate: true }), 'frobnicate', 'frobnicate'],
      [chat({ n: 17 }), 'n must be an integer in [1, 16]', 'n'],
    ];
    for (const [body, words, param] of cases) {
      const r = await post('/v1/chat/completions', body);
      expect(r.status, body).toBe(400);
      expect(r.json.error?.type).toBe('invalid_request_error');
      expect(r.json.error?.message).toContain(words);
      expect(r.json.error?.param).toBe(param);
    }
  });

  test('huge max_tokens and over-long prompts get 400 naming the limits', async () => {
    const r = await post('/v1/chat/completions', chat({ max_tokens: 100000 }));
    expect(r.status).toBe(400);
    expect(r.json.error?.message).toMatch(/max_tokens 100000 .* context of 256 tokens/);
    const long = await post(
      '/v1/completions',
      JSON.stringify({ model: MODEL, prompt: 'a'.repeat(400), max_tokens: 1 }),
    );
    expect(long.status).toBe(400);
    expect(long.json.error?.code).toBe('context_length_exceeded');
    expect(long.json.error?.message).toMatch(/context is 256 tokens/);
  });

  test('invalid UTF-8, oversized bodies, wrong key, unknown route or model', async () => {
    const bad = new Uint8Array([
      ...new TextEncoder().encode('{"model":"babyllama","prompt":"'),
      0xff,
      0xfe,
      ...new TextEncoder().encode('"}'),
    ]);
    const u = await post('/v1/completions', bad);
    expect(u.status).toBe(400);
    expect(u.json.error?.message).toMatch(/UTF-8/);
    const big = await post('/v1/completions', JSON.stringify({ model: MODEL, prompt: 'x'.repeat(100_000) }));
    expect(big.status).toBe(413);
    expect(big.json.error?.code).toBe('request_too_large');
    const key = await post('/v1/completions', JSON.stringify({ model: MODEL, prompt: 'x' }), {
      authorization: 'Bearer wrong',
    });
    expect(key.status).toBe(401);
    expect(key.json.error?.type).toBe('authentication_error');
    const route = await fetch(`${server.url}/v2/nothing`);
    expect(route.status).toBe(404);
    const model = await post('/v1/completions', JSON.stringify({ model: 'gpt-9', prompt: 'x' }));
    expect(model.status).toBe(404);
    expect(model.json.error?.code).toBe('model_not_found');
    // The client's own error types map too.
    await expect(client.chat.completions.create({ model: MODEL, messages: [] })).rejects.toBeInstanceOf(
      OpenAI.BadRequestError,
    );
  });

  test('a client that disconnects mid-stream cancels its request and frees its KV blocks', async () => {
    const cancelledBefore = await metric('kiln_requests_cancelled_total');
    await new Promise<void>((resolve, reject) => {
      const url = new URL(`${server.url}/v1/completions`);
      const req = request(
        {
          hostname: url.hostname,
          port: url.port,
          path: url.pathname,
          method: 'POST',
          headers: { 'content-type': 'application/json', authorization: `Bearer ${KEY}` },
        },
        (res) => {
          let events = 0;
          res.on('data', (d: Buffer) => {
            events += d.toString().split('data: ').length - 1;
            if (events >= 3) {
              req.destroy();
              resolve();
            }
          });
          res.on('error', () => resolve());
        },
      );
      req.on('error', () => resolve());
      req.end(
        JSON.stringify({ model: MODEL, prompt: PROMPT, max_tokens: 200, temperature: 0, stream: true }),
      );
      setTimeout(() => reject(new Error('no events')), 60_000);
    });
    // Within a step or two the request is gone and so are its blocks.
    for (let i = 0; i < 100 && (await metric('kiln_requests_active')) > 0; i++)
      await new Promise((r) => setTimeout(r, 50));
    expect(await metric('kiln_requests_active')).toBe(0);
    expect(await metric('kiln_kv_blocks_used')).toBe(0);
    expect(await metric('kiln_requests_cancelled_total')).toBe(cancelledBefore + 1);
  }, 120_000);

  test('200 requests against 16 slots and a queue of 8: 429s with Retry-After, no crash, back to baseline', async () => {
    const body = JSON.stringify({ model: MODEL, prompt: PROMPT, max_tokens: 8, temperature: 0 });
    const results = await Promise.all(
      Array.from({ length: 200 }, async () => {
        const r = await fetch(`${server.url}/v1/completions`, {
          method: 'POST',
          headers: { 'content-type': 'application/json', authorization: `Bearer ${KEY}` },
          body,
        });
        await r.arrayBuffer();
        return { status: r.status, retry: r.headers.get('retry-after') };
      }),
    );
    const ok = results.filter((r) => r.status === 200).length;
    const busy = results.filter((r) => r.status === 429);
    expect(ok + busy.length).toBe(200);
    expect(ok).toBeGreaterThanOrEqual(24);
    expect(busy.length).toBeGreaterThan(0);
    expect(busy.every((r) => r.retry !== null && Number(r.retry) >= 1)).toBe(true);
    expect(await metric('kiln_requests_active')).toBe(0);
    expect(await metric('kiln_queue_depth')).toBe(0);
    expect(await metric('kiln_kv_blocks_used')).toBe(0);
    // Still serving.
    const after = await client.completions.create({
      model: MODEL,
      prompt: PROMPT,
      max_tokens: 10,
      temperature: 0,
    });
    expect(golden.startsWith(after.choices[0]?.text ?? '')).toBe(true);
  }, 300_000);
});

describe('kiln serve as a process', () => {
  test('SIGTERM: stops accepting, lets the in-flight stream finish, exits 0', async () => {
    const { spawn } = await import('node:child_process');
    const { homedir } = await import('node:os');
    const { repoRoot } = await import('../helpers/shared.js');
    const cache = join(tmpdir(), `kiln-serve-cache-${process.pid}`);
    const child = spawn(
      process.execPath,
      ['bin/kiln.js', 'serve', '--model', dir, '--served-model-name', MODEL, '--port', '0', '-q'],
      {
        cwd: repoRoot,
        stdio: 'pipe',
        env: {
          ...process.env,
          XDG_RUNTIME_DIR: '/tmp',
          // Its background kernel tuning caches per adapter: keep that out of the user's cache.
          XDG_CACHE_HOME: cache,
          MESA_SHADER_CACHE_DIR:
            process.env.MESA_SHADER_CACHE_DIR ?? process.env.XDG_CACHE_HOME ?? join(homedir(), '.cache'),
        },
      },
    );
    let stderr = '';
    const url = await new Promise<string>((resolve, reject) => {
      child.stderr.on('data', (d: Buffer) => {
        stderr += d.toString();
        const m = /on (http:\/\/\S+)/.exec(stderr);
        if (m) resolve(m[1] as string);
      });
      child.on('exit', () => reject(new Error(`exited early: ${stderr}`)));
    });
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    const c = new OpenAI({ baseURL: `${url}/v1`, apiKey: 'none', maxRetries: 0 });
    const stream = await c.completions.create({
      model: MODEL,
      prompt: PROMPT,
      max_tokens: 80,
      temperature: 0,
      stream: true,
    });
    let text = '';
    let signalled = false;
    for await (const chunk of stream) {
      text += chunk.choices[0]?.text ?? '';
      if (!signalled && text.length > 5) {
        signalled = true;
        child.kill('SIGTERM');
      }
    }
    // The stream in flight ran to its end.
    expect(golden.startsWith(text)).toBe(true);
    expect(text.length).toBeGreaterThan(40);
    expect(await exited).toBe(0);
    expect(stderr).toContain('SIGTERM');
    rmSync(cache, { recursive: true, force: true });
  }, 120_000);
});

describe('kiln serve --speculative', () => {
  test('serves the golden greedy text with speculation on', async () => {
    const { spawn } = await import('node:child_process');
    const { homedir } = await import('node:os');
    const { repoRoot } = await import('../helpers/shared.js');
    const cache = join(tmpdir(), `kiln-serve-spec-cache-${process.pid}`);
    const args = ['bin/kiln.js', 'serve', '--model', dir, '--served-model-name', MODEL, '--port', '0'];
    const child = spawn(process.execPath, [...args, '--speculative', 'both', '--no-tune', '-q'], {
      cwd: repoRoot,
      stdio: 'pipe',
      env: {
        ...process.env,
        XDG_RUNTIME_DIR: '/tmp',
        XDG_CACHE_HOME: cache,
        MESA_SHADER_CACHE_DIR:
          process.env.MESA_SHADER_CACHE_DIR ?? process.env.XDG_CACHE_HOME ?? join(homedir(), '.cache'),
      },
    });
    let stderr = '';
    const url = await new Promise<string>((resolve, reject) => {
      child.stderr.on('data', (d: Buffer) => {
        stderr += d.toString();
        const m = /on (http:\/\/\S+)/.exec(stderr);
        if (m) resolve(m[1] as string);
      });
      child.on('exit', () => reject(new Error(`exited early: ${stderr}`)));
    });
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    try {
      const c = new OpenAI({ baseURL: `${url}/v1`, apiKey: 'none', maxRetries: 0 });
      const r = await c.completions.create({ model: MODEL, prompt: PROMPT, max_tokens: 60, temperature: 0 });
      const text = r.choices[0]?.text ?? '';
      expect(text.length).toBeGreaterThan(40);
      expect(golden.startsWith(text)).toBe(true);
    } finally {
      child.kill('SIGTERM');
    }
    expect(await exited).toBe(0);
    rmSync(cache, { recursive: true, force: true });
  }, 180_000);
});

describe('StopMatcher', () => {
  test('holds back a possible stop prefix and cuts at the earliest stop', () => {
    const m = new StopMatcher(['END', 'xy']);
    expect(m.push('abcE')).toEqual({ emit: 'ab', stopped: false });
    expect(m.push('N')).toEqual({ emit: 'c', stopped: false });
    // "END" completes: everything before it was already out, nothing after it is.
    expect(m.push('Dzz')).toEqual({ emit: '', stopped: true });
    const n = new StopMatcher(['END']);
    expect(n.push('abEN')).toEqual({ emit: 'ab', stopped: false });
    expect(n.push('x')).toEqual({ emit: 'E', stopped: false });
    expect(n.flush()).toBe('Nx');
  });
});
