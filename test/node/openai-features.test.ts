/**
 * The OpenAI surface beyond plain text, driven through `kiln serve` by the real clients (openai,
 * LangChain, the AI SDK). On BabyLlama (a real trained model, no chat template): harmless fields,
 * human errors, several prompts and choices, logit bias and penalties against a float64 reference,
 * logprobs, the Host / CORS / media checks, and structured output within what its 105-token
 * vocabulary can spell (it has no "{": JSON objects are impossible for it, arrays are not). On a
 * tiny random model carrying Qwen3's tokenizer and chat template (tools included): structured
 * output through every client and tool calls; constrained decoding must make every reply parse and
 * validate whatever the (random) model prefers.
 */
import { copyFileSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createOpenAICompatible } from '@ai-sdk/openai-compatible';
import { HumanMessage, ToolMessage } from '@langchain/core/messages';
import { ChatOpenAI } from '@langchain/openai';
import { generateObject, generateText, jsonSchema, tool } from 'ai';
import OpenAI from 'openai';
import { zodResponseFormat } from 'openai/helpers/zod';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { z } from 'zod';
import type { Engine } from '../../src/engine/engine.js';
import { DEFAULT_BLOCK_SIZE } from '../../src/engine/kv/block-manager.js';
import { logitAdjustRef } from '../../src/kernels/logit-adjust.ref.js';
import { convertLlama2cToFolder } from '../../src/node/convert.js';
import { createEngine } from '../../src/node/index.js';
import { startServer, type RunningServer } from '../../src/node/serve.js';
import { writeTestModel } from '../helpers/checkpoints.js';
import { sharedModel, sharedTokenizer } from '../helpers/shared.js';

const MODEL = 'babyllama';
const KEY = 'test-key';
const PROMPT = 'Once upon a time';
let dir = '';
let engine: Engine;
let server: RunningServer;
let client: OpenAI;
let golden = '';
/** The Qwen3-tokenizer model's engine, server and client. */
const QWEN = 'tiny-qwen3';
let qwenDir = '';
let qwenEngine: Engine;
let qwenServer: RunningServer;
let qwen: OpenAI;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'kiln-openai-'));
  await convertLlama2cToFolder(sharedModel('babyllama-tok105', 'model5000.bin'), {
    outDir: dir,
    tokenizer: sharedModel('babyllama-tok105', 'tok105.model'),
  });
  golden = readFileSync(sharedModel('babyllama-tok105', 'greedy_t0_n256.runc.txt'), 'utf8').slice(
    PROMPT.length,
  );
  engine = await createEngine({ model: dir });
  server = await startServer({ engine, modelId: MODEL, port: 0, apiKey: KEY });
  client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: KEY, maxRetries: 0 });
  // Random weights, Qwen3's real vocabulary and template; a tied head keeps the file small.
  qwenDir = mkdtempSync(join(tmpdir(), 'kiln-qwen3-'));
  writeTestModel(qwenDir, {
    architecture: 'Qwen2ForCausalLM',
    hidden: 32,
    intermediate: 64,
    layers: 1,
    heads: 2,
    kvHeads: 1,
    vocab: 151936,
    tie: true,
    dtype: 'F16',
    maxPositions: 1024,
    config: { eos_token_id: 151645, bos_token_id: null },
  });
  for (const f of ['tokenizer.json', 'tokenizer_config.json']) {
    copyFileSync(sharedTokenizer('qwen3', f), join(qwenDir, f));
  }
  qwenEngine = await createEngine({ model: qwenDir });
  qwenServer = await startServer({ engine: qwenEngine, modelId: QWEN, port: 0, apiKey: KEY });
  qwen = new OpenAI({ baseURL: `${qwenServer.url}/v1`, apiKey: KEY, maxRetries: 0 });
}, 240_000);

afterAll(async () => {
  await server?.close(1000);
  await qwenServer?.close(1000);
  engine?.dispose();
  qwenEngine?.dispose();
  rmSync(dir, { recursive: true, force: true });
  if (qwenDir) rmSync(qwenDir, { recursive: true, force: true });
});

async function post(path: string, body: unknown, headers: Record<string, string> = {}) {
  const r = await fetch(`${server.url}${path}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${KEY}`, ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
  return {
    status: r.status,
    headers: r.headers,
    json: (await r.json()) as { error?: { message: string; param: string | null; code: string | null } },
  };
}

const user = [{ role: 'user' as const, content: PROMPT }];

describe('compatibility', () => {
  test('harmless fields are accepted and change nothing (greedy output stays golden)', async () => {
    const r = await client.chat.completions.create({
      model: MODEL,
      messages: user,
      max_tokens: 24,
      temperature: 0,
      presence_penalty: 0,
      frequency_penalty: 0,
      logit_bias: {},
      response_format: { type: 'text' },
      store: false,
      metadata: { app: 'test' },
      parallel_tool_calls: true,
      user: 'someone',
      service_tier: 'auto',
      stream_options: { include_usage: true },
    });
    const text = r.choices[0]?.message.content ?? '';
    expect(text.length).toBeGreaterThan(10);
    expect(golden.startsWith(text)).toBe(true);
  });

  test('several prompts, n choices each; GET /v1/models/{id}', async () => {
    const one = async (prompt: string) =>
      (await client.completions.create({ model: MODEL, prompt, max_tokens: 8, temperature: 0 })).choices[0]
        ?.text;
    const a = await one('Once upon a time');
    const b = await one('The dog');
    const r = await client.completions.create({
      model: MODEL,
      prompt: ['Once upon a time', 'The dog'],
      n: 2,
      max_tokens: 8,
      temperature: 0,
    });
    expect(r.choices.map((c) => c.index)).toEqual([0, 1, 2, 3]);
    expect(r.choices.map((c) => c.text)).toEqual([a, a, b, b]);
    const m = await client.models.retrieve(MODEL);
    expect(m.id).toBe(MODEL);
    await expect(client.models.retrieve('gpt-9')).rejects.toBeInstanceOf(OpenAI.NotFoundError);
  });

  test('n choices of one prompt share its KV blocks (the prefix cache serves all but the first)', async () => {
    // A fresh engine: nothing else has filled its prefix cache.
    const own = await createEngine({ model: dir });
    try {
      const prompt = 'Once upon a time there was a little girl named Lily. She liked to play';
      const L = (await own.tokenize(prompt)).length;
      const n = 3;
      const before = own.stats();
      const r = await own.completions.create({ prompt, n, max_tokens: 6, temperature: 0 });
      const after = own.stats();
      expect(r.choices.map((c) => c.text)).toEqual(Array(n).fill(r.choices[0]?.text));
      // Choices 2..n find the first choice's full 16-token prompt blocks cached (at least one
      // prompt token is always computed, hence L - 1).
      const cached = (n - 1) * Math.floor((L - 1) / DEFAULT_BLOCK_SIZE) * DEFAULT_BLOCK_SIZE;
      expect(cached).toBeGreaterThan(0);
      expect(after.prefixQueriedTokens - before.prefixQueriedTokens).toBe(n * L);
      expect(after.prefixHitTokens - before.prefixHitTokens).toBe(cached);
    } finally {
      own.dispose();
    }
  });

  test('refusals read as sentences naming the field', async () => {
    const base = { model: MODEL, messages: user, max_tokens: 4 };
    const cases: [Record<string, unknown>, string, string][] = [
      [{ stop: ['a', 'b', 'c', 'd', 'e'] }, 'at most 4 stop strings', 'stop'],
      [{ frobnicate: 1 }, 'unsupported field frobnicate', 'frobnicate'],
      [{ presence_penalty: 3 }, 'presence_penalty must be a number in [-2, 2]', 'presence_penalty'],
      [{ logit_bias: { x: 1 } }, 'token ids', 'logit_bias.x'],
      [
        {
          response_format: { type: 'json_schema', json_schema: { name: 'x', schema: { type: 'nonsense' } } },
        },
        'cannot be compiled',
        'response_format.json_schema.schema',
      ],
      [
        {
          tools: [{ type: 'function', function: { name: 'f' } }],
          tool_choice: { type: 'function', function: { name: 'g' } },
        },
        'not among the tools',
        'tool_choice.function.name',
      ],
      [
        { messages: [...user, { role: 'tool', tool_call_id: 'abc', content: '1' }] },
        'answers no tool call',
        'messages.1.tool_call_id',
      ],
      [
        {
          messages: [
            ...user,
            {
              role: 'assistant',
              content: null,
              tool_calls: [{ id: 'c1', type: 'function', function: { name: 'f', arguments: '{oops' } }],
            },
          ],
        },
        'not valid JSON',
        'messages.1.tool_calls.0.function.arguments',
      ],
    ];
    for (const [over, words, param] of cases) {
      const r = await post('/v1/chat/completions', { ...base, ...over });
      expect(r.status, JSON.stringify(over)).toBe(400);
      expect(r.json.error?.message).toContain(words);
      expect(r.json.error?.param).toBe(param);
    }
    const p = await post('/v1/completions', { model: MODEL, prompt: [1, 2], max_tokens: 2 });
    expect(p.status).toBe(400);
    expect(p.json.error?.param).toBe('prompt.0');
  });
});

describe('security', () => {
  test('foreign Host 403, non-JSON 415, CORS off by default, dropped streams counted', async () => {
    const url = new URL(server.url);
    const status = (headers: Record<string, string>, body = '{}') =>
      new Promise<{ status: number; headers: Record<string, unknown> }>((resolve, reject) => {
        const req = request(
          { hostname: url.hostname, port: url.port, path: '/v1/models', method: 'GET', headers },
          (res) => {
            res.resume();
            resolve({ status: res.statusCode ?? 0, headers: res.headers });
          },
        );
        req.on('error', reject);
        req.end(body === '{}' ? undefined : body);
      });
    const auth = { authorization: `Bearer ${KEY}` };
    expect((await status({ ...auth, host: 'evil.example:8080' })).status).toBe(403);
    expect((await status({ ...auth, host: `localhost:${url.port}` })).status).toBe(200);
    const cors = await status({ ...auth, host: `127.0.0.1:${url.port}`, origin: 'https://evil.example' });
    expect(cors.headers['access-control-allow-origin']).toBeUndefined();
    const plain = await fetch(`${server.url}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'text/plain', ...auth },
      body: 'hello',
    });
    expect(plain.status).toBe(415);
    const metric = async () => {
      const text = await (await fetch(`${server.url}/metrics`)).text();
      return text
        .split('\n')
        .filter((l) => l.startsWith('kiln_requests_total{route="/v1/completions",status="499"}'));
    };
    const before = await metric();
    await new Promise<void>((resolve, reject) => {
      const req = request(
        {
          hostname: url.hostname,
          port: url.port,
          path: '/v1/completions',
          method: 'POST',
          headers: { 'content-type': 'application/json', ...auth },
        },
        (res) => {
          res.once('data', () => {
            req.destroy();
            resolve();
          });
        },
      );
      req.on('error', () => undefined);
      req.end(JSON.stringify({ model: MODEL, prompt: PROMPT, max_tokens: 200, stream: true }));
      setTimeout(() => reject(new Error('no data')), 60_000);
    });
    await expect.poll(async () => (await metric()).join(), { timeout: 10_000 }).not.toBe(before.join());
  });
});

describe('structured output and tools: every reply parses and validates', () => {
  const Person = z.object({
    name: z.string().max(12),
    age: z.number().int().min(0).max(120),
    pets: z.array(z.enum(['cat', 'dog'])).max(2),
  });

  test('BabyLlama: a JSON Schema its vocabulary can spell (a list of enums)', async () => {
    const schema = { type: 'array', items: { enum: ['cat', 'dog', 'bird'] }, minItems: 1, maxItems: 3 };
    for (const temperature of [0, 1]) {
      const r = await client.chat.completions.create({
        model: MODEL,
        messages: user,
        max_tokens: 40,
        temperature,
        seed: 5,
        response_format: { type: 'json_schema', json_schema: { name: 'pets', schema, strict: true } },
      });
      const v = JSON.parse(r.choices[0]?.message.content ?? '') as unknown[];
      expect(Array.isArray(v) && v.length >= 1 && v.length <= 3).toBe(true);
      for (const x of v) expect(['cat', 'dog', 'bird']).toContain(x);
      expect(r.choices[0]?.finish_reason).toBe('stop');
    }
  }, 120_000);

  test('openai chat.completions.parse with a zod schema', async () => {
    const r = await qwen.chat.completions.parse({
      model: QWEN,
      messages: user,
      max_tokens: 120,
      temperature: 0,
      response_format: zodResponseFormat(Person, 'person'),
    });
    expect(Person.parse(r.choices[0]?.message.parsed)).toBeTruthy();
  }, 120_000);

  test('LangChain withStructuredOutput (json_schema and function calling)', async () => {
    const llm = new ChatOpenAI({
      model: QWEN,
      apiKey: KEY,
      configuration: { baseURL: `${qwenServer.url}/v1` },
      temperature: 0,
      maxTokens: 120,
      maxRetries: 0,
    });
    const viaSchema = await llm.withStructuredOutput(Person, { method: 'jsonSchema' }).invoke(PROMPT);
    expect(Person.parse(viaSchema)).toBeTruthy();
    const viaTools = await llm.withStructuredOutput(Person, { method: 'functionCalling' }).invoke(PROMPT);
    expect(Person.parse(viaTools)).toBeTruthy();
  }, 120_000);

  test('LangChain bindTools, then a tool-result turn', async () => {
    const llm = new ChatOpenAI({
      model: QWEN,
      apiKey: KEY,
      configuration: { baseURL: `${qwenServer.url}/v1` },
      temperature: 0,
      maxTokens: 80,
      maxRetries: 0,
    });
    const weather = {
      type: 'function' as const,
      function: {
        name: 'get_weather',
        description: 'The weather in a city',
        parameters: {
          type: 'object',
          properties: { city: { type: 'string', maxLength: 12 } },
          required: ['city'],
          additionalProperties: false,
        },
      },
    };
    const question = new HumanMessage('What is the weather in Paris?');
    const ai = await llm.bindTools([weather], { tool_choice: 'get_weather' }).invoke([question]);
    const call = ai.tool_calls?.[0];
    expect(call?.name).toBe('get_weather');
    expect(typeof call?.args.city).toBe('string');
    const answer = await llm
      .bindTools([weather])
      .invoke([question, ai, new ToolMessage({ tool_call_id: call?.id ?? '', content: '21 degrees' })]);
    expect(typeof answer.content).toBe('string');
  }, 120_000);

  test('AI SDK generateObject and a forced tool call', async () => {
    const kiln = createOpenAICompatible({
      name: 'kiln',
      baseURL: `${qwenServer.url}/v1`,
      apiKey: KEY,
      supportsStructuredOutputs: true,
    });
    const { object } = await generateObject({
      model: kiln(QWEN),
      schema: Person,
      prompt: PROMPT,
      temperature: 0,
      maxOutputTokens: 120,
      maxRetries: 0,
    });
    expect(Person.parse(object)).toBeTruthy();
    const r = await generateText({
      model: kiln(QWEN),
      prompt: PROMPT,
      temperature: 0,
      maxOutputTokens: 80,
      maxRetries: 0,
      toolChoice: { type: 'tool', toolName: 'weather' },
      tools: {
        weather: tool({
          description: 'the weather in a city',
          inputSchema: jsonSchema<{ city: string }>({
            type: 'object',
            properties: { city: { type: 'string', maxLength: 10 } },
            required: ['city'],
            additionalProperties: false,
          }),
        }),
      },
    });
    expect(r.toolCalls.length).toBe(1);
    expect(r.toolCalls[0]?.toolName).toBe('weather');
    expect(typeof (r.toolCalls[0]?.input as { city: unknown }).city).toBe('string');
  }, 120_000);

  test('streamed tool-call deltas reassemble into the call', async () => {
    const stream = await qwen.chat.completions.create({
      model: QWEN,
      messages: user,
      max_tokens: 80,
      temperature: 0,
      stream: true,
      tools: [
        {
          type: 'function',
          function: {
            name: 'add',
            parameters: {
              type: 'object',
              properties: { a: { type: 'integer' }, b: { type: 'integer' } },
              required: ['a', 'b'],
              additionalProperties: false,
            },
          },
        },
      ],
      tool_choice: 'required',
    });
    let name = '';
    let args = '';
    let id = '';
    let finish: string | null = null;
    for await (const c of stream) {
      for (const d of c.choices[0]?.delta.tool_calls ?? []) {
        id ||= d.id ?? '';
        name += d.function?.name ?? '';
        args += d.function?.arguments ?? '';
      }
      finish = c.choices[0]?.finish_reason ?? finish;
    }
    expect(name).toBe('add');
    expect(id.length).toBeGreaterThan(0);
    const parsed = JSON.parse(args) as { a: unknown; b: unknown };
    expect(Number.isInteger(parsed.a) && Number.isInteger(parsed.b)).toBe(true);
    expect(finish).toBe('tool_calls');
  }, 120_000);
});

describe('logit bias, penalties and logprobs', () => {
  test('greedy with logit_bias and penalties equals a float64 CPU reference of the same rule', async () => {
    const plainRun = await engine.generate(PROMPT, { maxTokens: 20, temperature: 0 }).result();
    const banned = plainRun.tokenIds[0] as number;
    const bias = { [banned]: -100, [plainRun.tokenIds[3] as number]: 3, 30: 1.25 };
    const presence = 0.7;
    const frequency = 0.4;
    const gen = engine.generate(PROMPT, {
      maxTokens: 20,
      temperature: 0,
      logitBias: bias,
      presencePenalty: presence,
      frequencyPenalty: frequency,
    });
    const r = await gen.result();
    expect(r.tokenIds.length).toBe(20);
    // Teacher-forced logits of the same tokens; the rule applied in float64; argmax must agree.
    const rows = await engine.logits([...r.promptTokenIds, ...r.tokenIds]);
    const counts = new Map<number, number>();
    let plainDiffers = false;
    r.tokenIds.forEach((id, i) => {
      const row = Float64Array.from(rows[r.promptTokenIds.length - 1 + i] as Float32Array);
      let plain = 0;
      for (let j = 1; j < row.length; j++) if ((row[j] as number) > (row[plain] as number)) plain = j;
      const edits = new Map<number, number>(Object.entries(bias).map(([k, v]) => [Number(k), v]));
      for (const [t, n] of counts) edits.set(t, (edits.get(t) ?? 0) - presence - frequency * n);
      logitAdjustRef(row, { edits, mask: null });
      let best = 0;
      for (let j = 1; j < row.length; j++) if ((row[j] as number) > (row[best] as number)) best = j;
      // Teacher-forced (prefill) and decode logits differ by float rounding (~1e-5); a near-tie
      // within that could go either way, so only clear winners are held to the reference.
      const second = Math.max(...Array.from(row).filter((_, j) => j !== best));
      if ((row[best] as number) - second > 1e-3) expect(id).toBe(best);
      if (plain !== best) plainDiffers = true;
      counts.set(id, (counts.get(id) ?? 0) + 1);
    });
    expect(plainDiffers).toBe(true);
    expect(r.tokenIds).not.toContain(banned);
  }, 120_000);

  test('min_p draws the same tokens on the GPU and the CPU sampling paths, and changes the draw', async () => {
    const cpu = await createEngine({ model: dir, sampling: 'cpu' });
    try {
      const opts = { maxTokens: 24, temperature: 1.3, seed: 11, minP: 0.2 };
      const gpuIds = (await engine.generate(PROMPT, opts).result()).tokenIds;
      const cpuIds = (await cpu.generate(PROMPT, opts).result()).tokenIds;
      expect(gpuIds).toEqual(cpuIds);
      const without = (await engine.generate(PROMPT, { ...opts, minP: 0 }).result()).tokenIds;
      expect(without).not.toEqual(gpuIds);
      const r = await client.completions.create({
        model: MODEL,
        prompt: PROMPT,
        max_tokens: 24,
        temperature: 1.3,
        seed: 11,
        // @ts-expect-error min_p is an extension (vLLM, llama.cpp), not in the client's types
        min_p: 0.2,
      });
      expect(r.choices[0]?.text).toBe(engine.tokenizer.decode(gpuIds));
    } finally {
      cpu.dispose();
    }
  }, 120_000);

  test('chat logprobs with top_logprobs; completions logprobs', async () => {
    const r = await client.chat.completions.create({
      model: MODEL,
      messages: user,
      max_tokens: 6,
      temperature: 0,
      logprobs: true,
      top_logprobs: 3,
    });
    const content = r.choices[0]?.logprobs?.content ?? [];
    expect(content.length).toBe(6);
    expect(golden.startsWith(r.choices[0]?.message.content ?? 'x')).toBe(true);
    for (const t of content) {
      expect(t.top_logprobs.length).toBe(3);
      // Greedy: the chosen token is the most likely one.
      expect(t.logprob).toBeCloseTo(t.top_logprobs[0]?.logprob ?? NaN, 6);
      expect(t.logprob).toBeLessThanOrEqual(0);
    }
    const c = await client.completions.create({
      model: MODEL,
      prompt: PROMPT,
      max_tokens: 4,
      temperature: 0,
      logprobs: 2,
    });
    expect(c.choices[0]?.logprobs?.tokens?.length).toBe(4);
    expect(Object.keys(c.choices[0]?.logprobs?.top_logprobs?.[0] ?? {}).length).toBe(2);
  }, 120_000);
});
