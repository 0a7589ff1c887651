/**
 * The engine's request surface on a small seeded checkpoint: streaming, early exit, serialized
 * concurrent calls, seeded sampling, repetition penalty, abort, EOS, maxTokens, request and option
 * validation, the memory budget, OpenAI-shaped chat completions, failures (a device lost mid-run, a
 * load that fails part-way, an unsupported head_dim) and dispose().
 */
import { mkdtempSync, readFileSync, rmSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import {
  DeviceMemoryError,
  GpuDeviceError,
  InvalidModelFileError,
  InvalidRequestError,
  KilnError,
  UnsupportedModelError,
} from '../../src/errors.js';
import { openCheckpoint } from '../../src/io/safetensors-checkpoint.js';
import { openLocalModelDir } from '../../src/node/fs-model-dir.js';
import { dawnGpu } from '../../src/node/dawn.js';
import { createEngine } from '../../src/node/index.js';
import type { ChatCompletionChunk } from '../../src/api/openai/types.js';
import type { Engine } from '../../src/engine/engine.js';
import type { GenerateOptions, GeneratedToken } from '../../src/api/types.js';
import type { ModelSpec } from '../../src/model/spec.js';
import { ReferenceModel } from '../../src/model/reference.js';
import { sampleRefProbabilities } from '../../src/kernels/sample.ref.js';
import { applyRepetitionPenalty } from '../../src/engine/sampling/cpu.js';
import { writeTestModel, type TestModelOptions } from '../helpers/checkpoints.js';
import { testGpu } from '../helpers/gpu.js';

/** The error a call throws synchronously (generate() validates the request at the call). */
function thrownBy(fn: () => unknown): unknown {
  try {
    fn();
  } catch (e) {
    return e;
  }
  return undefined;
}

const MODEL: TestModelOptions = { seed: 5, hidden: 32, intermediate: 64, layers: 1 };
// ChatML with Qwen3's thinking switch (the empty think block when enable_thinking is false).
const CHATML =
  '{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}' +
  '{% if add_generation_prompt %}<|im_start|>assistant\n' +
  '{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}' +
  '{% endif %}';

const dirs: string[] = [];
function tempDir(): string {
  const d = mkdtempSync(join(tmpdir(), 'kiln-engine-'));
  dirs.push(d);
  return d;
}

/** A model folder with the shared weights; `config` overrides config.json fields. */
function modelDir(opts: TestModelOptions = {}): { dir: string; spec: ModelSpec } {
  const dir = tempDir();
  return { dir, spec: writeTestModel(dir, { ...MODEL, ...opts }) };
}

/** Adds a ChatML chat_template to the folder's tokenizer_config.json. */
function addChatTemplate(dir: string): void {
  const file = join(dir, 'tokenizer_config.json');
  const config = JSON.parse(readFileSync(file, 'utf8')) as Record<string, unknown>;
  writeFileSync(file, JSON.stringify({ ...config, chat_template: CHATML }));
}

/** A deterministic prompt of `length` ids (BOS first), all inside the tokenizer's 105 tokens. */
function makePrompt(length: number, salt = 0): number[] {
  return [1, ...Array.from({ length: length - 1 }, (_, i) => 3 + ((i * 29 + salt * 13 + 5) % 102))];
}

async function collect(it: AsyncIterable<GeneratedToken>): Promise<GeneratedToken[]> {
  const out: GeneratedToken[] = [];
  for await (const t of it) out.push(t);
  return out;
}

async function ids(engine: Engine, prompt: readonly number[], opts: GenerateOptions): Promise<number[]> {
  return (await engine.generate(prompt, opts).result()).tokenIds;
}

/**
 * Tracks the buffers made on `device` until `stop()`: `live` holds those not yet destroyed,
 * `created` counts them all.
 */
function trackBuffers(device: GPUDevice): { live: Set<GPUBuffer>; created: () => number; stop: () => void } {
  const live = new Set<GPUBuffer>();
  let created = 0;
  const create = device.createBuffer.bind(device);
  device.createBuffer = (desc: GPUBufferDescriptor): GPUBuffer => {
    const b = create(desc);
    created++;
    live.add(b);
    const destroy = b.destroy.bind(b);
    b.destroy = () => {
      live.delete(b);
      destroy();
    };
    return b;
  };
  return { live, created: () => created, stop: () => (device.createBuffer = create) };
}

/** A device of its own (for tests that break it), from the process's Dawn instance. */
async function freshDevice(): Promise<GPUDevice> {
  const adapter = await dawnGpu().requestAdapter();
  return (await adapter?.requestDevice()) as GPUDevice;
}

let engine: Engine;
let spec: ModelSpec;
let dir: string;
let ref: ReferenceModel;
const PROMPT = makePrompt(12);
const GREEDY: GenerateOptions = { maxTokens: 12, ignoreEos: true };

beforeAll(async () => {
  ({ dir, spec } = modelDir());
  addChatTemplate(dir);
  engine = await createEngine({ model: dir });
  const ckpt = await openCheckpoint(openLocalModelDir(dir));
  try {
    ref = await ReferenceModel.load(spec, ckpt);
  } finally {
    await ckpt.close();
  }
});

afterAll(() => {
  engine?.dispose();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

describe('generate', () => {
  test('the test model is greedy-decoded like the reference and produces varied ids', async () => {
    const got = await ids(engine, PROMPT, GREEDY);
    expect(got).toEqual(ref.greedy(PROMPT, 12));
    expect(new Set(got).size).toBeGreaterThanOrEqual(6);
    // Teacher-forced logits agree with decoding: the last row's argmax is the first greedy id.
    const rows = await engine.logits(PROMPT);
    expect(rows).toHaveLength(PROMPT.length);
    const last = rows.at(-1) as Float32Array;
    expect(last.indexOf(Math.max(...last))).toBe(got[0]);
  });

  test('streaming yields the tokens whose texts make up result().text', async () => {
    const gen = engine.generate(PROMPT, GREEDY);
    expect(gen.promptTokenIds).toEqual(PROMPT);
    const tokens = await collect(gen);
    const r = await gen.result();
    expect(tokens.map((t) => t.text).join('')).toBe(r.text);
    // Real tokens in order; a final chunk with id null may carry text the decoder held back.
    const real = tokens.filter((t) => t.id !== null);
    expect(real.map((t) => t.id)).toEqual(r.tokenIds);
    expect(tokens.slice(real.length).every((t) => t.id === null)).toBe(true);
    expect(r.tokenIds).toHaveLength(12);
    expect(r.text.length).toBeGreaterThan(0);
    expect(r.text).toBe(engine.tokenizer.decode(r.tokenIds));
    expect(r.promptTokenIds).toEqual(PROMPT);
    expect(r.finishReason).toBe('length');
    expect(r.timings.prefillMs).toBeGreaterThan(0);
    expect(r.timings.decodeMs).toBeGreaterThan(0);
    // A Generation is consumed once.
    await expect(collect(gen)).rejects.toThrow(KilnError);
  });

  test('a text prompt is encoded with BOS', async () => {
    const r = await engine.generate('once upon a time', { maxTokens: 3, ignoreEos: true }).result();
    expect(r.promptTokenIds).toEqual(engine.encodePrompt('once upon a time'));
    expect(r.promptTokenIds[0]).toBe(1);
    expect(r.tokenIds).toEqual(ref.greedy(r.promptTokenIds, 3));
  });

  test('breaking out of the stream early releases the engine', async () => {
    const solo = await ids(engine, PROMPT, GREEDY);
    const gen = engine.generate(PROMPT, GREEDY);
    // Queued behind the stream below; it must run once the stream is abandoned.
    const queued = engine.generate(makePrompt(9, 1), GREEDY).result();
    let n = 0;
    for await (const t of gen) {
      expect(t.id).toBe(solo[n]);
      if (++n === 3) break;
    }
    const r = await gen.result();
    expect(r.tokenIds).toEqual(solo.slice(0, 3));
    // Stopping early is an abort, not a "length" finish.
    expect(r.finishReason).toBe('abort');
    expect((await queued).tokenIds).toEqual(await ids(engine, makePrompt(9, 1), GREEDY));
    // The KV blocks came back: a prompt that needs every block of the context still runs.
    const long = makePrompt(engine.contextLength - 2, 2);
    expect((await engine.generate(long, { maxTokens: 2, ignoreEos: true }).result()).tokenIds).toHaveLength(
      2,
    );
    expect(await ids(engine, PROMPT, GREEDY)).toEqual(solo);
  });

  test('concurrent calls run one after another and each equals its solo output', async () => {
    const requests: [number[], GenerateOptions][] = [
      [makePrompt(12, 3), GREEDY],
      [makePrompt(20, 4), { ...GREEDY, temperature: 1, seed: 7 }],
      [makePrompt(7, 5), { ...GREEDY, repetitionPenalty: 1.3 }],
      [makePrompt(30, 6), { maxTokens: 5, ignoreEos: true, temperature: 0.8, topP: 0.9, seed: 3 }],
    ];
    const solo: number[][] = [];
    for (const [p, o] of requests) solo.push(await ids(engine, p, o));
    const soloLogits = await engine.logits(makePrompt(17, 7));
    const [logits, ...together] = await Promise.all([
      engine.logits(makePrompt(17, 7)),
      ...requests.map(([p, o]) => ids(engine, p, o)),
    ]);
    expect(together).toEqual(solo);
    expect(logits).toEqual(soloLogits);
    // Interleaved consumers of two streams also get their solo outputs.
    const a = engine.generate(requests[0]![0], GREEDY);
    const b = engine.generate(requests[1]![0], requests[1]![1]);
    const [ta, tb] = await Promise.all([collect(b), collect(a)]).then(([x, y]) => [y, x]);
    expect(ta!.filter((t) => t.id !== null).map((t) => t.id)).toEqual(solo[0]);
    expect(tb!.filter((t) => t.id !== null).map((t) => t.id)).toEqual(solo[1]);
  });
});

describe('sampling', () => {
  const sampled: GenerateOptions = { maxTokens: 16, ignoreEos: true, temperature: 1 };

  test('a seed reproduces a sample; different seeds give different samples', async () => {
    const a = await ids(engine, PROMPT, { ...sampled, seed: 42 });
    const b = await ids(engine, PROMPT, { ...sampled, seed: 42 });
    const c = await ids(engine, PROMPT, { ...sampled, seed: 43 });
    expect(a).toHaveLength(16);
    expect(b).toEqual(a);
    expect(c).not.toEqual(a);
    // Temperature 1 really samples: it leaves the greedy path.
    expect(a).not.toEqual(await ids(engine, PROMPT, { ...GREEDY, maxTokens: 16 }));
  });

  test('a seed gives the same sample whatever the prefill chunk size', async () => {
    // Only the last prefill chunk's logits are sampled: earlier chunks must not draw random numbers.
    const prompt = makePrompt(20, 8);
    const opts: GenerateOptions = { ...sampled, maxTokens: 12, seed: 7 };
    const chunked = await createEngine({ model: dir, prefillChunkTokens: 4 });
    try {
      const want = await ids(engine, prompt, opts);
      expect(await ids(chunked, prompt, opts)).toEqual(want);
      // The chunking itself is exact: greedy decoding agrees too.
      expect(await ids(chunked, prompt, GREEDY)).toEqual(await ids(engine, prompt, GREEDY));
    } finally {
      chunked.dispose();
    }
  });

  test('top-k 1 and a tiny top-p are greedy at any temperature', async () => {
    const greedy = await ids(engine, PROMPT, GREEDY);
    expect(await ids(engine, PROMPT, { ...GREEDY, temperature: 1.5, topK: 1, seed: 1 })).toEqual(greedy);
    expect(await ids(engine, PROMPT, { ...GREEDY, temperature: 1.5, topP: 1e-6, seed: 2 })).toEqual(greedy);
  });

  test('GPU and CPU samplers draw the first token from the same distribution', async () => {
    // The exact distribution of the first sampled token (T = 1.3, top-k 6, top-p 0.9) from the
    // engine's own logits, then 300 seeded draws through each sampler: every token's count is within
    // 5 binomial standard deviations of 300·p (deterministic with fixed seeds; 5σ keeps the bound
    // honest rather than tuned to them).
    const params = { temperature: 1.3, topK: 6, topP: 0.9 };
    const logits = (await engine.logits(PROMPT)).at(-1) as Float32Array;
    const probs = sampleRefProbabilities(logits, params);
    const cpu = await createEngine({ model: dir, sampling: 'cpu' });
    try {
      for (const e of [engine, cpu]) {
        const counts = new Map<number, number>();
        for (let seed = 0; seed < 300; seed++) {
          const [id] = await ids(e, PROMPT, { ...params, maxTokens: 1, ignoreEos: true, seed });
          counts.set(id as number, (counts.get(id as number) ?? 0) + 1);
        }
        for (const id of counts.keys())
          expect(probs[id], `token ${id} drawn but excluded`).toBeGreaterThan(0);
        probs.forEach((p, id) => {
          const sd = Math.sqrt(300 * p * (1 - p));
          expect(Math.abs((counts.get(id) ?? 0) - 300 * p), `token ${id}`).toBeLessThanOrEqual(5 * sd + 1e-9);
        });
      }
    } finally {
      cpu.dispose();
    }
  });

  test('with the same seed the GPU and CPU samplers give the same tokens', async () => {
    // Both paths follow the sample kernel's rules and take one uniform per token from the
    // request's generator, so a seed gives one sequence whichever path draws (a draw within f32
    // rounding of a boundary could differ; none does for these seeds).
    const cpu = await createEngine({ model: dir, sampling: 'cpu' });
    try {
      for (const over of [
        { temperature: 1.3, topK: 6, topP: 0.9 },
        { temperature: 0.8, repetitionPenalty: 1.3 },
        { temperature: 1 },
      ]) {
        for (const seed of [3, 11]) {
          const opts = { ...GREEDY, ...over, maxTokens: 12, seed };
          const gpuIds = await ids(engine, PROMPT, opts);
          expect(await ids(cpu, PROMPT, opts), `${JSON.stringify(over)} seed ${seed}`).toEqual(gpuIds);
        }
      }
    } finally {
      cpu.dispose();
    }
  });

  test('repetition penalty changes the output the way the reference says', async () => {
    const penalty = 1.5;
    const got = await ids(engine, PROMPT, { ...GREEDY, repetitionPenalty: penalty });
    // The reference with HF's penalty over prompt + generated ids, then argmax.
    const ctx = [...PROMPT];
    const want: number[] = [];
    for (let s = 0; s < 12; s++) {
      const row = Float32Array.from(ref.forward(ctx).at(-1) as Float64Array);
      applyRepetitionPenalty(row, ctx, penalty);
      const best = row.indexOf(Math.max(...row));
      want.push(best);
      ctx.push(best);
    }
    expect(got).toEqual(want);
    expect(got).not.toEqual(await ids(engine, PROMPT, GREEDY));
  });
});

describe('stopping', () => {
  test('an AbortSignal stops the stream with finishReason "abort"', async () => {
    const controller = new AbortController();
    const gen = engine.generate(PROMPT, { ...GREEDY, signal: controller.signal });
    let n = 0;
    const seen: number[] = [];
    for await (const t of gen) {
      if (t.id !== null) seen.push(t.id);
      if (t.id !== null && ++n === 3) {
        // A slow consumer: later ids are read back (queued) before it aborts; none may follow.
        await new Promise((r) => setTimeout(r, 300));
        controller.abort();
      }
    }
    const r = await gen.result();
    expect(r.finishReason).toBe('abort');
    expect(seen).toHaveLength(3);
    expect(r.tokenIds).toEqual((await ids(engine, PROMPT, GREEDY)).slice(0, 3));
  });

  test('a signal aborted before or during prefill ends with no tokens and finishReason "abort"', async () => {
    const r = await engine.generate(PROMPT, { ...GREEDY, signal: AbortSignal.abort() }).result();
    expect(r).toMatchObject({ tokenIds: [], text: '', finishReason: 'abort', promptTokenIds: PROMPT });
    // Aborted between the first and second prefill chunks of a 30-token prompt (chunks of 8):
    // the signal reads as aborted from its second check on.
    const chunked = await createEngine({ model: dir, prefillChunkTokens: 8 });
    try {
      const signal = new AbortController().signal;
      let checks = 0;
      Object.defineProperty(signal, 'aborted', { get: () => ++checks > 1 });
      const done = chunked.generate(makePrompt(30), { ...GREEDY, signal }).result();
      const r2 = await done;
      expect(r2.finishReason).toBe('abort');
      expect(r2.tokenIds).toEqual([]);
      expect(checks).toBe(2);
      // The engine is free afterwards.
      expect(await ids(chunked, PROMPT, GREEDY)).toEqual(await ids(engine, PROMPT, GREEDY));
    } finally {
      chunked.dispose();
    }
  });

  test('a generation aborted before its first step ends without running; the others go on', async () => {
    const later = makePrompt(9, 1);
    const [soloFirst, soloLater] = [await ids(engine, PROMPT, GREEDY), await ids(engine, later, GREEDY)];
    const settled: string[] = [];
    const note = <T>(name: string, p: Promise<T>) => p.finally(() => settled.push(name));
    const controller = new AbortController();
    const first = note('first', engine.generate(PROMPT, GREEDY).result());
    const waiting = note(
      'waiting',
      engine.generate(PROMPT, { ...GREEDY, signal: controller.signal }).result(),
    );
    const last = note('last', engine.generate(later, GREEDY).result());
    controller.abort();
    const [a, w, l] = await Promise.all([first, waiting, last]);
    expect(w).toMatchObject({ tokenIds: [], text: '', finishReason: 'abort' });
    expect(w.timings.prefillMs).toBe(0);
    // It ended at the first step boundary, before any token; the others ran (batched together)
    // to exactly the ids each gives alone.
    expect(settled[0]).toBe('waiting');
    expect(a.tokenIds).toEqual(soloFirst);
    expect(l.tokenIds).toEqual(soloLater);
    expect(await ids(engine, PROMPT, GREEDY)).toEqual(soloFirst);
  });

  test('an EOS id stops generation right before it, with finishReason "stop"', async () => {
    const greedy = await ids(engine, PROMPT, GREEDY);
    // The first id at step >= 3 that has not appeared before becomes the model's eos_token_id.
    const k = greedy.findIndex((id, i) => i >= 3 && !greedy.slice(0, i).includes(id));
    expect(k).toBeGreaterThan(0);
    const eos = greedy[k] as number;
    const { dir: eosDir } = modelDir({ config: { eos_token_id: eos } });
    const e = await createEngine({ model: eosDir });
    try {
      expect(e.eosTokenIds).toContain(eos);
      const r = await e.generate(PROMPT, { maxTokens: 12 }).result();
      expect(r.finishReason).toBe('stop');
      expect(r.tokenIds).toEqual(greedy.slice(0, k));
      expect(r.tokenIds).not.toContain(eos);
      expect(r.text).toBe(e.tokenizer.decode(greedy.slice(0, k)));
      const ignoring = await e.generate(PROMPT, { ...GREEDY, ignoreEos: true }).result();
      expect(ignoring.tokenIds).toEqual(greedy);
      expect(ignoring.finishReason).toBe('length');
    } finally {
      e.dispose();
    }
  });

  test('maxTokens is honoured with finishReason "length"', async () => {
    const greedy = await ids(engine, PROMPT, GREEDY);
    for (const n of [0, 1, 5]) {
      const r = await engine.generate(PROMPT, { maxTokens: n, ignoreEos: true }).result();
      expect(r.tokenIds).toEqual(greedy.slice(0, n));
      expect(r.finishReason).toBe('length');
    }
  });
});

describe('context length', () => {
  let small: Engine;
  beforeAll(async () => {
    small = await createEngine({ model: dir, contextLength: 32 });
  });
  afterAll(() => small?.dispose());

  test('generation stops at the end of the context', async () => {
    expect(small.contextLength).toBe(32);
    const r = await small.generate(makePrompt(29), { ignoreEos: true }).result();
    expect(r.tokenIds).toHaveLength(3);
    expect(r.finishReason).toBe('length');
    // maxTokens past the context is capped, not an error.
    const capped = await small.generate(makePrompt(29), { maxTokens: 100, ignoreEos: true }).result();
    expect(capped.tokenIds).toEqual(r.tokenIds);
  });

  test('a prompt longer than the context is an InvalidRequestError naming both lengths', async () => {
    const err = thrownBy(() => small.generate(makePrompt(40)));
    expect(err).toBeInstanceOf(InvalidRequestError);
    expect((err as Error).message).toMatch(/\b40 tokens\b/);
    expect((err as Error).message).toMatch(/\b32 tokens\b/);
    // It says how to get a longer context (the model allows 256).
    expect((err as Error).message).toMatch(/256/);
    await expect(small.logits(makePrompt(33))).rejects.toThrow(InvalidRequestError);
    // The engine still serves the next request.
    expect((await small.generate(PROMPT, { maxTokens: 2, ignoreEos: true }).result()).tokenIds).toHaveLength(
      2,
    );
  });
});

describe('request validation', () => {
  test.each([
    [[1, 128], /token id 128 is outside the vocabulary \(0\.\.127\)/],
    [[1, -1], /token id -1/],
    [[1, 2.5], /token id 2\.5/],
    [[], /prompt is empty/],
  ])('prompt %j is rejected', async (prompt, message) => {
    const err = thrownBy(() => engine.generate(prompt));
    expect(err).toBeInstanceOf(InvalidRequestError);
    expect((err as Error).message).toMatch(message);
    await expect(engine.logits(prompt)).rejects.toThrow(message);
  });

  test.each([
    [{ temperature: -1 }, 'temperature'],
    [{ temperature: NaN }, 'temperature'],
    [{ temperature: Infinity }, 'temperature'],
    [{ topK: -1 }, 'topK'],
    [{ topK: 2.5 }, 'topK'],
    [{ topP: 0 }, 'topP'],
    [{ topP: 1.5 }, 'topP'],
    [{ repetitionPenalty: 0 }, 'repetitionPenalty'],
    [{ repetitionPenalty: -1 }, 'repetitionPenalty'],
    [{ maxTokens: -1 }, 'maxTokens'],
    [{ maxTokens: 1.5 }, 'maxTokens'],
  ] as [GenerateOptions, string][])(
    'sampling %j is an InvalidRequestError naming %s',
    async (opts, field) => {
      const err = thrownBy(() => engine.generate(PROMPT, opts));
      expect(err).toBeInstanceOf(InvalidRequestError);
      expect((err as Error).message).toContain(field);
    },
  );

  test.each(
    ['prefillChunkTokens', 'contextLength', 'memoryLimitBytes'].flatMap((field) =>
      [0, -1, 1.5, NaN].map((v) => [field, v] as const),
    ),
  )('engine option %s = %d is an InvalidRequestError naming it', async (field, value) => {
    const err = await createEngine({ model: dir, [field]: value }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(InvalidRequestError);
    expect((err as Error).message).toContain(field);
  });

  test.each([
    ['attentionSoftmax', 'exact'],
    ['sampling', 'gpu2'],
    ['activations', 'bf16'],
  ] as const)(
    'engine option %s = %j is an InvalidRequestError naming it and the choices',
    async (field, value) => {
      const err = await createEngine({ model: dir, [field]: value }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(InvalidRequestError);
      expect((err as Error).message).toMatch(new RegExp(`${field} must be '.*' or '.*', got ${value}`));
    },
  );

  test('the engine serves requests after rejecting some', async () => {
    expect(await ids(engine, PROMPT, GREEDY)).toEqual(ref.greedy(PROMPT, 12));
  });
});

describe('memory limit', () => {
  test('too small a limit is a DeviceMemoryError naming the bytes needed and the limit', async () => {
    const err = await createEngine({ model: dir, memoryLimitBytes: 4096 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(DeviceMemoryError);
    const msg = (err as Error).message;
    expect(msg).toContain('memory limit of 4.00 KiB');
    const m = /needs ([\d.]+) (KiB|MiB) of GPU memory even with a 16-token context/.exec(msg);
    expect(m, msg).not.toBeNull();
    const needed = Number(m![1]) * (m![2] === 'MiB' ? 2 ** 20 : 2 ** 10);
    // At least the f32 weights.
    const weights =
      4 *
      (2 * spec.vocabSize * spec.hiddenSize +
        spec.hiddenSize +
        spec.numLayers *
          (2 * spec.hiddenSize +
            2 * spec.hiddenSize * spec.numHeads * spec.headDim +
            2 * spec.hiddenSize * spec.numKvHeads * spec.headDim +
            3 * spec.hiddenSize * spec.intermediateSize));
    expect(needed).toBeGreaterThan(weights);
    // The number is the real threshold (to the message's rounding): just under fails, just over
    // loads, with the context cut to one block.
    await expect(createEngine({ model: dir, memoryLimitBytes: Math.floor(needed * 0.99) })).rejects.toThrow(
      DeviceMemoryError,
    );
    const ok = await createEngine({ model: dir, memoryLimitBytes: Math.ceil(needed * 1.01) });
    expect(ok.contextLength).toBe(16);
    expect(ok.memoryPlan?.note).toMatch(/context was cut from 256 to 16 tokens/);
    ok.dispose();
  });
});

describe('chat.completions.create', () => {
  const messages = [
    { role: 'system' as const, content: 'you are a story teller' },
    { role: 'user' as const, content: 'tell me a story' },
  ];

  test('non-streaming returns an OpenAI chat.completion with usage', async () => {
    const before = Math.floor(Date.now() / 1000);
    const c = await engine.chat.completions.create({ messages, max_tokens: 6 });
    const promptIds = engine.encodeChat(messages);
    const rendered = engine.tokenizer.applyChatTemplate(messages);
    expect(rendered).toMatch(
      /^<\|im_start\|>system\nyou are a story teller<\|im_end\|>\n.*<\|im_start\|>assistant\n$/s,
    );
    // As apply_chat_template(tokenize=True): no special tokens beyond what the template writes.
    expect(promptIds).toEqual(engine.encodePrompt(rendered, false));
    const direct = await engine.generate(promptIds, { maxTokens: 6 }).result();
    expect(c).toEqual({
      id: expect.stringMatching(/^chatcmpl-/),
      object: 'chat.completion',
      created: expect.any(Number),
      model: engine.modelName,
      choices: [
        {
          index: 0,
          message: { role: 'assistant', content: direct.text, refusal: null },
          finish_reason: direct.finishReason,
          logprobs: null,
        },
      ],
      usage: {
        prompt_tokens: promptIds.length,
        completion_tokens: direct.tokenIds.length,
        total_tokens: promptIds.length + direct.tokenIds.length,
      },
    });
    expect(c.created).toBeGreaterThanOrEqual(before);
    expect(c.usage.completion_tokens).toBeGreaterThan(0);
    expect(c.usage.completion_tokens).toBeLessThanOrEqual(6);
    // max_completion_tokens takes precedence over max_tokens, as in OpenAI's API.
    const c2 = await engine.chat.completions.create({ messages, max_tokens: 6, max_completion_tokens: 2 });
    expect(c2.usage.completion_tokens).toBeLessThanOrEqual(2);
  });

  test('streaming yields chat.completion.chunk objects that add up to the completion', async () => {
    const whole = await engine.chat.completions.create({ messages, max_tokens: 8 });
    const stream = await engine.chat.completions.create({
      messages,
      max_tokens: 8,
      stream: true,
      stream_options: { include_usage: true },
    });
    const chunks: ChatCompletionChunk[] = [];
    for await (const ch of stream) chunks.push(ch);
    expect(chunks.length).toBeGreaterThanOrEqual(3);
    const id = chunks[0]!.id;
    for (const ch of chunks) {
      expect(ch.id).toBe(id);
      expect(ch.object).toBe('chat.completion.chunk');
      expect(ch.model).toBe(engine.modelName);
    }
    // As OpenAI streams: one choice per chunk, the finish reason in the last of them, then (asked
    // for by stream_options.include_usage) a chunk with no choices that carries the usage.
    const usageChunk = chunks.at(-1)!;
    expect(usageChunk.choices).toEqual([]);
    expect(usageChunk.usage).toEqual(whole.usage);
    const choices = chunks.slice(0, -1);
    for (const ch of choices) {
      expect(ch.choices).toHaveLength(1);
      expect(ch.choices[0]!.index).toBe(0);
      expect(ch.usage).toBeUndefined();
    }
    expect(choices[0]!.choices[0]!.delta.role).toBe('assistant');
    expect(choices.at(-1)!.choices[0]!.finish_reason).toBe(whole.choices[0]!.finish_reason);
    for (const ch of choices.slice(0, -1)) expect(ch.choices[0]!.finish_reason).toBeNull();
    const content = choices.map((ch) => ch.choices[0]!.delta.content ?? '').join('');
    expect(content).toBe(whole.choices[0]!.message.content);
    // Without include_usage, no usage chunk.
    const plain = await engine.chat.completions.create({ messages, max_tokens: 8, stream: true });
    const plainChunks: ChatCompletionChunk[] = [];
    for await (const ch of plain) plainChunks.push(ch);
    expect(plainChunks.length).toBe(choices.length);
    expect(plainChunks.every((ch) => ch.usage === undefined)).toBe(true);
  });

  test('bad requests are rejected', async () => {
    await expect(engine.chat.completions.create({ messages: [] })).rejects.toThrow(InvalidRequestError);
    await expect(engine.chat.completions.create({ messages, temperature: -1 })).rejects.toThrow(
      InvalidRequestError,
    );
  });

  test('a model without a chat template says so', async () => {
    const { dir: plain } = modelDir();
    const e = await createEngine({ model: plain });
    try {
      await expect(e.chat.completions.create({ messages })).rejects.toThrow(UnsupportedModelError);
    } finally {
      e.dispose();
    }
  });

  test('chat_template_kwargs reach the template (Qwen3-style enable_thinking); bad ones are 400s', async () => {
    const off = { enable_thinking: false };
    const rendered = engine.tokenizer.applyChatTemplate(messages, { templateKwargs: off });
    expect(rendered.endsWith('<|im_start|>assistant\n<think>\n\n</think>\n\n')).toBe(true);
    const ids = engine.encodeChat(messages, off);
    expect(ids).toEqual(engine.encodePrompt(rendered, false));
    expect(ids.length).toBeGreaterThan(engine.encodeChat(messages).length);
    expect(await engine.tokenize({ messages, chatTemplateKwargs: off })).toEqual(ids);
    const c = await engine.chat.completions.create({ messages, max_tokens: 2, chat_template_kwargs: off });
    expect(c.usage.prompt_tokens).toBe(ids.length);
    const on = await engine.chat.completions.create({
      messages,
      max_tokens: 2,
      chat_template_kwargs: { enable_thinking: true },
    });
    expect(on.usage.prompt_tokens).toBe(engine.encodeChat(messages).length);
    await expect(
      engine.chat.completions.create({
        messages,
        max_tokens: 2,
        chat_template_kwargs: 5 as unknown as Record<string, unknown>,
      }),
    ).rejects.toMatchObject({ param: 'chat_template_kwargs' });
    await expect(
      engine.chat.completions.create({ messages, max_tokens: 2, chat_template_kwargs: { messages: [] } }),
    ).rejects.toThrow(InvalidRequestError);
  });
});

describe('failures', () => {
  test('a run that fails mid-way rejects the stream and result() with the same GpuDeviceError', async () => {
    const device = await freshDevice();
    const e = await createEngine({ model: dir, device });
    try {
      const gen = e.generate(PROMPT, GREEDY);
      let pending: Promise<unknown> | null = null;
      const seen: number[] = [];
      const streamErr = await (async () => {
        for await (const t of gen) {
          if (t.id !== null) seen.push(t.id);
          if (!pending) {
            // Another caller waits for the whole result while the consumer streams.
            pending = gen.result().then(
              (r) => r,
              (err: unknown) => ({ rejected: err }),
            );
            device.destroy();
          }
        }
      })().then(
        () => null,
        (err: unknown) => err,
      );
      expect(streamErr).toBeInstanceOf(GpuDeviceError);
      expect(seen).toEqual(ref.greedy(PROMPT, 1));
      // Not a partial result passed off as a finished one.
      expect(await pending).toEqual({ rejected: streamErr });
    } finally {
      e.dispose();
    }
  });

  test('a load that fails while uploading weights frees every buffer it made on an injected device', async () => {
    const { dir: sharded } = modelDir({ shards: 2 });
    const last = join(sharded, 'model-00002-of-00002.safetensors');
    const device = (await testGpu()).device;
    const { live, created, stop } = trackBuffers(device);
    let ticks = 0;
    try {
      const err = await createEngine({
        model: sharded,
        device,
        // The checkpoint opened fine; then its last shard loses the end of its last tensor.
        onProgress: () => {
          if (ticks++ === 0) truncateSync(last, statSync(last).size - 4);
        },
      }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(InvalidModelFileError);
      expect((err as Error).message).toMatch(/truncated/);
    } finally {
      stop();
    }
    // The failure came late in the load, after several weights were on the GPU.
    expect(ticks).toBeGreaterThan(2);
    expect(created()).toBeGreaterThan(2);
    expect([...live].map((b) => b.label)).toEqual([]);
  });

  test("head_dim over the attention kernel's limit fails before any weight is uploaded", async () => {
    const { dir: wide } = modelDir({ headDim: 512 });
    const device = (await testGpu()).device;
    const { live, created, stop } = trackBuffers(device);
    try {
      const err = await createEngine({ model: wide, device }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(UnsupportedModelError);
      expect((err as Error).message).toMatch(/head_dim 512/);
    } finally {
      stop();
    }
    expect(created()).toBe(0);
    expect(live.size).toBe(0);
  });
});

describe('dispose', () => {
  test('a disposed engine refuses work; dispose is idempotent', async () => {
    const e = await createEngine({ model: dir });
    e.dispose();
    e.dispose();
    expect(() => e.generate(PROMPT)).toThrow(/disposed/);
    await expect(e.chat.completions.create({ messages: [{ role: 'user', content: 'hi' }] })).rejects.toThrow(
      /disposed/,
    );
  });

  test('on an injected device, dispose frees every buffer the engine made and leaves the device usable', async () => {
    const device = (await testGpu()).device;
    const { live, stop } = trackBuffers(device);
    let e: Engine;
    try {
      e = await createEngine({ model: dir, device });
      expect(await e.generate(PROMPT, GREEDY).result()).toMatchObject({ tokenIds: ref.greedy(PROMPT, 12) });
      await e.logits(makePrompt(20));
    } finally {
      stop();
    }
    expect(live.size).toBeGreaterThan(0);
    e.dispose();
    expect([...live].map((b) => b.label)).toEqual([]);
    // The device is the caller's: still alive for another engine.
    const again = await createEngine({ model: dir, device });
    expect(await ids(again, PROMPT, GREEDY)).toEqual(ref.greedy(PROMPT, 12));
    again.dispose();
  });
});
