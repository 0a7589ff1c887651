/**
 * The HTTP fuzz target: request bodies for `kiln serve`'s OpenAI routes, mutated from valid ones
 * (hostile field values, broken JSON text, invalid UTF-8, odd content types), sent to a real server
 * on loopback. A case passes when the server answers 200 with a complete answer (a JSON completion,
 * or an SSE stream ending in [DONE]) or a 4xx with an OpenAI-shaped error; a 5xx, a malformed
 * answer or a dropped connection fails it.
 */
import fc from 'fast-check';
import type { FuzzTarget } from './harness.js';
import { mutatedBytes, mutatedJson, mutatedText } from './mutate.js';

interface HttpInput {
  path: string;
  contentType: string;
  body: Uint8Array;
}

const utf8 = new TextEncoder();

function bases(model: string): { path: string; body: Record<string, unknown> }[] {
  return [
    {
      path: '/v1/chat/completions',
      body: {
        model,
        messages: [
          { role: 'system', content: 'Be brief.' },
          { role: 'user', content: 'Once upon a time' },
        ],
        max_tokens: 3,
        temperature: 0,
        stream: false,
      },
    },
    {
      path: '/v1/completions',
      body: {
        model,
        prompt: 'Once upon a time',
        max_tokens: 3,
        temperature: 0.8,
        top_p: 0.9,
        seed: 7,
        stop: ['.'],
        stream: true,
        stream_options: { include_usage: true },
      },
    },
  ];
}

/** The HTTP target against the server at `url` serving `model` (with `apiKey`, if it has one). */
export function httpTarget(url: string, model: string, apiKey?: string): FuzzTarget<HttpInput> {
  const base = fc.constantFrom(...bases(model));
  const input: fc.Arbitrary<HttpInput> = fc.record({
    path: base.map((b) => b.path),
    contentType: fc.constantFrom(
      'application/json',
      'application/json',
      'application/json; charset=utf-8',
      'text/plain',
      'application/x-www-form-urlencoded',
    ),
    body: fc.oneof(
      {
        weight: 5,
        arbitrary: base.chain((b) => mutatedJson(b.body)).map((j) => utf8.encode(JSON.stringify(j) ?? '')),
      },
      {
        weight: 2,
        arbitrary: base.chain((b) => mutatedText(JSON.stringify(b.body))).map((t) => utf8.encode(t)),
      },
      { weight: 1, arbitrary: base.chain((b) => mutatedBytes(utf8.encode(JSON.stringify(b.body)))) },
      { weight: 1, arbitrary: fc.uint8Array({ maxLength: 32 }) },
    ),
  });
  return {
    name: 'HTTP bodies (kiln serve)',
    input,
    async run({ path, contentType, body }) {
      const headers: Record<string, string> = { 'content-type': contentType };
      if (apiKey) headers.authorization = `Bearer ${apiKey}`;
      const r = await fetch(`${url}${path}`, { method: 'POST', headers, body: body as BodyInit });
      const text = await r.text();
      const fail = (why: string): never => {
        throw new Error(`${path} ${r.status}: ${why}: ${text.slice(0, 300)}`);
      };
      if (r.status >= 500) fail('server error');
      if (r.status >= 400) {
        let err: unknown;
        try {
          err = (JSON.parse(text) as { error?: unknown }).error;
        } catch {
          fail('error body is not JSON');
        }
        const e = err as { message?: unknown; type?: unknown } | undefined;
        if (typeof e?.message !== 'string' || typeof e.type !== 'string') fail('not an OpenAI error');
        return `HTTP ${r.status}`;
      }
      if (r.status !== 200) fail('unexpected status');
      if ((r.headers.get('content-type') ?? '').startsWith('text/event-stream')) {
        if (!text.trimEnd().endsWith('data: [DONE]')) fail('stream did not end with [DONE]');
        if (text.includes('"error"')) return 'HTTP 200 (stream error)';
      } else {
        const j = JSON.parse(text) as { choices?: unknown[] };
        if (!Array.isArray(j.choices) || j.choices.length !== 1) fail('no choices');
      }
      return 'HTTP 200';
    },
  };
}
