/**
 * The engine: loads a model folder onto a GPU and generates text. It owns the tokenizer, the
 * weights, the KV cache, the forward pass and the scheduler that batches every request into
 * shared steps, and implements the public KilnEngine interface (src/api/engine-api.ts), the
 * OpenAI-shaped `chat.completions` and `completions` included. Runs unchanged in a browser; the
 * Node entry (src/node/index.ts) adds local folders, Hub ids and Dawn.
 */
import type { ChatInput, KilnEngine } from '../api/engine-api.js';
import { OpenAiChat, OpenAiCompletions } from '../api/openai/openai.js';
import { detectToolFormat, type ToolFormatName } from '../api/openai/tools.js';
import type { GenerateOptions, GrammarSpec, TuningStatus } from '../api/types.js';
import { GpuDeviceError, InvalidRequestError, KilnError } from '../errors.js';
import { acquireGpu, type AdapterSummary, type GpuContext } from '../gpu/device.js';
import type { ChatMessage, KilnTokenizer } from '../io/tokenizer.js';
import type { ProjectionRole } from '../model/architecture.js';
import type { ModelSpec } from '../model/spec.js';
import type { TuneOptions, TuneReport, TuneResult } from '../tuner/tuner.js';
import type { KernelChoices } from '../tuner/choices.js';
import { modelTuneClasses } from '../tuner/classes.js';
import { defaultChoices, defaultsRowFor, type AdapterClass } from '../tuner/defaults.js';
import { validateCheckpoint } from '../weights/loader.js';
import { openModelFiles } from '../weights/model-files.js';
import type { WeightSource } from '../weights/source.js';
import type { ForwardModel } from './forward/model.js';
import { StepGpuClock } from './forward/step-clock.js';
import { runStep, warmAsyncAttention } from './forward/step.js';
import { Generation, type GenerationHost } from './generation.js';
import { buildForward, destroyGpuState } from './gpu-state.js';
import { heldLinearInputs, heldLogitChunks, heldProfile } from './held-work.js';
import { BlockManager } from './kv/block-manager.js';
import { BLOCK_TOKENS, type KvDtype } from './kv/cache.js';
import {
  checkActivations,
  checkModel,
  checkTokenizer,
  DEFAULT_PREFILL_CHUNK,
  planOnDevice,
  resolveKvDtype,
} from './load.js';
import type { MemoryPlan } from './memory.js';
import { checkOptions, type EngineOptions } from './options.js';
import { explainFailure, rebuildForward, Recovery, type Rebuild } from './recovery.js';
import { checkGenerateOptions, checkPrompt } from './requests.js';
import { GrammarCompiler, importXgrammar, type XgrammarModule } from './sampling/grammar.js';
import { Scheduler, type SchedulerOptions, type SchedulerStats } from './scheduler.js';
import type { SpeculativeOptions } from './speculative.js';
import { BackgroundTuning, runTuning } from './tuning.js';

/** Decode steps whose attention scores calibrate the unified max. */
const CALIBRATION_STEPS = 8;

export class Engine implements KilnEngine {
  readonly chat: { readonly completions: OpenAiChat };
  readonly completions: OpenAiCompletions;
  /** Milliseconds spent in createEngine (config, tokenizer, weights, KV cache). */
  loadMs = 0;
  /** What the memory planner chose at load: context, KV pool, bytes by part, and why. */
  memoryPlan: MemoryPlan | null = null;
  private disposed = false;
  private readonly background = new BackgroundTuning();
  /** Batches every generate() call running at once into shared forward steps. */
  private scheduler: Scheduler;
  private readonly schedulerOptions: SchedulerOptions;
  /** Set at load: how to rebuild after a device loss. */
  private rebuild: Rebuild | null = null;
  private readonly recovery = new Recovery();
  /** What each Generation runs on. */
  private readonly host: GenerationHost;
  /** Constrained decoding's grammars, compiled against this model's vocabulary. */
  private readonly grammar: GrammarCompiler;
  readonly toolCallFormat: ToolFormatName;

  private constructor(
    readonly spec: ModelSpec,
    readonly tokenizer: KilnTokenizer,
    readonly contextLength: number,
    /** The GPU state: the forward model over the weights and KV cache on its device. */
    private forward: ForwardModel,
    private readonly prefillChunk: number,
    private readonly modelLocation: string,
    gpuSampling: boolean,
    private readonly weightSource: WeightSource,
    pipelineDepth: number,
    speculative: Required<SpeculativeOptions> | null,
    /** The row of kernel defaults in use and its choices for this model's classes. */
    readonly kernelDefaults: { adapterClass: AdapterClass; choices: KernelChoices },
    loadXgrammar: () => Promise<XgrammarModule>,
  ) {
    this.schedulerOptions = {
      tokenBudget: prefillChunk,
      contextLength,
      gpuSampling,
      pipelineDepth,
      speculative,
    };
    this.scheduler = this.makeScheduler();
    this.grammar = new GrammarCompiler(tokenizer, spec.vocabSize, this.eosTokenIds, loadXgrammar);
    this.toolCallFormat = detectToolFormat(tokenizer.chatTemplateText);
    this.host = {
      ready: () => this.ready(),
      tokenizer,
      contextLength,
      eosTokenIds: this.eosTokenIds,
      grammar: this.grammar,
    };
    this.chat = { completions: new OpenAiChat(this) };
    this.completions = new OpenAiCompletions(this);
  }

  static async create(opts: EngineOptions): Promise<Engine> {
    const t0 = performance.now();
    const files = await openModelFiles(opts.model);
    const spec = files.spec;
    checkModel(spec, opts.model.location);
    const tokenizer = await files.tokenizer();
    checkTokenizer(spec, tokenizer, opts.model.location);
    const choices = checkOptions(opts);
    const source = files.weightSource(choices.quant, opts.quantOptions);
    checkActivations(choices, source);
    const ckpt = await files.openCheckpoint();
    let ctx: GpuContext | null = null;
    let forward: ForwardModel | null = null;
    try {
      validateCheckpoint(spec, ckpt, source);
      ctx = await acquireGpu({
        ...(opts.device ? { device: opts.device } : {}),
        ...(opts.gpu ? { gpu: opts.gpu } : {}),
        keepAlive: opts.keepAlive,
      });
      const kvDtype = resolveKvDtype(choices, ctx, spec);
      const plan = await planOnDevice(ctx, opts, spec, ckpt, source, kvDtype);
      const contextLength = plan.contextLength;
      const recipe = {
        source,
        kvDtype,
        kvBlocks: plan.kvBlocks,
        slidingKvBlocks: plan.slidingKvBlocks,
        calibration: choices.attentionSoftmax === 'async' ? CALIBRATION_STEPS : 0,
        activations: choices.activations,
        foldNorms: choices.normFold === 'fold',
        prefillChunk: Math.min(opts.prefillChunkTokens ?? DEFAULT_PREFILL_CHUNK, contextLength),
        contextLength,
      };
      forward = await buildForward(ctx, spec, ckpt, recipe, opts.onProgress);
      // The untuned kernels: this adapter class's row of defaults (tuning starts from them).
      const defaults = defaultsRowFor(choices.kernelDefaults, ctx.adapter);
      const defaultTable = defaultChoices(
        modelTuneClasses(forward.tuneTarget()),
        defaults.row,
        contextLength,
      );
      forward.setChoices(defaultTable);
      const engine = new Engine(
        spec,
        tokenizer,
        contextLength,
        forward,
        recipe.prefillChunk,
        opts.model.location,
        choices.sampling === 'gpu',
        source,
        opts.pipelineDepth ?? 2,
        choices.speculative,
        { adapterClass: defaults.adapterClass, choices: defaultTable },
        opts.loadXgrammar ?? importXgrammar,
      );
      engine.memoryPlan = plan;
      const keepAlive = opts.keepAlive;
      const recoverDevice = opts.recoverDevice;
      engine.rebuild = {
        ...recipe,
        files,
        acquire: recoverDevice
          ? async () => acquireGpu({ device: await recoverDevice(), keepAlive })
          : !opts.device && opts.recoverOnLoss
            ? () => acquireGpu({ ...(opts.gpu ? { gpu: opts.gpu } : {}), keepAlive })
            : null,
      };
      engine.watchDevice(ctx);
      const tune = opts.tune === true ? {} : opts.tune || null;
      // Cached choices apply before the warm-up, so it compiles the pipelines requests will use.
      if (tune) await engine.background.applyCached((o) => engine.tune(o), tune);
      await engine.warmUp();
      engine.loadMs = performance.now() - t0;
      if (tune && tune.background !== false) {
        engine.background.start(
          (o) => engine.runTuning(o, true),
          tune,
          () => !engine.disposed,
        );
      }
      return engine;
    } catch (e) {
      // Free what was made: on a caller's device it would otherwise stay allocated.
      if (forward) destroyGpuState(forward);
      else ctx?.close();
      throw e;
    } finally {
      await ckpt.close();
    }
  }

  private get ctx(): GpuContext {
    return this.forward.ctx;
  }

  private makeScheduler(): Scheduler {
    const ctx = this.ctx;
    const kv = this.forward.kv;
    // A sliding pool keeps no KV of a cached prefix for its layers: no prefix caching beside it.
    const blocks = new BlockManager({
      numBlocks: kv.numBlocks,
      blockSize: BLOCK_TOKENS,
      prefixCaching: kv.sliding === null,
    });
    // A failed step on a device that was lost, and that the engine recovers from, is retriable.
    const recovers = () => !this.disposed && !!this.rebuild?.acquire;
    return new Scheduler(this.forward, kv, blocks, {
      ...this.schedulerOptions,
      explainFailure: (e) => explainFailure(ctx, e, recovers),
    });
  }

  /** Starts a recovery when `ctx`'s device is lost while the engine runs on it. */
  private watchDevice(ctx: GpuContext): void {
    void ctx.device.lost.then(() => {
      if (this.disposed || ctx !== this.ctx || !this.rebuild?.acquire) return;
      this.recovery.start(() => this.recover());
    });
  }

  /**
   * Rebuilds everything that lived on the lost device on a new one (recovery.ts), then the
   * scheduler and its samplers, then the warm-up. Requests wait for it (`ready`).
   */
  private async recover(): Promise<void> {
    const rb = this.rebuild;
    if (!rb?.acquire) throw new GpuDeviceError('this engine cannot get a new device');
    const choices = this.forward.choices;
    // What lived on the old device is gone with it; freeing it releases the JS side.
    destroyGpuState(this.forward);
    this.forward = await rebuildForward(rb, this.spec, choices, () => this.disposed);
    this.scheduler = this.makeScheduler();
    this.watchDevice(this.ctx);
    await this.warmUp();
  }

  /** Whether the engine is rebuilding its GPU state after a device loss. */
  get recovering(): boolean {
    return this.recovery.active;
  }

  /**
   * Settles once the recovery under way (if any) is over; rejects with why the engine cannot run
   * any more when it failed (or the engine was disposed).
   */
  async whenRecovered(): Promise<void> {
    await this.ready();
  }

  /** The scheduler, once any recovery is over; fails if the engine cannot run any more. */
  private async ready(): Promise<Scheduler> {
    await this.recovery.settled();
    if (this.disposed) throw new KilnError('the engine has been disposed');
    return this.scheduler;
  }

  /**
   * Runs one decode-shaped step so every pipeline is compiled (drivers compile lazily at first
   * dispatch) before the first request: load time pays for it, not the first token's latency.
   * It runs inside error scopes, so a kernel the adapter rejects fails the load with its message.
   */
  private async warmUp(): Promise<void> {
    await this.scheduler.exclusive(async (hold) => {
      const input = hold.input([0], 0);
      await this.ctx.checkErrors('the first forward step', () =>
        runStep(this.forward, input, 'ids', { calibrate: false }),
      );
      await this.ctx.checkErrors('the async-softmax attention warm-up', () =>
        warmAsyncAttention(this.forward, input),
      );
    });
  }

  /**
   * Runs `work` (requests of the caller's) and measures its steps: how many ran, their wall time,
   * and their GPU time from timestamps around each step's forward pass (null without the
   * timestamp-query feature). For benchmarks: `kiln bench decode` reports GPU ms against wall ms
   * per step, which is how much of a step the GPU is busy.
   */
  async measureSteps<T>(
    work: () => Promise<T>,
  ): Promise<{ result: T; steps: number; wallMs: number; gpuMs: number | null; stampedSteps: number }> {
    const clock = this.ctx.adapter.timestampQuery ? new StepGpuClock(this.ctx) : null;
    this.forward.stepClock = clock;
    const steps0 = this.scheduler.stats().steps;
    const t0 = performance.now();
    try {
      const result = await work();
      const wallMs = performance.now() - t0;
      const steps = this.scheduler.stats().steps - steps0;
      const g = clock ? await clock.read() : null;
      return { result, steps, wallMs, gpuMs: g ? g.gpuMs : null, stampedSteps: g ? g.steps : 0 };
    } finally {
      this.forward.stepClock = null;
      clock?.destroy();
    }
  }

  /** Running and waiting requests, KV blocks, prefix-cache hit rate, preemptions. */
  stats(): SchedulerStats {
    return this.scheduler.stats();
  }

  /** GPU buffers alive on the device and the bytes of the long-lived ones (weights, KV cache). */
  gpuStats(): { liveBuffers: number; allocatedBytes: number } {
    return { liveBuffers: this.ctx.liveBuffers, allocatedBytes: this.ctx.allocatedBytes };
  }

  /**
   * Where one decode step's GPU time goes at a given context length: every dispatch timed on its
   * own (GPU timestamps where the adapter has them), summed by kernel variant. For benchmarks;
   * the KV contents are whatever the cache holds, which does not change the work done. `rows` > 1
   * profiles a prefill chunk of that many rows ending at the same position instead.
   */
  async profileDecode(context: number, rows = 1): Promise<{ label: string; ms: number; count: number }[]> {
    if (!Number.isInteger(context) || context < 1 || context > this.contextLength) {
      throw new InvalidRequestError(`context ${context} is outside 1..${this.contextLength}`);
    }
    if (!Number.isInteger(rows) || rows < 1 || rows > context) {
      throw new InvalidRequestError(`rows ${rows} is outside 1..${context} (the context)`);
    }
    return (await this.ready()).exclusive((hold) => heldProfile(this.ctx, this.forward, hold, context, rows));
  }

  /**
   * Tunes the model's kernels to this adapter (see src/tuner): cached classes from `store` cost
   * nothing, others are tuned until `budgetMs` is spent, one class at a time while holding the
   * GPU state (requests interleave between classes). The engine then runs the chosen kernels.
   */
  async tune(opts: TuneOptions = {}): Promise<TuneResult> {
    return this.runTuning(opts, false);
  }

  private runTuning(opts: TuneOptions, background: boolean): Promise<TuneResult> {
    const host = {
      scheduler: () => this.scheduler,
      forward: () => this.forward,
      disposed: () => this.disposed,
      defaults: this.kernelDefaults.choices,
    };
    return runTuning(host, this.background, opts, background);
  }

  /**
   * Background tuning started at load (EngineOptions.tune): resolves to its report once the engine
   * runs the winners, or null when tuning is off or had nothing left to do.
   */
  get tuning(): Promise<TuneReport | null> {
    return this.background.report;
  }

  /** Where background kernel tuning stands. */
  get tuningStatus(): TuningStatus {
    return { ...this.background.status };
  }

  /** Settles once background tuning is over (at once when there is none), with the final status. */
  whenTuned(): Promise<TuningStatus> {
    return this.background.report.then(() => this.tuningStatus);
  }

  /** Element type of the KV cache (EngineOptions.kvCache, 'auto' resolved for this adapter). */
  get kvCacheDtype(): KvDtype {
    return this.forward.kv.dtype;
  }

  /**
   * Bytes of the KV cache's buffers: every full-attention layer's pool and, with a sliding pool
   * (EngineOptions.slidingKv), the sliding layers' smaller one (MemoryPlan.kvCache planned them).
   */
  get kvCacheBytes(): number {
    return this.forward.kv.bytes;
  }

  /** How the projection weights are stored on the GPU, e.g. "int4 g32 asym, quantized at load". */
  get weightFormat(): string {
    return this.weightSource.description;
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

  /**
   * Settles when the current GPU device goes away (reason 'destroyed' after `dispose()`). An engine
   * that recovers (`recovering`) goes on with a new device, whose loss this then reports.
   */
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

  /**
   * Renders a conversation with the model's chat template (with extra template variables such as
   * Qwen3's `enable_thinking`) and encodes it.
   */
  encodeChat(messages: readonly ChatMessage[], templateKwargs?: Readonly<Record<string, unknown>>): number[] {
    return this.tokenizer.encodeChat(messages, {
      addGenerationPrompt: true,
      ...(templateKwargs ? { templateKwargs } : {}),
    });
  }

  /** KilnEngine's tokenization: a string prompt, or a conversation through the chat template. */
  async tokenize(input: string | ChatInput): Promise<number[]> {
    if (typeof input === 'string') return this.encodePrompt(input);
    return this.tokenizer.encodeChat(input.messages, {
      addGenerationPrompt: true,
      ...(input.tools ? { tools: input.tools } : {}),
      ...(input.chatTemplateKwargs ? { templateKwargs: input.chatTemplateKwargs } : {}),
    });
  }

  /** Compiles `grammar` (cached for the requests that use it); refuses one it cannot compile. */
  async checkGrammar(grammar: GrammarSpec): Promise<void> {
    await this.grammar.compile(grammar);
  }

  /**
   * Generates a continuation of `prompt` (text, or token ids used as given). Iterate the result for
   * tokens as they come, or await `result()` for the whole thing. Concurrent calls are batched.
   */
  generate(prompt: string | readonly number[], opts: GenerateOptions = {}): Generation {
    if (this.disposed) throw new KilnError('the engine has been disposed');
    const ids = this.encodePrompt(prompt, opts.addSpecialTokens ?? true);
    // Bad requests fail here, at the call, not later when the result is consumed.
    checkPrompt(ids, this.contextLength, this.spec);
    checkGenerateOptions(opts);
    return new Generation(this.host, ids, opts);
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
   * Each step reads `rowsPerStep` ids (default and at most the prefill chunk; 1 writes the KV
   * cache as decoding does). The GPU state is held until the iteration ends or is abandoned.
   */
  async *logitChunks(
    ids: readonly number[],
    rowsPerStep: number = this.prefillChunk,
  ): AsyncGenerator<{ start: number; rows: number; logits: Float32Array }> {
    checkPrompt(ids, this.contextLength, this.spec);
    if (!Number.isSafeInteger(rowsPerStep) || rowsPerStep < 1) {
      throw new InvalidRequestError(`rowsPerStep must be a positive integer, got ${rowsPerStep}`);
    }
    const hold = await (await this.ready()).hold();
    yield* heldLogitChunks(this.forward, hold, ids, Math.min(rowsPerStep, this.prefillChunk));
  }

  /**
   * The input activations of every layer's projections while the model reads `ids` (teacher
   * forced, in prefill chunks): [layer][role] = [ids.length, cols] f32. Calibration data for the
   * quantizers (src/quant).
   */
  async captureLinearInputs(ids: readonly number[]): Promise<Record<ProjectionRole, Float32Array>[]> {
    checkPrompt(ids, this.contextLength, this.spec);
    return (await this.ready()).exclusive((hold) =>
      heldLinearInputs(this.forward, hold, ids, this.prefillChunk),
    );
  }

  /** Frees the GPU memory (and the device, unless it was passed in). */
  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    this.background.stop();
    destroyGpuState(this.forward);
  }
}

/** Loads a model and returns a ready engine. */
export function createEngine(opts: EngineOptions): Promise<Engine> {
  return Engine.create(opts);
}
