/**
 * The engine: loads a model folder onto a GPU and generates text. It owns the tokenizer, the
 * weights, the KV cache and the forward pass, and exposes `generate()` (an async iterable of
 * tokens) and an OpenAI-shaped `chat.completions.create()`. Runs unchanged in a browser; the Node
 * entry (src/node/index.ts) adds local folders, Hub ids and Dawn.
 */
import { InvalidRequestError, DeviceMemoryError, KilnError } from '../errors.js';
import { acquireGpu, formatBytes, type AdapterSummary, type GpuContext } from '../gpu/device.js';
import type { ModelDir } from '../io/byte-source.js';
import { loadModelSpec } from '../io/config.js';
import { openCheckpoint, type Checkpoint } from '../io/safetensors.js';
import { IncrementalDecoder, KilnTokenizer, type ChatMessage } from '../io/tokenizer.js';
import { ChatCompletions } from './chat.js';
import { ForwardModel } from './forward.js';
import type { GenerateOptions, GenerateResult, GeneratedToken, FinishReason } from './generation.js';
import { BLOCK_TOKENS, kvCacheBytes, PagedKvCache } from './kv-cache.js';
import type { ModelSpec } from './model-spec.js';
import { DEFAULT_SAMPLING, isPlainGreedy, Rng, sampleToken, type SamplingParams } from './sampler.js';
import {
  destroyWeights,
  loadWeights,
  validateCheckpoint,
  weightBytes,
  type LoadProgress,
  type ModelWeights,
} from './weights.js';

export interface EngineOptions {
  /** The model folder (Hugging Face layout). The Node entry also takes paths and Hub ids. */
  model: ModelDir;
  /** An existing device to run on (not destroyed by `dispose()`). */
  device?: GPUDevice;
  /** The WebGPU entry point (default `navigator.gpu`). */
  gpu?: GPU;
  /** Referenced for the engine's lifetime (Dawn's instance in Node). */
  keepAlive?: unknown;
  /** Tokens of context (prompt + generated); default min(max_position_embeddings, 4096). */
  contextLength?: number;
  /** Prompt tokens per prefill step (bounds activation memory and the length of one submit). */
  prefillChunkTokens?: number;
  /** Refuse to load when weights + KV cache + activations would exceed this many bytes. */
  memoryLimitBytes?: number;
  onProgress?: (p: LoadProgress) => void;
}

const DEFAULT_CONTEXT = 4096;
const DEFAULT_PREFILL_CHUNK = 256;
/** The engine serves one sequence at a time for now; its KV blocks live under this id. */
const SEQ = 0;

export class Engine {
  readonly chat: { completions: ChatCompletions };
  /** Milliseconds spent in createEngine (config, tokenizer, weights, KV cache). */
  loadMs = 0;
  private queue: Promise<void> = Promise.resolve();
  private disposed = false;

  private constructor(
    readonly spec: ModelSpec,
    readonly tokenizer: KilnTokenizer,
    readonly contextLength: number,
    private readonly ctx: GpuContext,
    private readonly ownsDevice: boolean,
    private readonly weights: ModelWeights,
    private readonly kv: PagedKvCache,
    private readonly forward: ForwardModel,
    private readonly prefillChunk: number,
    private readonly modelLocation: string,
  ) {
    this.chat = { completions: new ChatCompletions(this) };
  }

  static async create(opts: EngineOptions): Promise<Engine> {
    const t0 = performance.now();
    const spec = await loadModelSpec(opts.model);
    const tokenizer = await KilnTokenizer.load(opts.model);
    if (tokenizer.vocabSize > spec.vocabSize) {
      throw new KilnError(
        `the tokenizer in ${opts.model.location} has ${tokenizer.vocabSize} tokens but config.json's vocab_size is ${spec.vocabSize}`,
      );
    }
    const contextLength = Math.min(spec.maxPositionEmbeddings, opts.contextLength ?? DEFAULT_CONTEXT);
    if (!Number.isInteger(contextLength) || contextLength < 1) {
      throw new KilnError(`contextLength must be a positive integer, got ${opts.contextLength}`);
    }
    const prefillChunk = Math.max(
      1,
      Math.min(opts.prefillChunkTokens ?? DEFAULT_PREFILL_CHUNK, contextLength),
    );
    const ckpt = await openCheckpoint(opts.model);
    let ctx: GpuContext | null = null;
    try {
      validateCheckpoint(spec, ckpt);
      const numBlocks = Math.ceil(contextLength / BLOCK_TOKENS);
      checkBudget(spec, ckpt, contextLength, prefillChunk, opts.memoryLimitBytes);
      ctx = await acquireGpu({
        ...(opts.device ? { device: opts.device } : {}),
        ...(opts.gpu ? { gpu: opts.gpu } : {}),
        keepAlive: opts.keepAlive,
      });
      const weights = await loadWeights(ctx, spec, ckpt, opts.onProgress);
      const kv = await PagedKvCache.create(ctx, spec, numBlocks);
      const forward = new ForwardModel(ctx, spec, weights, kv, prefillChunk);
      const engine = new Engine(
        spec,
        tokenizer,
        contextLength,
        ctx,
        !opts.device,
        weights,
        kv,
        forward,
        prefillChunk,
        opts.model.location,
      );
      await engine.warmUp();
      engine.loadMs = performance.now() - t0;
      return engine;
    } catch (e) {
      ctx?.close(!opts.device);
      throw e;
    } finally {
      await ckpt.close();
    }
  }

  /**
   * Runs one decode-shaped step so every pipeline is compiled (drivers compile lazily at first
   * dispatch) before the first request: load time pays for it, not the first token's latency.
   */
  private async warmUp(): Promise<void> {
    try {
      await this.forward.step(this.stepInput([0], 0), false);
    } finally {
      this.kv.release(SEQ);
    }
  }

  /** The model's name for API responses: its folder's location. */
  get modelName(): string {
    return this.modelLocation;
  }

  /** The adapter and device features the engine runs on. */
  get adapter(): AdapterSummary {
    return this.ctx.adapter;
  }

  /** Token ids that end generation (config's eos plus the tokenizer's). */
  get eosTokenIds(): number[] {
    return [...new Set([...this.spec.eosTokenIds, ...this.tokenizer.eosTokenIds])];
  }

  /** Encodes a prompt the way `generate` does. */
  encodePrompt(prompt: string | readonly number[], addSpecialTokens = true): number[] {
    return typeof prompt === 'string' ? this.tokenizer.encode(prompt, { addSpecialTokens }) : [...prompt];
  }

  /** Renders a conversation with the model's chat template and encodes it. */
  encodeChat(messages: readonly ChatMessage[]): number[] {
    return this.tokenizer.encodeChat(messages, { addGenerationPrompt: true });
  }

  /**
   * Generates a continuation of `prompt` (text, or token ids used as given). Iterate the result for
   * tokens as they come, or await `result()` for the whole thing. Calls run one after another.
   */
  generate(prompt: string | readonly number[], opts: GenerateOptions = {}): Generation {
    if (this.disposed) throw new KilnError('the engine has been disposed');
    const ids = this.encodePrompt(prompt, opts.addSpecialTokens ?? true);
    // Bad requests fail here, at the call, not later when the result is consumed.
    this.validatePrompt(ids);
    validateSampling(samplingOf(opts), opts.maxTokens);
    return new Generation(this, ids, opts);
  }

  /** Waits for the engine (the skeleton's KV cache holds one sequence) and returns its release. */
  async acquire(): Promise<() => void> {
    const prev = this.queue;
    let release!: () => void;
    this.queue = new Promise<void>((r) => (release = r));
    await prev;
    return release;
  }

  /**
   * Teacher-forced logits: row i is the next-token distribution after ids[0..i] (the basis of
   * perplexity and of the golden-logit tests). Runs in prefill chunks; [ids.length][vocab] f32.
   */
  async logits(ids: readonly number[]): Promise<Float32Array[]> {
    this.validatePrompt(ids);
    const release = await this.acquire();
    const rows: Float32Array[] = [];
    const V = this.spec.vocabSize;
    // The logits of one step live in one storage binding: with a 150k vocabulary, 256 rows of f32
    // logits would exceed the default 128 MiB, so steps here take as many rows as fit.
    const fit = Math.floor(this.ctx.limits.maxStorageBufferBindingSize / (V * 4));
    const step = Math.max(1, Math.min(this.prefillChunk, fit));
    try {
      for (let start = 0; start < ids.length; start += step) {
        const chunk = ids.slice(start, Math.min(ids.length, start + step));
        const input = { ...this.stepInput(chunk, start), logitRows: chunk.map((_, i) => i) };
        const all = await this.forward.step(input, true);
        for (let i = 0; i < chunk.length; i++) rows.push(all.slice(i * V, (i + 1) * V));
      }
      return rows;
    } finally {
      this.kv.release(SEQ);
      release();
    }
  }

  /** @internal The token loop behind Generation. */
  async *run(
    promptIds: readonly number[],
    opts: GenerateOptions,
    out: GenerateResult,
  ): AsyncGenerator<GeneratedToken> {
    const sampling = samplingOf(opts);
    const greedy = isPlainGreedy(sampling);
    const rng = new Rng(opts.seed ?? Math.floor(Math.random() * 2 ** 32));
    const eos = new Set(opts.ignoreEos ? [] : this.eosTokenIds);
    const room = this.contextLength - promptIds.length;
    const maxTokens = Math.min(opts.maxTokens ?? room, room);
    const context = [...promptIds];
    const decoder = new IncrementalDecoder(this.tokenizer);
    // Stays null if the consumer stops iterating early: that counts as an abort.
    let finish: FinishReason | null = null;
    const pick = async (input: Parameters<ForwardModel['step']>[0]): Promise<number> => {
      if (greedy) return (await this.forward.step(input, false))[0] as number;
      const logits = await this.forward.step(input, true);
      return sampleToken(logits, sampling, rng, context);
    };
    this.kv.release(SEQ);
    try {
      if (maxTokens <= 0) {
        finish = 'length';
        return;
      }
      // Prefill in chunks: each chunk's K/V land in the cache before the next chunk attends to them.
      const tPrefill = performance.now();
      let next = -1;
      for (let start = 0; start < promptIds.length; start += this.prefillChunk) {
        if (opts.signal?.aborted) {
          // As during decoding: a finish reason, not an exception (GenerateOptions.signal).
          finish = 'abort';
          return;
        }
        const end = Math.min(promptIds.length, start + this.prefillChunk);
        next = await pick(this.stepInput(promptIds.slice(start, end), start));
      }
      out.timings.prefillMs = performance.now() - tPrefill;
      const tDecode = performance.now();
      for (let produced = 0; ;) {
        if (eos.has(next)) {
          finish = 'stop';
          break;
        }
        produced++;
        context.push(next);
        out.tokenIds.push(next);
        const text = decoder.push(next);
        out.text += text;
        yield { id: next, text };
        if (produced >= maxTokens) {
          finish = 'length';
          break;
        }
        if (opts.signal?.aborted) {
          finish = 'abort';
          break;
        }
        next = await pick(this.stepInput([next], context.length - 1));
      }
      out.timings.decodeMs = performance.now() - tDecode;
      const rest = decoder.flush();
      if (rest) {
        out.text += rest;
        yield { id: null, text: rest };
      }
    } finally {
      this.kv.release(SEQ);
      out.finishReason = finish ?? 'abort';
      const t = out.timings;
      t.prefillTokensPerS = t.prefillMs > 0 ? (promptIds.length / t.prefillMs) * 1000 : 0;
      const decoded = Math.max(0, out.tokenIds.length - 1);
      t.decodeTokensPerS = t.decodeMs > 0 && decoded > 0 ? (decoded / t.decodeMs) * 1000 : 0;
    }
  }

  private stepInput(tokens: readonly number[], start: number) {
    const slots = this.kv.reserve(SEQ, start, start + tokens.length);
    return {
      tokens,
      positions: tokens.map((_, i) => start + i),
      slots,
      blockTableOffsets: tokens.map(() => 0),
      blockTable: this.kv.blockTable(SEQ),
      logitRows: [tokens.length - 1],
    };
  }

  private validatePrompt(ids: readonly number[]): void {
    if (ids.length === 0) {
      throw new InvalidRequestError(
        'the prompt is empty and the tokenizer adds no BOS token: give at least one token',
      );
    }
    if (ids.length > this.contextLength) {
      throw new InvalidRequestError(
        `the prompt is ${ids.length} tokens, longer than the context of ${this.contextLength} tokens` +
          (this.contextLength < this.spec.maxPositionEmbeddings
            ? ` (the model allows ${this.spec.maxPositionEmbeddings}; raise contextLength / --context)`
            : ` (max_position_embeddings of the model)`),
      );
    }
    for (const id of ids) {
      if (!Number.isInteger(id) || id < 0 || id >= this.spec.vocabSize) {
        throw new InvalidRequestError(
          `token id ${id} is outside the vocabulary (0..${this.spec.vocabSize - 1})`,
        );
      }
    }
  }

  /** Frees the GPU memory (and the device, unless it was passed in). */
  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    this.forward.destroy();
    this.kv.destroy();
    destroyWeights(this.ctx, this.weights);
    this.ctx.close(this.ownsDevice);
  }
}

/** A running (or finished) generation: async-iterate for tokens, or await `result()`. */
export class Generation implements AsyncIterable<GeneratedToken> {
  private readonly out: GenerateResult;
  private started = false;
  private finished: Promise<GenerateResult> | null = null;

  constructor(
    private readonly engine: Engine,
    promptIds: number[],
    private readonly opts: GenerateOptions,
  ) {
    this.out = {
      text: '',
      tokenIds: [],
      promptTokenIds: promptIds,
      finishReason: 'length',
      timings: { prefillMs: 0, decodeMs: 0, prefillTokensPerS: 0, decodeTokensPerS: 0 },
    };
  }

  get promptTokenIds(): readonly number[] {
    return this.out.promptTokenIds;
  }

  async *[Symbol.asyncIterator](): AsyncIterator<GeneratedToken> {
    if (this.started) throw new KilnError('a Generation can be iterated once');
    this.started = true;
    let settle!: () => void;
    this.finished = new Promise<void>((r) => (settle = r)).then(() => this.out);
    const release = await this.engine.acquire();
    try {
      // A consumer that stops early ends `run` through return(), which frees the KV blocks.
      yield* this.engine.run(this.out.promptTokenIds, this.opts, this.out);
    } finally {
      release();
      settle();
    }
  }

  /** Runs the generation to the end (if not iterated) and returns everything. */
  async result(): Promise<GenerateResult> {
    if (!this.started) {
      for await (const _ of this) {
        // consume
      }
    } else if (this.finished) {
      await this.finished;
    }
    return this.out;
  }
}

function samplingOf(opts: GenerateOptions): SamplingParams {
  return {
    temperature: opts.temperature ?? DEFAULT_SAMPLING.temperature,
    topK: opts.topK ?? DEFAULT_SAMPLING.topK,
    topP: opts.topP ?? DEFAULT_SAMPLING.topP,
    repetitionPenalty: opts.repetitionPenalty ?? DEFAULT_SAMPLING.repetitionPenalty,
  };
}

function validateSampling(p: SamplingParams, maxTokens: number | undefined): void {
  const bad = (field: string, v: number, want: string) => {
    throw new InvalidRequestError(`${field} is ${v}; expected ${want}`);
  };
  if (!(p.temperature >= 0) || !Number.isFinite(p.temperature))
    bad('temperature', p.temperature, 'a number >= 0');
  if (!Number.isInteger(p.topK) || p.topK < 0) bad('topK', p.topK, 'an integer >= 0 (0 = off)');
  if (!(p.topP > 0 && p.topP <= 1)) bad('topP', p.topP, 'a number in (0, 1]');
  if (!(p.repetitionPenalty > 0) || !Number.isFinite(p.repetitionPenalty)) {
    bad('repetitionPenalty', p.repetitionPenalty, 'a number > 0');
  }
  if (maxTokens !== undefined && (!Number.isInteger(maxTokens) || maxTokens < 0)) {
    bad('maxTokens', maxTokens, 'an integer >= 0');
  }
}

/** Refuses models that cannot fit the caller's memory budget, before touching the GPU. */
function checkBudget(
  spec: ModelSpec,
  ckpt: Checkpoint,
  contextLength: number,
  prefillChunk: number,
  limit: number | undefined,
): void {
  if (limit === undefined) return;
  const w = weightBytes(spec, ckpt);
  const kv = kvCacheBytes(spec, contextLength);
  const act =
    4 *
    (prefillChunk *
      (3 * spec.hiddenSize +
        2 * spec.numHeads * spec.headDim +
        2 * spec.numKvHeads * spec.headDim +
        2 * spec.intermediateSize) +
      2 * spec.vocabSize);
  const total = w + kv + act;
  if (total > limit) {
    throw new DeviceMemoryError(
      `the model needs ${formatBytes(total)} of GPU memory (weights ${formatBytes(w)}, KV cache for ${contextLength} tokens ${formatBytes(kv)}, activations ${formatBytes(act)}), over the memory limit of ${formatBytes(limit)}`,
    );
  }
}

/** Loads a model and returns a ready engine. */
export function createEngine(opts: EngineOptions): Promise<Engine> {
  return Engine.create(opts);
}
