/**
 * The engine: loads a model folder onto a GPU and generates text. It owns the tokenizer, the
 * weights, the KV cache and the forward pass, and exposes `generate()` (an async iterable of
 * tokens) and an OpenAI-shaped `chat.completions.create()`. Runs unchanged in a browser; the Node
 * entry (src/node/index.ts) adds local folders, Hub ids and Dawn.
 */
import { InvalidRequestError, DeviceMemoryError, KilnError, UnsupportedModelError } from '../errors.js';
import { ATTENTION_MAX_HEAD_DIM } from '../kernels/attention.js';
import { acquireGpu, formatBytes, type AdapterSummary, type GpuContext } from '../gpu/device.js';
import type { ModelDir } from '../io/byte-source.js';
import { loadModelSpec } from '../model/config.js';
import { openCheckpoint, type Checkpoint } from '../io/safetensors-checkpoint.js';
import { IncrementalDecoder, KilnTokenizer, type ChatMessage } from '../io/tokenizer.js';
import { ChatCompletions } from '../api/openai/chat.js';
import { ForwardModel, type LinearInputName, type StepInput } from './forward/plan.js';
import { BlockManager } from './kv/block-manager.js';
import { Scheduler, type ScheduledOutcome, type SchedulerStats } from './scheduler.js';
import { GpuTimer } from '../gpu/timer.js';
import type { TuneStore } from '../tuner/cache.js';
import { tuneModel, type TuneOptions, type TuneReport, type TuneResult } from '../tuner/tuner.js';
import type { GenerateOptions, GenerateResult, GeneratedToken, FinishReason } from '../api/types.js';
import { BLOCK_TOKENS, kvBlockBytes, kvCacheBytes, PagedKvCache, type KvDtype } from './kv/cache.js';
import type { ModelSpec } from '../model/spec.js';
import { describeWeightQuant, weightQuantFor, type LoadQuantOptions } from '../weights/source.js';
import { DEFAULT_SAMPLING, type SamplingParams } from './sampling.js';
import {
  destroyWeights,
  loadWeights,
  validateCheckpoint,
  weightBytes,
  type LoadProgress,
  type ModelWeights,
  type WeightQuant,
} from '../weights/loader.js';

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
  /**
   * Decode attention's softmax: 'async' (default) is FlashDecoding++'s unified max, with phi per
   * layer calibrated on the first decode steps (which run the exact kernel meanwhile) and an
   * exact recompute of any row that leaves the safe window; 'two_pass' keeps the exact split-K
   * softmax always.
   */
  attentionSoftmax?: 'async' | 'two_pass';
  /**
   * Where non-greedy tokens are drawn: 'gpu' (default; temperature, top-k, top-p and the
   * repetition penalty run after the LM head and one id is read back) or 'cpu' (the logits row is
   * read back and runtime/sampler.ts draws). Both draw from the same distribution.
   */
  sampling?: 'gpu' | 'cpu';
  /**
   * Storage of the normed activations that the q/k/v, gate/up and LM-head matmuls read: 'f32'
   * (default) or 'f16' (halves them; needs an adapter with shader-f16, refused otherwise).
   * Computation stays f32 either way.
   */
  activations?: 'f32' | 'f16';
  /**
   * 'q4' quantizes a float checkpoint's projections to int4 while loading (round-to-nearest,
   * `quantOptions`); 'none' (default) keeps them as stored. Int4 folders (Kiln, GPTQ, AWQ) load
   * as int4 either way.
   */
  quant?: 'none' | 'q4';
  quantOptions?: LoadQuantOptions;
  /**
   * Tokens of KV cache shared by all sequences (16-token blocks). Default: what 256 MiB of f32 K/V
   * holds (128 MiB with an f16 cache), at least one full context, at most one storage binding per
   * layer.
   */
  kvCacheTokens?: number;
  /**
   * Element type of the KV cache: 'auto' (default) is f16 where the adapter has shader-f16 and f32
   * otherwise; 'f16' (refused without shader-f16) halves the cache's memory and the bytes attention
   * reads, each K/V value rounded once to f16 (11 significant bits); 'f32' stores them exactly.
   * Attention computes in f32 either way.
   */
  kvCache?: 'auto' | 'f16' | 'f32';
  onProgress?: (p: LoadProgress) => void;
  /**
   * Kernel tuning (src/tuner): `true` or options to tune the model's kernels to this adapter. Cached
   * choices (from `store`) apply before the first request; classes not yet tuned are tuned in the
   * background within `budgetMs` (default 5000), one class at a time between generation steps,
   * and the engine switches to the winners when done (`engine.tuning` resolves then). Default:
   * off in the library (the CLI, server and browser app turn it on with a persistent store).
   */
  tune?: boolean | EngineTuneOptions;
}

/** Where background kernel tuning stands (shown by the browser app). */
export interface TuningStatus {
  /** 'off': tuning disabled; 'running': background tuning in progress; 'done'. */
  state: 'off' | 'running' | 'done';
  /** Shape classes whose choice came from the cache at load. */
  cachedClasses: number;
  /** Classes tuned since load (counted as each finishes). */
  tunedClasses: number;
  /** Classes not tuned yet (still running, or the budget was spent): a later load tunes them. */
  leftClasses: number;
}

export interface EngineTuneOptions {
  budgetMs?: number;
  store?: TuneStore;
  warn?: (message: string) => void;
}

/** Decode steps whose attention scores calibrate the unified max. */
const CALIBRATION_STEPS = 8;

const DEFAULT_CONTEXT = 4096;
const DEFAULT_TUNE_BUDGET_MS = 5000;
const DEFAULT_PREFILL_CHUNK = 256;

export class Engine {
  readonly chat: { completions: ChatCompletions };
  /** Milliseconds spent in createEngine (config, tokenizer, weights, KV cache). */
  loadMs = 0;
  private queue: Promise<void> = Promise.resolve();
  private disposed = false;
  /**
   * Background tuning started at load (EngineOptions.tune): resolves to its report once the engine
   * runs the winners, or null when tuning is off or had nothing left to do.
   */
  tuning: Promise<TuneReport | null> = Promise.resolve(null);
  private readonly tuneAbort = new AbortController();
  private tuneStatus: TuningStatus = { state: 'off', cachedClasses: 0, tunedClasses: 0, leftClasses: 0 };

  private constructor(
    readonly spec: ModelSpec,
    readonly tokenizer: KilnTokenizer,
    readonly contextLength: number,
    private readonly ctx: GpuContext,
    private readonly weights: ModelWeights,
    private readonly kv: PagedKvCache,
    private readonly forward: ForwardModel,
    private readonly prefillChunk: number,
    private readonly modelLocation: string,
    gpuSampling: boolean,
    private readonly weightQuant: WeightQuant,
  ) {
    this.chat = { completions: new ChatCompletions(this) };
    this.blocks = new BlockManager({ numBlocks: kv.numBlocks, blockSize: BLOCK_TOKENS });
    this.scheduler = new Scheduler(forward, kv, spec, this.blocks, {
      tokenBudget: prefillChunk,
      contextLength,
      gpuSampling,
      lock: async () => (await this.acquire()) as () => void,
    });
  }

  /** KV blocks of every sequence (the scheduler's and the engine's own exclusive work). */
  private readonly blocks: BlockManager;
  /** Batches every generate() call running at once into shared forward steps. */
  private readonly scheduler: Scheduler;
  /** Sequence id of exclusive work (warm-up, logits, calibration, profiling) while it holds the engine. */
  private exclusive: number | null = null;

  /** Running and waiting requests, KV blocks, prefix-cache hit rate, preemptions. */
  stats(): SchedulerStats {
    return this.scheduler.stats();
  }

  static async create(opts: EngineOptions): Promise<Engine> {
    const t0 = performance.now();
    const spec = await loadModelSpec(opts.model);
    if (spec.headDim > ATTENTION_MAX_HEAD_DIM) {
      throw new UnsupportedModelError(
        `config.json in ${opts.model.location}: head_dim ${spec.headDim} is over the ${ATTENTION_MAX_HEAD_DIM} Kiln's attention kernel supports`,
      );
    }
    const tokenizer = await KilnTokenizer.load(opts.model);
    if (tokenizer.vocabSize > spec.vocabSize) {
      throw new KilnError(
        `the tokenizer in ${opts.model.location} has ${tokenizer.vocabSize} tokens but config.json's vocab_size is ${spec.vocabSize}`,
      );
    }
    positiveInteger('contextLength', opts.contextLength);
    positiveInteger('prefillChunkTokens', opts.prefillChunkTokens);
    positiveInteger('memoryLimitBytes', opts.memoryLimitBytes);
    positiveInteger('kvCacheTokens', opts.kvCacheTokens);
    const attentionSoftmax = oneOf('attentionSoftmax', opts.attentionSoftmax, ['async', 'two_pass'] as const);
    const sampling = oneOf('sampling', opts.sampling, ['gpu', 'cpu'] as const);
    const activations = oneOf('activations', opts.activations, ['f32', 'f16'] as const);
    const kvCache = oneOf('kvCache', opts.kvCache, ['auto', 'f16', 'f32'] as const);
    const quant = weightQuantFor(
      spec,
      opts.model.location,
      oneOf('quant', opts.quant, ['none', 'q4'] as const),
      opts.quantOptions,
    );
    if (activations === 'f16' && quant.kind !== 'float') {
      throw new InvalidRequestError(
        "activations 'f16' applies to float weights; int4 models read f32 activations (use 'f32')",
      );
    }
    const contextLength = Math.min(spec.maxPositionEmbeddings, opts.contextLength ?? DEFAULT_CONTEXT);
    const prefillChunk = Math.min(opts.prefillChunkTokens ?? DEFAULT_PREFILL_CHUNK, contextLength);
    const ckpt = await openCheckpoint(opts.model);
    let ctx: GpuContext | null = null;
    let weights: ModelWeights | null = null;
    let kv: PagedKvCache | null = null;
    let forward: ForwardModel | null = null;
    try {
      validateCheckpoint(spec, ckpt, quant);
      const kvTokens = opts.kvCacheTokens ?? defaultKvTokens(spec, contextLength);
      ctx = await acquireGpu({
        ...(opts.device ? { device: opts.device } : {}),
        ...(opts.gpu ? { gpu: opts.gpu } : {}),
        keepAlive: opts.keepAlive,
      });
      if (activations === 'f16' && !ctx.adapter.shaderF16) {
        throw new InvalidRequestError(
          `activations 'f16' needs the shader-f16 feature, which this adapter (${ctx.adapter.description || ctx.adapter.device}) lacks; use 'f32'`,
        );
      }
      if (kvCache === 'f16' && !ctx.adapter.shaderF16) {
        throw new InvalidRequestError(
          `kvCache 'f16' needs the shader-f16 feature, which this adapter (${ctx.adapter.description || ctx.adapter.device}) lacks; use 'auto' or 'f32'`,
        );
      }
      const kvDtype: KvDtype = kvCache === 'auto' ? (ctx.adapter.shaderF16 ? 'f16' : 'f32') : kvCache;
      // The budget needs the KV element type, known only with the adapter; nothing is allocated yet.
      checkBudget(spec, ckpt, quant, kvTokens, kvDtype, prefillChunk, opts.memoryLimitBytes);
      weights = await loadWeights(ctx, spec, ckpt, opts.onProgress, quant);
      const perLayer = Math.floor(ctx.limits.maxStorageBufferBindingSize / kvBlockBytes(spec, kvDtype));
      const kvBlocks = Math.max(
        Math.ceil(contextLength / BLOCK_TOKENS),
        Math.min(perLayer, Math.ceil(kvTokens / BLOCK_TOKENS)),
      );
      kv = await PagedKvCache.create(ctx, spec, kvBlocks, kvDtype);
      const calibration = attentionSoftmax === 'async' ? CALIBRATION_STEPS : 0;
      forward = new ForwardModel(
        ctx,
        spec,
        weights,
        kv,
        prefillChunk,
        calibration,
        activations,
        contextLength,
      );
      const engine = new Engine(
        spec,
        tokenizer,
        contextLength,
        ctx,
        weights,
        kv,
        forward,
        prefillChunk,
        opts.model.location,
        sampling === 'gpu',
        quant,
      );
      const tune = opts.tune === true ? {} : opts.tune || null;
      // Cached choices apply before the warm-up, so it compiles the pipelines requests will use.
      const cached = tune ? await engine.tune({ ...tune, budgetMs: 0 }) : null;
      await engine.warmUp();
      engine.loadMs = performance.now() - t0;
      if (cached) {
        const left = cached.report.skipped.length;
        engine.tuneStatus = {
          state: left > 0 ? 'running' : 'done',
          cachedClasses: cached.report.classes.length,
          tunedClasses: 0,
          leftClasses: left,
        };
      }
      if (tune && cached && cached.report.skipped.length > 0) {
        engine.tuning = engine
          .tune({
            ...tune,
            budgetMs: tune.budgetMs ?? DEFAULT_TUNE_BUDGET_MS,
            signal: engine.tuneAbort.signal,
            // Counted as they finish, so a caller that stops early can say how far it got.
            onClass: () => {
              const st = engine.tuneStatus;
              engine.tuneStatus = {
                ...st,
                tunedClasses: st.tunedClasses + 1,
                leftClasses: Math.max(0, st.leftClasses - 1),
              };
            },
          })
          .then(
            (r) => {
              engine.tuneStatus = {
                ...engine.tuneStatus,
                state: 'done',
                tunedClasses: r.report.classes.filter((c) => !c.cached).length,
                leftClasses: r.report.skipped.length,
              };
              return r.report;
            },
            (e: unknown) => {
              engine.tuneStatus = { ...engine.tuneStatus, state: 'done' };
              // Tuning is an optimisation: the engine keeps its defaults if it fails.
              if (!engine.disposed)
                (tune.warn ?? console.warn)(`kiln: kernel tuning stopped: ${(e as Error).message}`);
              return null;
            },
          );
      }
      return engine;
    } catch (e) {
      // Free what was made: on a caller's device it would otherwise stay allocated.
      forward?.destroy();
      kv?.destroy();
      if (ctx && weights) destroyWeights(ctx, weights);
      ctx?.close();
      throw e;
    } finally {
      await ckpt.close();
    }
  }

  /**
   * Runs one decode-shaped step so every pipeline is compiled (drivers compile lazily at first
   * dispatch) before the first request: load time pays for it, not the first token's latency.
   * It runs inside error scopes, so a kernel the adapter rejects fails the load with its message.
   */
  private async warmUp(): Promise<void> {
    try {
      await this.ctx.checkErrors('the first forward step', () =>
        this.forward.step(this.stepInput([0], 0), 'ids', false),
      );
      await this.ctx.checkErrors('the async-softmax attention warm-up', () =>
        this.forward.warmAsyncAttention(this.stepInput([0], 0)),
      );
    } finally {
      this.releaseExclusive();
    }
  }

  /**
   * Where one decode step's GPU time goes at a given context length: every dispatch timed on its
   * own (GPU timestamps where the adapter has them), summed by kernel variant. For benchmarks;
   * the KV contents are whatever the cache holds, which does not change the work done.
   */
  async profileDecode(context: number): Promise<{ label: string; ms: number; count: number }[]> {
    if (!Number.isInteger(context) || context < 1 || context > this.contextLength) {
      throw new InvalidRequestError(`context ${context} is outside 1..${this.contextLength}`);
    }
    const release = (await this.acquire()) as () => void;
    const timer = new GpuTimer(this.ctx);
    try {
      return await this.forward.profile(this.stepInput([0], context - 1), timer);
    } finally {
      timer.destroy();
      this.releaseExclusive();
      release();
    }
  }

  /**
   * Tunes the model's kernels to this adapter (see src/tuner): cached classes from `store` cost
   * nothing, others are tuned until `budgetMs` is spent, one class at a time while holding the
   * engine (requests interleave between classes). The engine then runs the chosen kernels.
   */
  async tune(opts: TuneOptions = {}): Promise<TuneResult> {
    if (this.disposed) throw new KilnError('the engine has been disposed');
    const hold = async <T>(work: () => Promise<T>): Promise<T> => {
      const release = (await this.acquire()) as () => void;
      try {
        if (this.disposed) throw new KilnError('the engine has been disposed');
        return await work();
      } finally {
        release();
      }
    };
    const result = await tuneModel(this.forward, { ...opts, hold });
    await hold(async () => this.forward.setChoices(result.choices));
    return result;
  }

  /** Where background kernel tuning stands. */
  get tuningStatus(): TuningStatus {
    return { ...this.tuneStatus };
  }

  /** Settles once background tuning is over (at once when there is none), with the final status. */
  whenTuned(): Promise<TuningStatus> {
    return this.tuning.then(() => this.tuningStatus);
  }

  /** Element type of the KV cache (EngineOptions.kvCache, 'auto' resolved for this adapter). */
  get kvCacheDtype(): KvDtype {
    return this.kv.dtype;
  }

  /** How the projection weights are stored on the GPU, e.g. "int4 g32 asym, quantized at load". */
  get weightFormat(): string {
    return describeWeightQuant(this.weightQuant);
  }

  /** The model's name for API responses: its folder's location. */
  get modelName(): string {
    return this.modelLocation;
  }

  /** The adapter and device features the engine runs on. */
  get adapter(): AdapterSummary {
    return this.ctx.adapter;
  }

  /** Bytes of the long-lived GPU buffers the engine holds (weights, KV cache, step buffers). */
  get gpuMemoryBytes(): number {
    return this.ctx.allocatedBytes;
  }

  /** Settles when the GPU device goes away (reason 'destroyed' after `dispose()`). */
  get deviceLost(): Promise<GPUDeviceLostInfo> {
    return this.ctx.device.lost;
  }

  /** Whether the model has a chat template (without one, chat requests are refused). */
  get hasChatTemplate(): boolean {
    return this.tokenizer.hasChatTemplate;
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

  /**
   * Waits for the engine (its KV cache holds one sequence for now) and returns its release, or
   * null when `signal` aborts first; the place in line is still handed on in order.
   */
  async acquire(signal?: AbortSignal): Promise<(() => void) | null> {
    const prev = this.queue;
    let release!: () => void;
    this.queue = new Promise<void>((r) => (release = r));
    if (!signal) {
      await prev;
      return release;
    }
    let onAbort = () => {};
    const aborted = new Promise<'abort'>((r) => {
      onAbort = () => r('abort');
      if (signal.aborted) onAbort();
      else signal.addEventListener('abort', onAbort, { once: true });
    });
    const first = await Promise.race([prev.then(() => 'turn' as const), aborted]);
    signal.removeEventListener('abort', onAbort);
    if (first === 'abort') {
      void prev.then(release);
      return null;
    }
    return release;
  }

  /**
   * Teacher-forced logits: row i is the next-token distribution after ids[0..i] (the basis of
   * perplexity and of the golden-logit tests). Runs in prefill chunks; [ids.length][vocab] f32.
   */
  async logits(ids: readonly number[]): Promise<Float32Array[]> {
    const rows: Float32Array[] = [];
    const V = this.spec.vocabSize;
    for await (const chunk of this.logitChunks(ids)) {
      for (let i = 0; i < chunk.rows; i++) rows.push(chunk.logits.slice(i * V, (i + 1) * V));
    }
    return rows;
  }

  /**
   * The teacher-forced logits of `ids` a chunk of rows at a time ([rows, vocab] f32 from row
   * `start`), so that long texts over big vocabularies never sit in memory whole (evaluation).
   * The engine is held until the iteration ends or is abandoned.
   */
  async *logitChunks(
    ids: readonly number[],
  ): AsyncGenerator<{ start: number; rows: number; logits: Float32Array }> {
    this.validatePrompt(ids);
    const release = (await this.acquire()) as () => void;
    // The logits of one step live in one storage binding: with a 150k vocabulary, 256 rows of f32
    // logits would exceed the default 128 MiB, so steps here take as many rows as fit.
    const fit = Math.floor(this.ctx.limits.maxStorageBufferBindingSize / (this.spec.vocabSize * 4));
    const step = Math.max(1, Math.min(this.prefillChunk, fit));
    try {
      for (let start = 0; start < ids.length; start += step) {
        const chunk = ids.slice(start, Math.min(ids.length, start + step));
        const input = { ...this.stepInput(chunk, start), logitRows: chunk.map((_, i) => i) };
        yield { start, rows: chunk.length, logits: await this.forward.step(input, 'logits') };
      }
    } finally {
      this.releaseExclusive();
      release();
    }
  }

  /**
   * The input activations of every layer's projections while the model reads `ids` (teacher
   * forced, in prefill chunks): [layer][proj] = [ids.length, cols] f32. Calibration data for the
   * quantizers (src/quant).
   */
  async captureLinearInputs(ids: readonly number[]): Promise<Record<LinearInputName, Float32Array>[]> {
    this.validatePrompt(ids);
    const release = (await this.acquire()) as () => void;
    try {
      const chunks: Record<LinearInputName, Float32Array>[][] = [];
      for (let start = 0; start < ids.length; start += this.prefillChunk) {
        const chunk = ids.slice(start, Math.min(ids.length, start + this.prefillChunk));
        chunks.push(await this.forward.captureLinearInputs(this.stepInput(chunk, start)));
      }
      return Array.from({ length: this.spec.numLayers }, (_, l) => {
        const join = (proj: LinearInputName) => {
          const parts = chunks.map((c) => (c[l] as Record<LinearInputName, Float32Array>)[proj]);
          const out = new Float32Array(parts.reduce((a, p) => a + p.length, 0));
          let at = 0;
          for (const p of parts) {
            out.set(p, at);
            at += p.length;
          }
          return out;
        };
        return { qkv: join('qkv'), o: join('o'), gateUp: join('gateUp'), down: join('down') };
      });
    } finally {
      this.releaseExclusive();
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
    const room = this.contextLength - promptIds.length;
    const maxTokens = Math.min(opts.maxTokens ?? room, room);
    const decoder = new IncrementalDecoder(this.tokenizer);
    // Stays null if the consumer stops iterating early: that counts as an abort.
    let finish: FinishReason | null = null;
    if (maxTokens <= 0) {
      out.finishReason = 'length';
      return;
    }
    // Tokens arrive from the scheduler's steps; this generator hands them on as they come.
    const queue: number[] = [];
    let wake: (() => void) | null = null;
    const job = this.scheduler.submit({
      prompt: promptIds,
      maxTokens,
      sampling,
      seed: opts.seed ?? Math.floor(Math.random() * 2 ** 32),
      eos: new Set(opts.ignoreEos ? [] : this.eosTokenIds),
      signal: opts.signal,
      onToken: (id) => {
        queue.push(id);
        wake?.();
      },
    });
    let ended = false;
    let outcome: ScheduledOutcome | null = null;
    let failure: unknown = null;
    job.done.then(
      (o) => {
        outcome = o;
        ended = true;
        wake?.();
      },
      (e: unknown) => {
        failure = e;
        ended = true;
        wake?.();
      },
    );
    try {
      for (;;) {
        while (queue.length > 0) {
          const id = queue.shift() as number;
          out.tokenIds.push(id);
          const text = decoder.push(id);
          out.text += text;
          yield { id, text };
        }
        if (ended) break;
        await new Promise<void>((r) => (wake = r));
        wake = null;
      }
      if (failure) throw failure;
      const o = outcome as ScheduledOutcome | null;
      if (o) {
        finish = o.finishReason;
        // A request that ended before its first token (aborted while waiting) ran nothing.
        if (o.firstTokenAt !== null) {
          out.timings.prefillMs = o.firstTokenAt - o.submittedAt;
          out.timings.decodeMs = o.finishedAt - o.firstTokenAt;
        }
        out.cachedPromptTokens = o.cachedPromptTokens;
      }
      const rest = decoder.flush();
      if (rest) {
        out.text += rest;
        yield { id: null, text: rest };
      }
    } finally {
      if (!ended) job.cancel();
      out.finishReason = finish ?? 'abort';
      const t = out.timings;
      t.prefillTokensPerS = t.prefillMs > 0 ? (promptIds.length / t.prefillMs) * 1000 : 0;
      const decoded = Math.max(0, out.tokenIds.length - 1);
      t.decodeTokensPerS = t.decodeMs > 0 && decoded > 0 ? (decoded / t.decodeMs) * 1000 : 0;
    }
  }

  /**
   * Inputs of exclusive work (the engine held): `tokens` at positions start.., with KV blocks for
   * positions [0, start + tokens.length) in a sequence of its own. Its blocks never enter the
   * prefix cache (never marked computed) and are freed by `releaseExclusive`.
   */
  private stepInput(tokens: readonly number[], start: number): StepInput {
    const id = (this.exclusive ??= this.scheduler.allocateId());
    const end = start + tokens.length;
    const have = this.blocks.has(id) ? this.blocks.numTokens(id) : 0;
    if (end > have) {
      // Positions before `start` not yet held (a profile at a long context) get filler ids.
      const fill = Array.from({ length: end - have }, (_, i) =>
        have + i >= start ? (tokens[have + i - start] as number) : 0,
      );
      if (have === 0) {
        this.blocks.admit(id, fill.slice(0, 1));
        this.blocks.appendSlots(id, fill.slice(1));
      } else this.blocks.appendSlots(id, fill);
    }
    return {
      tokens,
      positions: tokens.map((_, i) => start + i),
      slots: tokens.map((_, i) => this.blocks.slotFor(id, start + i)),
      blockTableOffsets: tokens.map(() => 0),
      blockTable: this.blocks.blockTable(id),
      logitRows: [tokens.length - 1],
    };
  }

  private releaseExclusive(): void {
    if (this.exclusive !== null && this.blocks.has(this.exclusive)) this.blocks.free(this.exclusive);
    this.exclusive = null;
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
    this.tuneAbort.abort();
    this.forward.destroy();
    this.kv.destroy();
    destroyWeights(this.ctx, this.weights);
    this.ctx.close();
  }
}

/** A running (or finished) generation: async-iterate it for tokens, or await `result()`. */
export class Generation implements AsyncIterable<GeneratedToken> {
  private readonly out: GenerateResult;
  private started = false;
  /** Settles when the run ends: with the result, or with the error that ended it. */
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
      cachedPromptTokens: 0,
    };
  }

  get promptTokenIds(): readonly number[] {
    return this.out.promptTokenIds;
  }

  async *[Symbol.asyncIterator](): AsyncIterator<GeneratedToken> {
    if (this.started) throw new KilnError('a Generation can be iterated once');
    this.started = true;
    let settle!: (error: unknown) => void;
    this.finished = new Promise<GenerateResult>((resolve, reject) => {
      settle = (error) => (error === undefined ? resolve(this.out) : reject(error));
    });
    // Whoever awaits result() sees the error; nobody awaiting it is not an unhandled rejection.
    this.finished.catch(() => undefined);
    let error: unknown;
    try {
      // A consumer that stops early ends `run` through return(), which frees the KV blocks.
      yield* this.engine.run(this.out.promptTokenIds, this.opts, this.out);
    } catch (e) {
      error = e;
      throw e;
    } finally {
      settle(error);
    }
  }

  /** Runs the generation to the end (if nobody iterates it) and returns everything. */
  async result(): Promise<GenerateResult> {
    if (!this.started) {
      for await (const _ of this) {
        // consume
      }
      return this.out;
    }
    return this.finished as Promise<GenerateResult>;
  }
}

/** An enumerated option: its value, or the first (default) choice; anything else names the field. */
function oneOf<T extends string>(field: string, v: T | undefined, choices: readonly [T, ...T[]]): T {
  if (v === undefined) return choices[0];
  if (!choices.includes(v)) {
    throw new InvalidRequestError(
      `${field} must be ${choices.map((c) => `'${c}'`).join(' or ')}, got ${String(v)}`,
    );
  }
  return v;
}

function positiveInteger(field: string, v: number | undefined): void {
  if (v !== undefined && !(Number.isSafeInteger(v) && v > 0)) {
    throw new InvalidRequestError(`${field} must be a positive integer, got ${v}`);
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

/** GPU memory a model will take, by part (what `memoryLimitBytes` is checked against). */
export interface MemoryEstimate {
  weights: number;
  kvCache: number;
  /** One prefill chunk's activations and logits. */
  activations: number;
  total: number;
}

/**
 * The GPU memory a model needs with `kvTokens` tokens of KV cache: computable from config.json and
 * the safetensors headers alone, so a caller (the browser app) can refuse a model that will not fit
 * before downloading its weights.
 */
export function estimateMemory(
  spec: ModelSpec,
  ckpt: Checkpoint,
  quant: WeightQuant,
  kvTokens: number,
  kvDtype: KvDtype,
  prefillChunk: number,
): MemoryEstimate {
  const weights = weightBytes(spec, ckpt, quant);
  const kvCache = kvCacheBytes(spec, kvTokens, kvDtype);
  const activations =
    4 *
    (prefillChunk *
      (3 * spec.hiddenSize +
        2 * spec.numHeads * spec.headDim +
        2 * spec.numKvHeads * spec.headDim +
        2 * spec.intermediateSize) +
      2 * spec.vocabSize);
  return { weights, kvCache, activations, total: weights + kvCache + activations };
}

/** Refuses models that cannot fit the caller's memory budget, before allocating on the GPU. */
function checkBudget(
  spec: ModelSpec,
  ckpt: Checkpoint,
  quant: WeightQuant,
  contextLength: number,
  kvDtype: KvDtype,
  prefillChunk: number,
  limit: number | undefined,
): void {
  if (limit === undefined) return;
  const m = estimateMemory(spec, ckpt, quant, contextLength, kvDtype, prefillChunk);
  if (m.total > limit) {
    throw new DeviceMemoryError(
      `the model needs ${formatBytes(m.total)} of GPU memory (weights ${formatBytes(m.weights)}, KV cache for ${contextLength} tokens ${formatBytes(m.kvCache)}, activations ${formatBytes(m.activations)}), over the memory limit of ${formatBytes(limit)}`,
    );
  }
}

/**
 * Default KV pool: what 256 MiB of f32 K/V holds, whatever the cache's type (an f16 cache keeps
 * the same tokens in half the memory), and at least one full context; capped by the caller.
 */
function defaultKvTokens(spec: ModelSpec, contextLength: number): number {
  const perToken = kvCacheBytes(spec, BLOCK_TOKENS, 'f32') / BLOCK_TOKENS;
  return Math.max(contextLength, Math.floor((256 * 2 ** 20) / perToken));
}

/** Loads a model and returns a ready engine. */
export function createEngine(opts: EngineOptions): Promise<Engine> {
  return Engine.create(opts);
}
