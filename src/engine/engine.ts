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
import {
  DeviceMemoryError,
  GpuDeviceError,
  InvalidRequestError,
  KilnError,
  UnsupportedModelError,
} from '../errors.js';
import { acquireGpu, formatBytes, type AdapterSummary, type GpuContext } from '../gpu/device.js';
import { GpuTimer } from '../gpu/timer.js';
import { KilnTokenizer, type ChatMessage } from '../io/tokenizer.js';
import { ATTENTION_MAX_HEAD_DIM } from '../kernels/attention.js';
import type { ProjectionRole } from '../model/architecture.js';
import type { ModelSpec } from '../model/spec.js';
import type { Slice } from '../tuner/measure.js';
import type { TuneOptions, TuneReport, TuneResult } from '../tuner/tuner.js';
import { tuneModel } from '../tuner/tuner.js';
import type { KernelChoices } from '../tuner/choices.js';
import { modelTuneClasses } from '../tuner/classes.js';
import { defaultChoices, defaultsRowFor, type AdapterClass } from '../tuner/defaults.js';
import { destroyWeights, loadWeights, validateCheckpoint, type ModelWeights } from '../weights/loader.js';
import { openModelFiles, type ModelFiles } from '../weights/model-files.js';
import type { WeightSource } from '../weights/source.js';
import { ForwardModel } from './forward/model.js';
import { StepGpuClock } from './forward/step-clock.js';
import { captureLinearInputs, profileStep, runStep, warmAsyncAttention } from './forward/step.js';
import { Generation, type GenerationHost } from './generation.js';
import { BlockManager } from './kv/block-manager.js';
import { BLOCK_TOKENS, PagedKvCache, type KvDtype } from './kv/cache.js';
import { planMemory, type MemoryPlan } from './memory.js';
import { checkOptions, type EngineOptions } from './options.js';
import { GrammarCompiler, importXgrammar, type XgrammarModule } from './sampling/grammar.js';
import { samplingOf, validateSampling } from './sampling/params.js';
import { Scheduler, type SchedulerOptions, type SchedulerStats } from './scheduler.js';
import type { SpeculativeOptions } from './speculative.js';
import { BackgroundTuning } from './tuning.js';
import { isQuantKv } from '../kernels/kv-dtype.js';

/** Decode steps whose attention scores calibrate the unified max. */
const CALIBRATION_STEPS = 8;
const DEFAULT_CONTEXT = 4096;
const DEFAULT_PREFILL_CHUNK = 256;
/**
 * How long a failed step waits for `device.lost` to settle before deciding the failure was not a
 * loss: Dawn reports the failed readback and the loss in either order, within one event poll.
 */
const LOST_SETTLE_MS = 1000;

/**
 * What the engine keeps to rebuild its GPU state on a new device after a loss: the opened model
 * files (weights are read again from them, never downloaded again) and the choices made at load.
 */
interface Rebuild {
  files: ModelFiles;
  source: WeightSource;
  kvDtype: KvDtype;
  kvBlocks: number;
  calibration: number;
  activations: 'f32' | 'f16';
  /** A new GPU context, or null when the engine cannot get one (an injected device, no factory). */
  acquire: (() => Promise<GpuContext>) | null;
}

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
  /** Settles when a recovery from a device loss is over; null when none runs. */
  private recovery: Promise<void> | null = null;
  /** Why the engine cannot run any more (a recovery that failed). */
  private broken: unknown = null;
  /** What each Generation runs on. */
  private readonly host: GenerationHost;
  /** Constrained decoding's grammars, compiled against this model's vocabulary. */
  private readonly grammar: GrammarCompiler;
  readonly toolCallFormat: ToolFormatName;

  private constructor(
    readonly spec: ModelSpec,
    readonly tokenizer: KilnTokenizer,
    readonly contextLength: number,
    private ctx: GpuContext,
    private weights: ModelWeights,
    private kv: PagedKvCache,
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
    if (spec.headDim > ATTENTION_MAX_HEAD_DIM) {
      throw new UnsupportedModelError(
        `config.json in ${opts.model.location}: head_dim ${spec.headDim} is over the ${ATTENTION_MAX_HEAD_DIM} Kiln's attention kernel supports`,
      );
    }
    const tokenizer = await files.tokenizer();
    if (tokenizer.vocabSize > spec.vocabSize) {
      throw new KilnError(
        `the tokenizer in ${opts.model.location} has ${tokenizer.vocabSize} tokens but config.json's vocab_size is ${spec.vocabSize}`,
      );
    }
    const choices = checkOptions(opts);
    const source = files.weightSource(choices.quant, opts.quantOptions);
    if (choices.activations === 'f16' && source.int4) {
      throw new InvalidRequestError(
        "activations 'f16' applies to float weights; int4 models read f32 activations (use 'f32')",
      );
    }
    const requestedContext = Math.min(spec.maxPositionEmbeddings, opts.contextLength ?? DEFAULT_CONTEXT);
    const ckpt = await files.openCheckpoint();
    let ctx: GpuContext | null = null;
    let weights: ModelWeights | null = null;
    let kv: PagedKvCache | null = null;
    let forward: ForwardModel | null = null;
    try {
      validateCheckpoint(spec, ckpt, source);
      ctx = await acquireGpu({
        ...(opts.device ? { device: opts.device } : {}),
        ...(opts.gpu ? { gpu: opts.gpu } : {}),
        keepAlive: opts.keepAlive,
      });
      const adapterName = ctx.adapter.description || ctx.adapter.device;
      if (choices.activations === 'f16' && !ctx.adapter.shaderF16) {
        throw new InvalidRequestError(
          `activations 'f16' needs the shader-f16 feature, which this adapter (${adapterName}) lacks; use 'f32'`,
        );
      }
      if (choices.kvCache === 'f16' && !ctx.adapter.shaderF16) {
        throw new InvalidRequestError(
          `kvCache 'f16' needs the shader-f16 feature, which this adapter (${adapterName}) lacks; use 'auto' or 'f32'`,
        );
      }
      const kvDtype: KvDtype =
        choices.kvCache === 'auto' ? (ctx.adapter.shaderF16 ? 'f16' : 'f32') : choices.kvCache;
      if (isQuantKv(kvDtype) && spec.headDim % 4 !== 0) {
        throw new InvalidRequestError(
          `kvCache '${kvDtype}' needs head_dim to be a multiple of 4, this model's is ${spec.headDim}; use 'auto', 'f16' or 'f32'`,
        );
      }
      // The plan needs the KV element type and the limits, known only with the adapter; nothing
      // is allocated yet. A probe under an error scope then checks the device can hold it all.
      const cap = (limit: number, c: number | undefined) => Math.min(limit, c ?? Infinity);
      const planInput = {
        spec,
        ckpt,
        source,
        kvDtype,
        requestedContext,
        prefillChunkTokens: opts.prefillChunkTokens ?? DEFAULT_PREFILL_CHUNK,
        ...(opts.kvCacheTokens !== undefined ? { kvTokens: opts.kvCacheTokens } : {}),
        limits: {
          maxBufferSize: cap(ctx.limits.maxBufferSize, opts.limits?.maxBufferSize),
          maxStorageBufferBindingSize: cap(
            ctx.limits.maxStorageBufferBindingSize,
            opts.limits?.maxStorageBufferBindingSize,
          ),
        },
      };
      let plan = planMemory({
        ...planInput,
        ...(opts.memoryLimitBytes !== undefined ? { budgetBytes: opts.memoryLimitBytes } : {}),
      });
      for (let tries = 0; !(await ctx.probeAllocation(plan.total)); tries++) {
        // The device refused the whole plan at once: plan again for three quarters of it.
        if (tries === 3) {
          throw new DeviceMemoryError(
            `this device could not allocate ${formatBytes(plan.total)} (weights ${formatBytes(plan.weights)}) even after shrinking the KV cache`,
          );
        }
        const budgetBytes = Math.floor(plan.total * 0.75);
        plan = planMemory({ ...planInput, budgetBytes });
        plan.note = `${plan.note ?? ''}${plan.note ? '; ' : ''}an allocation probe failed, so the plan was cut to ${formatBytes(budgetBytes)}`;
      }
      const contextLength = plan.contextLength;
      const prefillChunk = Math.min(opts.prefillChunkTokens ?? DEFAULT_PREFILL_CHUNK, contextLength);
      weights = await loadWeights(ctx, spec, ckpt, source, opts.onProgress);
      kv = await PagedKvCache.create(ctx, spec, plan.kvBlocks, kvDtype);
      const calibration = choices.attentionSoftmax === 'async' ? CALIBRATION_STEPS : 0;
      forward = new ForwardModel(
        ctx,
        spec,
        weights,
        kv,
        prefillChunk,
        calibration,
        choices.activations,
        contextLength,
      );
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
        ctx,
        weights,
        kv,
        forward,
        prefillChunk,
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
        files,
        source,
        kvDtype,
        kvBlocks: plan.kvBlocks,
        calibration,
        activations: choices.activations,
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
      forward?.destroy();
      kv?.destroy();
      if (ctx && weights) destroyWeights(ctx, weights);
      ctx?.close();
      throw e;
    } finally {
      await ckpt.close();
    }
  }

  private makeScheduler(): Scheduler {
    const ctx = this.ctx;
    const blocks = new BlockManager({ numBlocks: this.kv.numBlocks, blockSize: BLOCK_TOKENS });
    return new Scheduler(this.forward, this.kv, blocks, {
      ...this.schedulerOptions,
      explainFailure: (e) => this.explainFailure(ctx, e),
    });
  }

  /** A failed step on a device that was lost, and that the engine recovers from, is retriable. */
  private async explainFailure(ctx: GpuContext, e: unknown): Promise<unknown> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const lost = await Promise.race([
      ctx.device.lost,
      new Promise<null>((r) => (timer = setTimeout(() => r(null), LOST_SETTLE_MS))),
    ]);
    clearTimeout(timer);
    if (!lost || this.disposed || !this.rebuild?.acquire) return e;
    return GpuDeviceError.lostRetriable(lost.reason + (lost.message ? `: ${lost.message}` : ''), {
      cause: e,
    });
  }

  /** Starts a recovery when `ctx`'s device is lost while the engine runs on it. */
  private watchDevice(ctx: GpuContext): void {
    void ctx.device.lost.then(() => {
      if (this.disposed || ctx !== this.ctx || !this.rebuild?.acquire) return;
      this.recovery = this.recover().then(
        () => {
          this.recovery = null;
        },
        (e: unknown) => {
          this.recovery = null;
          this.broken = new GpuDeviceError(
            `the GPU device was lost and could not be recovered: ${(e as Error)?.message ?? String(e)}`,
            { cause: e },
          );
        },
      );
    });
  }

  /**
   * Rebuilds everything that lived on the lost device on a new one: weights read again from the
   * model files, the KV cache, the forward plans with the kernel choices in use (tuned ones
   * included), the scheduler and its samplers, then the warm-up. Requests wait for it (`ready`).
   */
  private async recover(): Promise<void> {
    const rb = this.rebuild;
    if (!rb?.acquire) throw new GpuDeviceError('this engine cannot get a new device');
    const choices = this.forward.choices;
    // What lived on the old device is gone with it; freeing it releases the JS side.
    this.forward.destroy();
    this.kv.destroy();
    destroyWeights(this.ctx, this.weights);
    this.ctx.close();
    const ckpt = await rb.files.openCheckpoint();
    let ctx: GpuContext | null = null;
    let weights: ModelWeights | null = null;
    let kv: PagedKvCache | null = null;
    try {
      ctx = await rb.acquire();
      weights = await loadWeights(ctx, this.spec, ckpt, rb.source);
      kv = await PagedKvCache.create(ctx, this.spec, rb.kvBlocks, rb.kvDtype);
      const forward = new ForwardModel(
        ctx,
        this.spec,
        weights,
        kv,
        this.prefillChunk,
        rb.calibration,
        rb.activations,
        this.contextLength,
      );
      forward.setChoices(choices);
      if (this.disposed) {
        forward.destroy();
        throw new KilnError('the engine was disposed while recovering');
      }
      this.ctx = ctx;
      this.weights = weights;
      this.kv = kv;
      this.forward = forward;
    } catch (e) {
      kv?.destroy();
      if (ctx && weights) destroyWeights(ctx, weights);
      ctx?.close();
      throw e;
    } finally {
      await ckpt.close();
    }
    this.scheduler = this.makeScheduler();
    this.watchDevice(this.ctx);
    await this.warmUp();
  }

  /** Whether the engine is rebuilding its GPU state after a device loss. */
  get recovering(): boolean {
    return this.recovery !== null;
  }

  /** The scheduler, once any recovery is over; fails if the engine cannot run any more. */
  private async ready(): Promise<Scheduler> {
    while (this.recovery) await this.recovery;
    if (this.broken) throw this.broken;
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
   * the KV contents are whatever the cache holds, which does not change the work done.
   */
  async profileDecode(context: number): Promise<{ label: string; ms: number; count: number }[]> {
    if (!Number.isInteger(context) || context < 1 || context > this.contextLength) {
      throw new InvalidRequestError(`context ${context} is outside 1..${this.contextLength}`);
    }
    return (await this.ready()).exclusive(async (hold) => {
      const timer = new GpuTimer(this.ctx);
      try {
        return await profileStep(this.forward, hold.input([0], context - 1), timer);
      } finally {
        timer.destroy();
      }
    });
  }

  /**
   * Tunes the model's kernels to this adapter (see src/tuner): cached classes from `store` cost
   * nothing, others are tuned until `budgetMs` is spent, one class at a time while holding the
   * GPU state (requests interleave between classes). The engine then runs the chosen kernels.
   */
  async tune(opts: TuneOptions = {}): Promise<TuneResult> {
    return this.runTuning(opts, false);
  }

  /**
   * Tuning in slices (a compile batch, an output check, a timing round) that hold the GPU state:
   * in the foreground they take turns with steps; in the background they run only while no request
   * runs, one pipeline compiled per slice, and the budget counts only the time spent in them.
   */
  private async runTuning(opts: TuneOptions, background: boolean): Promise<TuneResult> {
    if (this.disposed) throw new KilnError('the engine has been disposed');
    const guard = async <T>(work: () => Promise<T>): Promise<T> => {
      if (this.disposed) throw new KilnError('the engine has been disposed');
      return work();
    };
    let waited = 0;
    const hold: Slice = background
      ? (work) => {
          const asked = performance.now();
          return this.scheduler.whenIdleExclusive(async () => {
            const start = performance.now();
            waited += start - asked;
            try {
              return await guard(work);
            } finally {
              this.background.noteSlice(performance.now() - start);
            }
          });
        }
      : (work) => this.scheduler.exclusive(() => guard(work));
    const result = await tuneModel(this.forward.tuneTarget(), {
      ...opts,
      hold,
      defaults: this.kernelDefaults.choices,
      ...(background ? { clock: () => performance.now() - waited, compileBatch: 1 } : {}),
    });
    await this.scheduler.exclusive(() => guard(async () => this.forward.setChoices(result.choices)));
    return result;
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
    return this.kv.dtype;
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
    this.validatePrompt(ids);
    validateSampling(samplingOf(opts));
    const minP = opts.minP;
    if (minP !== undefined && !(minP >= 0 && minP <= 1)) {
      throw new InvalidRequestError(`minP is ${minP}; expected a number in [0, 1]`);
    }
    const m = opts.maxTokens;
    if (m !== undefined && (!Number.isInteger(m) || m < 0)) {
      throw new InvalidRequestError(`maxTokens is ${m}; expected an integer >= 0`);
    }
    if (opts.stop !== undefined) {
      if (!Array.isArray(opts.stop) || opts.stop.some((s) => typeof s !== 'string' || s.length === 0)) {
        throw new InvalidRequestError('stop must be a list of non-empty strings');
      }
    }
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
   * The GPU state is held until the iteration ends or is abandoned.
   */
  async *logitChunks(
    ids: readonly number[],
  ): AsyncGenerator<{ start: number; rows: number; logits: Float32Array }> {
    this.validatePrompt(ids);
    const hold = await (await this.ready()).hold();
    // The logits of one step live in one storage binding: with a 150k vocabulary, 256 rows of f32
    // logits would exceed the default 128 MiB, so steps here take as many rows as fit.
    const fit = Math.floor(this.ctx.limits.maxStorageBufferBindingSize / (this.spec.vocabSize * 4));
    const step = Math.max(1, Math.min(this.prefillChunk, fit));
    try {
      for (let start = 0; start < ids.length; start += step) {
        const chunk = ids.slice(start, Math.min(ids.length, start + step));
        const input = hold.input(
          chunk,
          start,
          chunk.map((_, i) => i),
        );
        yield { start, rows: chunk.length, logits: await runStep(this.forward, input, 'logits') };
      }
    } finally {
      hold.release();
    }
  }

  /**
   * The input activations of every layer's projections while the model reads `ids` (teacher
   * forced, in prefill chunks): [layer][role] = [ids.length, cols] f32. Calibration data for the
   * quantizers (src/quant).
   */
  async captureLinearInputs(ids: readonly number[]): Promise<Record<ProjectionRole, Float32Array>[]> {
    this.validatePrompt(ids);
    const chunks = await (
      await this.ready()
    ).exclusive(async (hold) => {
      const out: Record<ProjectionRole, Float32Array>[][] = [];
      for (let start = 0; start < ids.length; start += this.prefillChunk) {
        const chunk = ids.slice(start, Math.min(ids.length, start + this.prefillChunk));
        out.push(await captureLinearInputs(this.forward, hold.input(chunk, start)));
      }
      return out;
    });
    return Array.from({ length: this.spec.numLayers }, (_, l) => {
      const join = (proj: ProjectionRole) => {
        const parts = chunks.map((c) => (c[l] as Record<ProjectionRole, Float32Array>)[proj]);
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
    this.background.stop();
    this.forward.destroy();
    this.kv.destroy();
    destroyWeights(this.ctx, this.weights);
    this.ctx.close();
  }
}

/** Loads a model and returns a ready engine. */
export function createEngine(opts: EngineOptions): Promise<Engine> {
  return Engine.create(opts);
}
